"""What a newcomer hit on the command line (issue 14): --version, sample --upscale, train --minutes
(a bar with the time left, stopping on time, the save named once), --data FILE, --image-size 7."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from PIL import Image

import ddpm_studio
from ddpm_studio import cli
from ddpm_studio.cli import main
from ddpm_studio.durations import format_duration, format_time_left
from training_support import one_thread, tiny_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_version_flag_from_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "ddpm_studio", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ddpm-studio {ddpm_studio.__version__}"
    assert "--version" in subprocess.run([sys.executable, "-m", "ddpm_studio", "--help"], capture_output=True,
                                         text=True, timeout=120).stdout


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (35.4, "35 s"), (59.6, "1 min 00 s"), (995, "16 min 35 s"), (3599, "59 min 59 s"),
    (3600, "1 h 00 min"), (3900, "1 h 05 min"), (3929, "1 h 05 min"), (3931, "1 h 06 min"), (36000, "10 h 00 min"),
    (None, "–"), (float("nan"), "–"), (-1, "–"), (float("inf"), "–"),
])
def test_durations_read_as_durations_not_times_of_day(seconds, text):
    assert format_duration(seconds) == text
    assert ":" not in format_duration(seconds)


def test_time_left():
    assert format_time_left(995) == "16 min 35 s left"
    assert format_time_left(3900) == "1 h 05 min left"
    assert format_time_left(None) == ""


def _train_once(tmp_path, name="run", **train):
    cfg_file = tmp_path / f"{name}.json"
    tiny_config(steps=1, **train).save(cfg_file)
    run = tmp_path / name
    return cfg_file, run


def test_sample_grid_and_pngs_can_be_upscaled(tmp_path, capsys):
    cfg_file, run = _train_once(tmp_path)
    assert main(["train", "--out", str(run), "--config", str(cfg_file), "--steps", "2", "--quiet"]) == 0
    out, grid = tmp_path / "samples", tmp_path / "grid.png"
    assert main(["sample", "--run", str(run), "--num", "4", "--out", str(out), "--grid", str(grid),
                 "--sampling-steps", "3", "--upscale", "3", "--device", "cpu", "--quiet"]) == 0
    with Image.open(grid) as im:
        assert im.size == ((2 + 2 * 10) * 3, (2 + 2 * 10) * 3)  # 4 images of 8 px, 2 per row, pad 2, x3
    with Image.open(out / "sample_0000.png") as im:
        assert im.size == (24, 24)
        px = im.load()
        assert px[0, 0] == px[2, 2]  # one model pixel became a 3 x 3 block
    printed = capsys.readouterr().out
    assert "24x24 px" in printed and "66x66 px" in printed


def test_minutes_stops_on_time_and_names_the_last_save_once(tmp_path, capsys, monkeypatch):
    cfg_file, run = _train_once(tmp_path, checkpoint_every=0)
    started = []
    real_call = cli._TrainReporter.__call__

    def spy(self, event):
        from ddpm_studio.training.events import TrainStarted

        if isinstance(event, TrainStarted):
            started.append(time.perf_counter())
        real_call(self, event)

    monkeypatch.setattr(cli._TrainReporter, "__call__", spy)
    limit = 0.05 * 60
    assert main(["train", "--out", str(run), "--config", str(cfg_file), "--minutes", "0.05",
                 "--checkpoint-every", "5"]) == 0
    took = time.perf_counter() - started[0]
    assert limit <= took < limit + 1.5  # the clock is checked every step; no closing preview
    captured = capsys.readouterr()
    last = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1]
    assert captured.out.count(last.name) == 1 and "Time limit reached" in captured.out
    assert last.name not in captured.err  # the earlier saves are listed, the last one only in the message
    assert "saved" in captured.err and "for 0.05 min" in captured.err


def test_the_bar_of_a_run_the_clock_ends_runs_over_the_time_and_says_what_is_left(capsys):
    from ddpm_studio.training.events import StepMetrics, TrainStarted

    r = cli._TrainReporter(quiet=False, minutes=2.0)
    r.tty = True
    r(TrainStarted(run_dir="runs/x", start_step=0, total_steps=None, device="cpu", num_parameters=10,
                   num_images=4, resumed=False))
    assert r.bar is not None and r.bar.total == 120
    r(StepMetrics(step=40, total_steps=None, loss=0.2, loss_smooth=0.25, grad_norm=1.0, lr=1e-3,
                  images_per_sec=100.0, elapsed_sec=30.0, eta_sec=90.0))
    assert r.bar.n == pytest.approx(30.0)
    assert "step 40 ·" in r.bar.desc and "1 min 30 s left" in r.bar.desc and "10,000,000" not in r.bar.desc
    r.close()
    # a run with a step total: a step bar
    r = cli._TrainReporter(quiet=False)
    r.tty = True
    r(TrainStarted(run_dir="runs/x", start_step=10, total_steps=50, device="cpu", num_parameters=10,
                   num_images=4, resumed=True))
    r(StepMetrics(step=20, total_steps=50, loss=0.2, loss_smooth=0.25, grad_norm=1.0, lr=1e-3,
                  images_per_sec=100.0, elapsed_sec=3.0, eta_sec=995.0))
    assert (r.bar.n, r.bar.total) == (20, 50) and "step 20/50" in r.bar.desc and "16 min 35 s left" in r.bar.desc
    r.close()


def test_data_may_be_one_image_file_but_not_another_kind_of_file(tmp_path, capsys):
    from ddpm_studio.gui import testing

    folder = testing.write_image_folder(tmp_path / "pics", count=2, size=8)
    cfg_file, run = _train_once(tmp_path)
    one = folder / "img_000.png"
    assert main(["train", "--data", str(one), "--out", str(run), "--config", str(cfg_file), "--steps", "1",
                 "--quiet"]) == 0
    assert "1 images" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("hello", encoding="utf-8")
    assert main(["train", "--data", str(notes), "--out", str(tmp_path / "r2"), "--config", str(cfg_file)]) == 1
    err = capsys.readouterr().err
    assert "is a file, not an image" in err and "folder not found" not in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["7", "0", "300", "x"])
def test_an_image_size_no_model_accepts_is_bad_usage(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--out", "x", "--image-size", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--image-size" in err and "Traceback" not in err
