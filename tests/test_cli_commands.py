"""The command line: train, resume, sample (PNGs, grid, GIF), info, and one-line errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from PIL import Image

from ddpm_studio.cli import main
from training_support import one_thread, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_resume_sample_info(tmp_path, capsys):
    cfg_file = tmp_path / "tiny.json"
    tiny_config(steps=1, log_every=2).save(cfg_file)
    run = tmp_path / "run"
    # built-in dataset (no --data), 8 px from the config file, flags override it
    assert main(["train", "--out", str(run), "--config", str(cfg_file), "--steps", "4", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert "Finished: the run is at step 4" in out.out
    assert (run / "checkpoints" / "step_0000004.safetensors").exists()
    assert main(["train", "--out", str(run), "--resume"]) == 0  # already at its total
    assert "already at step 4" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 0
    assert "at step 6" in capsys.readouterr().out

    samples, grid, gif = tmp_path / "samples", tmp_path / "grid.png", tmp_path / "chain.gif"
    code = main(["sample", "--run", str(run), "--num", "5", "--out", str(samples), "--grid", str(grid),
                 "--gif", str(gif), "--sampler", "ddpm", "--gif-frames", "6", "--device", "cpu", "--quiet"])
    assert code == 0
    pngs = sorted(samples.glob("*.png"))
    assert [p.name for p in pngs] == [f"sample_{i:04d}.png" for i in range(5)]
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (8, 8) and im.mode == "RGB"
    with Image.open(grid) as im:
        assert im.size == (2 + 3 * 10, 2 + 2 * 10)  # 5 images: 3 per row, 2 rows
    # DDPM walks T=20 steps; every ceil(20/6)=4th step (0, 4, 8, 12, 16) plus the last one
    stride = math.ceil(20 / 6)
    expected_frames = len(range(0, 20, stride)) + 1
    with Image.open(gif) as im:
        assert im.n_frames == expected_frames == 6
        assert im.size == (32 * 8, 22 * 8)  # the grid enlarged x8 to reach >= 256 px wide
    assert f"{expected_frames} frames" in capsys.readouterr().out

    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert "step 6 of 6" in info and "parameters" in info and "built-in" in info
    assert main(["info", str(run / "checkpoints" / "step_0000006.safetensors"), "--json"]) == 0
    assert '"base_channels": 8' in capsys.readouterr().out


def test_a_run_trained_by_the_clock_has_no_step_total(tmp_path, capsys):
    cfg_file = tmp_path / "tiny.json"
    tiny_config(steps=1, log_every=1).save(cfg_file)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--config", str(cfg_file), "--minutes", "0.01", "--quiet"]) == 0
    assert "Time limit reached" in capsys.readouterr().out
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert "no step limit (trained by the clock)" in info
    assert "10,000,000" not in info


@pytest.mark.parametrize("argv, fragment", [
    (["train"], "--out"),
    (["train", "--out", "x", "--steps", "-3"], "--steps"),
    (["train", "--out", "x", "--steps", "5", "--minutes", "1"], "not allowed with"),
    (["train", "--out", "x", "--preset", "huge"], "--preset"),
    (["sample", "--out", "x"], "--run"),
    (["sample", "--run", "a", "--checkpoint", "b", "--out", "x"], "not allowed with"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_is_one_line_and_status_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_refused_input_is_one_line_and_status_1(tmp_path, capsys):
    cases = [
        (["train", "--out", str(tmp_path / "r1"), "--data", str(tmp_path / "nope")], "folder not found"),
        (["train", "--out", str(tmp_path / "r2"), "--image-size", "10"], "image_size"),
        (["train", "--out", str(tmp_path / "r3"), "--resume"], "not a run folder"),
        (["sample", "--checkpoint", str(tmp_path / "x.safetensors"), "--out", str(tmp_path / "o")], "does not exist"),
        (["sample", "--run", str(tmp_path), "--out", str(tmp_path / "o")], "neither a DDPM Studio run folder"),
        (["info", str(tmp_path / "missing")], "does not exist"),
    ]
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    cases.append((["info", str(tmp_path / "bad.safetensors")], "bad.safetensors"))
    for argv, fragment in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err, (argv, err)
        assert "Traceback" not in err


def test_usage_error_exit_status_from_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "ddpm_studio", "train", "--steps", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_no_command_opens_the_window(monkeypatch):
    import ddpm_studio.gui.app as app

    calls = []
    monkeypatch.setattr(app, "main", lambda argv=None: calls.append(argv) or 0)
    assert main([]) == 0
    assert calls == [[]]


def _gray_folder(tmp_path, count: int, seed: int):
    """A folder of ``count`` random 12 px grayscale PNGs."""
    import numpy as np

    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(folder / f"p{i}.png")
    return folder


def test_train_on_an_image_folder(tmp_path, capsys):
    import json

    folder = _gray_folder(tmp_path, 6, seed=0)
    cfg_file = tmp_path / "tiny.json"
    tiny_config().save(cfg_file)
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), "--out", str(run), "--config", str(cfg_file), "--steps", "2",
                 "--channels", "auto"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["dataset"]["num_images"] == 6 and info["dataset"]["folder"] == str(folder.resolve())
    assert len(info["dataset"]["fingerprint"]) >= 16
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["folder"] == str(folder.resolve()) and cfg["model"]["in_channels"] == 1  # grayscale found
    assert "6 images" in capsys.readouterr().err


def test_sample_sampler_and_spacing_flags_are_used_and_recorded(tmp_path, capsys):
    import json

    from ddpm_studio.config import SamplingConfig

    cfg_file, run = tmp_path / "tiny.json", tmp_path / "run"
    cfg = tiny_config(steps=2)
    cfg.diffusion.timesteps = 60  # ddim's own default (50) fits, dpmpp's 20 too
    cfg.save(cfg_file)
    assert main(["train", "--out", str(run), "--config", str(cfg_file), "--quiet"]) == 0
    capsys.readouterr()

    def sample(name, *flags):
        out = tmp_path / name
        assert main(["sample", "--run", str(run), "--num", "2", "--out", str(out), "--device", "cpu", *flags]) == 0
        record = json.loads((out / "sampling.json").read_text())
        return record, capsys.readouterr()

    record, io = sample("default")  # a new run's defaults: DPM-Solver++ 2M, 20 steps, its own spacing (log-SNR)
    assert (record["sampling"]["sampler"], record["sampling"]["steps"], record["sampling"]["spacing"]) == \
        ("dpmpp-2m", 20, "auto")
    assert "dpmpp-2m, 20 steps, logsnr spacing (auto)" in io.err and record["model_step"] == 2
    record, _ = sample("ddim", "--sampler", "ddim")  # the sampler's own default step count
    assert (record["sampling"]["sampler"], record["sampling"]["steps"]) == ("ddim", 50)
    record, _ = sample("dpm3", "--sampler", "dpmpp-3m", "--spacing", "linspace", "--sampling-steps", "5")
    assert record["sampling"] == {**record["sampling"], "sampler": "dpmpp-3m", "spacing": "linspace", "steps": 5}
    assert SamplingConfig(**record["sampling"]).validate() is None
    record, _ = sample("sde", "--sampler", "dpmpp-2m-sde", "--sampling-steps", "4", "--seed", "3")
    assert (record["sampling"]["sampler"], record["sampling"]["steps"], record["sampling"]["seed"]) == \
        ("dpmpp-2m-sde", 4, 3)
    record, io = sample("unipc", "--sampler", "unipc")  # UniPC's own default step count
    assert (record["sampling"]["sampler"], record["sampling"]["steps"]) == ("unipc", 10)
    assert "unipc, 10 steps, logsnr spacing (auto)" in io.err
    a = Image.open(tmp_path / "default" / "sample_0000.png").tobytes()
    b = Image.open(tmp_path / "ddim" / "sample_0000.png").tobytes()
    assert a != b  # different samplers, different images from the same noise

    assert main(["info", str(run)]) == 0
    assert "sampling:    dpmpp-2m, 20 steps, logsnr spacing (auto)" in capsys.readouterr().out

    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "x"), "--sampler", "ddim",
                 "--sampling-steps", "61", "--device", "cpu"]) == 1
    assert "cannot exceed the model's T (60)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sample", "--run", str(run), "--out", str(tmp_path / "x"), "--spacing", "even"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'even'" in err and len(err.strip().splitlines()) == 1


def test_train_reports_skipped_files_by_count_reason_and_name(tmp_path, capsys):
    import json

    folder = _gray_folder(tmp_path, 4, seed=1)
    for i in range(7):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    cfg_file, run = tmp_path / "tiny.json", tmp_path / "run"
    tiny_config().save(cfg_file)
    assert main(["train", "--data", str(folder), "--out", str(run), "--config", str(cfg_file), "--steps", "1",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "skipped 8 file(s)" in err and "1 empty file" in err
    named = [line for line in err.splitlines() if line.startswith("  ") and (".png: " in line or ".jpg: " in line)]
    assert len(named) == 5  # the first few by name, not all eight
    assert "and 3 more (all of them in" in err and "run.json" in err
    skipped = json.loads((run / "run.json").read_text())["dataset"]["skipped"]
    assert len(skipped) == 8 and {"path", "reason"} <= set(skipped[0])
    assert any(s["path"].endswith("empty.jpg") and "empty" in s["reason"] for s in skipped)


def test_train_help_lists_a_flag_for_every_model_diffusion_data_and_train_field(capsys):
    from ddpm_studio.config import DataConfig, DiffusionConfig, ModelConfig, TrainConfig, settings_of

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    missing = [s.key for cls in (ModelConfig, DiffusionConfig, DataConfig, TrainConfig) for s in settings_of(cls)
               if s.flag is None or s.flag not in text]
    # set another way: data decides the network's size and channels (--image-size, --channels), --preset
    # names the shape
    assert missing == ["model.preset", "model.image_size", "model.in_channels"]
    assert "--flip, --no-flip" in text and "--ema-warmup, --no-ema-warmup" in text


def test_the_default_preset_follows_the_image_size_and_a_named_one_is_kept(tmp_path):
    from ddpm_studio.cli import _train_config, build_parser

    def config(*flags):
        return _train_config(build_parser().parse_args(["train", "--out", str(tmp_path / "r"), *flags]))

    assert (config().model.preset, config().model.patch_size) == ("tiny", 1)
    assert (config("--image-size", "24").model.preset, config("--image-size", "24").model.patch_size) == ("tiny", 1)
    big = config("--image-size", "32")
    assert (big.model.preset, big.model.patch_size, big.data.image_size) == ("tiny-32", 2, 32)
    assert config("--image-size", "64").model.preset == "tiny-32"
    named = config("--preset", "tiny", "--image-size", "32")
    assert (named.model.preset, named.model.patch_size) == ("tiny", 1)
    assert config("--preset", "small", "--image-size", "32").model.preset == "small"


def test_schema_flags_reach_the_config(tmp_path):
    from ddpm_studio.cli import _train_config, build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--flip", "--prediction", "x0",
                                      "--loss-weighting", "min_snr", "--min-snr-gamma", "3", "--warmup-steps", "7",
                                      "--grad-clip", "0.5", "--weight-decay", "0.01", "--base-channels", "16",
                                      "--channel-mult", "1,2", "--attention-resolutions", "none",
                                      "--no-ema-warmup", "--minutes", "2"])
    cfg = _train_config(args)
    assert cfg.data.flip is True and cfg.diffusion.prediction == "x0" and cfg.diffusion.min_snr_gamma == 3.0
    assert (cfg.train.warmup_steps, cfg.train.grad_clip, cfg.train.weight_decay) == (7, 0.5, 0.01)
    assert cfg.model.base_channels == 16 and cfg.model.channel_mult == (1, 2) and cfg.model.attention_resolutions == ()
    assert cfg.model.preset == "custom" and cfg.train.ema_warmup is False
    assert cfg.train.steps is None and cfg.train.minutes == 2.0  # the clock ends the run


def test_explicit_betas_come_from_a_list_or_a_file(tmp_path, capsys):
    import json

    from ddpm_studio.cli import _train_config, build_parser

    betas = [1e-4 + 0.02 * i / 9 for i in range(10)]
    (tmp_path / "b.json").write_text(json.dumps(betas))
    (tmp_path / "b.txt").write_text("\n".join(map(str, betas)) + "\n")
    for value in ("@" + str(tmp_path / "b.json"), "@" + str(tmp_path / "b.txt"), ",".join(map(str, betas))):
        args = build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--timesteps", "10",
                                          "--betas", value])
        assert _train_config(args).diffusion.betas == pytest.approx(tuple(betas))
    (tmp_path / "bad.json").write_text('["a"]')
    for bad, words in (("@" + str(tmp_path / "none.json"), "cannot read"), ("@" + str(tmp_path / "bad.json"),
                                                                                "not a JSON list of numbers")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--out", str(tmp_path / "r"), "--betas", bad])
        assert words in capsys.readouterr().err


def test_old_no_step_limit_configs_load_as_none():
    from ddpm_studio.config import NO_STEP_LIMIT, RunConfig

    d = RunConfig().to_dict()
    d["train"]["steps"] = NO_STEP_LIMIT
    assert RunConfig.from_dict(d).train.steps is None
    assert RunConfig.from_json(RunConfig.from_dict(d).to_json()).train.steps is None
