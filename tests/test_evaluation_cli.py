"""``ddpm-studio eval | nearest | timelapse | doctor`` (issue 17): output, JSON, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from evaluation_support import blobs, trained_run, write_pngs
from PIL import Image
from training_support import one_thread  # noqa: F401 - fixture

from ddpm_studio.cli import main


@pytest.mark.usefixtures("one_thread")
def test_eval_prints_a_table_with_the_floor_and_keeps_the_result(capsys):
    run = trained_run()
    assert main(["eval", "--run", str(run), "--num", "32"]) == 0
    out = capsys.readouterr().out
    assert "KID (conv features)" in out and "floor (real vs real)" in out
    assert "comparable only at the same N" in out and "step 200" in out
    from ddpm_studio.evaluation.metrics import read_results

    assert any(d["step"] == 200 and d["num_samples"] == 32 for d in read_results(run))


@pytest.mark.usefixtures("one_thread")
def test_eval_json_of_one_checkpoint_and_all_checkpoints(capsys, tmp_path):
    run = trained_run()
    ck = run / "checkpoints" / "step_0000020.safetensors"
    assert main(["eval", "--run", str(run), "--checkpoint", str(ck), "--num", "16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["step"] == 20 and d["num_samples"] == 16 and d["kid_lo"] <= d["kid"] <= d["kid_hi"]
    # a copy of the run with three checkpoints: KID per step
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("step_00000[13-9]*", "step_0000[1-2][1-9]*", "*.lock"))
    steps = sorted(int(p.name[5:12]) for p in (copy / "checkpoints").glob("*.safetensors"))
    assert main(["eval", "--run", str(copy), "--all-checkpoints", "--num", "16"]) == 0
    out = capsys.readouterr().out
    assert "floor (real vs real)" in out
    for s in steps:
        assert f"{s:>8,}  " in out


@pytest.mark.usefixtures("one_thread")
def test_nearest_finds_a_copied_training_image_among_samples(capsys, tmp_path):
    run = trained_run()
    images = run.parent / "images"
    samples = tmp_path / "samples"
    write_pngs(blobs(10, seed=3)[:, ::2, ::2], samples, prefix="sample")  # 8 px, unlike the squares
    shutil.copy(images / "img_0042.png", samples / "sample_copy.png")
    assert main(["nearest", "--run", str(run), "--samples", str(samples)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 of 11 samples is a near-copy") or "of 11 samples are near-copies" in out
    assert "sample_copy.png: 0.00x typical" in out
    assert main(["nearest", "--run", str(run), "--samples", str(samples), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    copy = next(s for s in d["samples"] if s["sample"].endswith("sample_copy.png"))
    assert copy["near_copy"] and copy["pixel_distances"][0] == 0.0


def test_timelapse_writes_the_gif_and_sheet(capsys, tmp_path):
    run = trained_run()
    assert main(["timelapse", "--run", str(run), "--out", str(tmp_path / "t.gif"),
                 "--sheet", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "4 frames, steps 50 to 200" in out
    with Image.open(tmp_path / "t.gif") as g:
        assert g.n_frames == 4


def test_doctor_lists_duplicates_and_the_fix(capsys, tmp_path):
    files = write_pngs(blobs(30, seed=4), tmp_path / "d")
    shutil.copy(files[0], tmp_path / "d" / "z_dup.png")
    assert main(["doctor", "--data", str(tmp_path / "d"), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "[warning] 1 exact duplicate file(s) in 1 group(s)" in out
    assert "fix: train with --exclude-duplicates" in out and "small set" in out
    assert main(["doctor", "--data", str(tmp_path / "d"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["num_files"] == 31 and any(f["kind"] == "exact_duplicates" for f in d["findings"])


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "--run", "/nonexistent/run"], "is not a run folder"),
    (["nearest", "--run", "RUN", "--samples", "/nonexistent/s"], "--samples: folder not found"),
    (["timelapse", "--run", "RUN"], "give --out FILE.gif, --sheet FILE.png or both"),
    (["timelapse", "--run", "RUN", "--out", "x.png"], "--out must name a .gif file"),
    (["doctor", "--data", "/nonexistent/d"], "does not exist"),
])
def test_refused_input_is_one_line_and_status_1(argv, fragment, capsys):
    argv = [str(trained_run()) if a == "RUN" else a for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.usefixtures("one_thread")
def test_scoring_checkpoints_while_training_is_a_listener_the_trainer_calls(tmp_path):
    import dataclasses

    from training_support import tiny_config

    from ddpm_studio.evaluation.during_training import (
        ScoreCheckpoints,
        estimate_seconds,
    )
    from ddpm_studio.evaluation.metrics import read_results
    from ddpm_studio.training.trainer import Trainer

    cfg = tiny_config(steps=40, checkpoint_every=10, keep_checkpoints=10)
    cfg.data = dataclasses.replace(cfg.data, folder=str(trained_run().parent / "images"))
    seen = []
    scorer = ScoreCheckpoints(tmp_path / "r", every=20, num=16, then=seen.append, report=seen.append)
    assert Trainer(cfg, tmp_path / "r").run(on_event=scorer).reason == "completed"
    assert [r.step for r in scorer.readouts] == [20, 40]
    assert [d["step"] for d in read_results(tmp_path / "r")] == [20, 40]
    assert any(isinstance(s, str) and s.startswith("quality: step 40") for s in seen)
    assert {"TrainStarted", "StepMetrics", "CheckpointSaved"} <= {type(s).__name__ for s in seen}  # all passed on
    assert 0 < estimate_seconds(cfg, 16) < 60
    with pytest.raises(ValueError, match="at least 1 step"):
        ScoreCheckpoints(tmp_path, every=0)


@pytest.mark.usefixtures("one_thread")
def test_train_eval_every_prints_the_cost_first_and_scores(tmp_path, capsys):
    images = trained_run().parent / "images"
    argv = ["train", "--out", str(tmp_path / "r"), "--data", str(images), "--image-size", "8", "--steps", "20",
            "--checkpoint-every", "10", "--batch-size", "4", "--timesteps", "20", "--device", "cpu", "--quiet",
            "--eval-every", "20", "--eval-num", "16"]
    # the tiny preset at 8 px with T=20 trains in a few seconds
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "quality every 20 steps: 16 samples, about" in err
    assert "quality: step 20: KID" in err
    from ddpm_studio.evaluation.metrics import read_results

    assert [d["step"] for d in read_results(tmp_path / "r")] == [20]


def _folder_with_duplicates(tmp_path):
    """20 distinct 16 px images, an exact copy of one and a near copy of another (a re-save, one level brighter)."""
    files = write_pngs(blobs(20, seed=8), tmp_path / "d")
    shutil.copy(files[2], tmp_path / "d" / "img_0002 copy.png")
    a = np.asarray(Image.open(files[7]))
    Image.fromarray(np.clip(a.astype(int) + 1, 0, 255).astype(np.uint8)).save(tmp_path / "d" / "img_0007 edit.png")
    return tmp_path / "d"


def _train(tmp_path, folder, run, *extra):
    from training_support import tiny_config

    cfg_file = tmp_path / "tiny.json"
    tiny_config().save(cfg_file)
    return main(["train", "--data", str(folder), "--out", str(run), "--config", str(cfg_file), "--steps", "2",
                 "--quiet", *extra])


@pytest.mark.usefixtures("one_thread")
def test_train_exclude_duplicates_leaves_them_out_reports_them_and_resume_keeps_the_count(tmp_path, capsys):
    folder = _folder_with_duplicates(tmp_path)
    run = tmp_path / "run"
    assert _train(tmp_path, folder, run, "--exclude-duplicates") == 0
    err = capsys.readouterr().err
    assert "skipped 2 file(s): 2 duplicate of another image" in err
    assert f"{folder / 'img_0002 copy.png'}: duplicate of img_0002.png" in err
    assert f"{folder / 'img_0007 edit.png'}: duplicate of img_0007.png" in err
    assert "20 images" in err
    info = json.loads((run / "run.json").read_text())["dataset"]
    assert info["num_images"] == 20
    assert sorted(s["reason"] for s in info["skipped"]) == ["duplicate of img_0002.png", "duplicate of img_0007.png"]
    assert json.loads((run / "config.json").read_text())["data"]["exclude_duplicates"] is True
    # resume reads the run's config: the same files are left out
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Resuming" in err and "20 images" in err and "skipped 2 file(s)" in err
    assert json.loads((run / "run.json").read_text())["dataset"]["num_images"] == 20


@pytest.mark.usefixtures("one_thread")
def test_train_without_the_flag_keeps_the_duplicates(tmp_path, capsys):
    folder = _folder_with_duplicates(tmp_path)
    assert _train(tmp_path, folder, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "22 images" in err and "duplicate of" not in err and "skipped" not in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]["num_images"] == 22
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["exclude_duplicates"] is False


def test_doctor_names_the_flag_that_leaves_the_same_files_out(tmp_path, capsys):
    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images
    from ddpm_studio.evaluation.doctor import diagnose

    folder = _folder_with_duplicates(tmp_path)
    assert main(["doctor", "--data", str(folder), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count("fix: train with --exclude-duplicates") == 2  # the exact and the near finding
    assert "near duplicate" in out and "exact duplicate" in out
    # the flag leaves out exactly the files the doctor's fix names
    rep = diagnose(str(folder), image_size=16)
    kept = load_images(DataConfig(folder=str(folder), image_size=16, exclude_duplicates=True), workers=1)
    assert kept.paths == rep.kept_files()
    assert {s.path for s in kept.skipped} == set(rep.exclude())
    # reopening the unchanged folder takes the grouping from the cache: no file is read for it again
    from ddpm_studio.data import duplicates

    calls = []
    real = duplicates.fingerprint_file
    duplicates.fingerprint_file = lambda p: calls.append(p) or real(p)
    try:
        again = load_images(DataConfig(folder=str(folder), image_size=16, exclude_duplicates=True), workers=1)
    finally:
        duplicates.fingerprint_file = real
    assert again.paths == kept.paths and calls == []


def test_eval_flags_come_from_the_schema_and_old_configs_load_without_them(tmp_path, capsys):
    from ddpm_studio.cli import _train_config, build_parser
    from ddpm_studio.config import RunConfig

    args = build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--eval-every", "50",
                                      "--eval-num", "64", "--exclude-duplicates"])
    cfg = _train_config(args)
    assert (cfg.train.eval_every, cfg.train.eval_num, cfg.data.exclude_duplicates) == (50, 64, True)
    d = RunConfig().to_dict()
    for section, name in (("train", "eval_every"), ("train", "eval_num"), ("data", "exclude_duplicates")):
        del d[section][name]  # a config written before these fields existed
    old = RunConfig.from_dict(d)
    assert (old.train.eval_every, old.train.eval_num, old.data.exclude_duplicates) == (0, 0, False)
    with pytest.raises(ValueError, match="train.eval_num must be 0"):
        RunConfig.from_dict({**RunConfig().to_dict(), "train": {"eval_num": 1}}).validate()
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "r"), "--eval-every", "-1"])
    assert e.value.code == 2 and "--eval-every" in capsys.readouterr().err
