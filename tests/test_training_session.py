"""The Training panel's decisions without Qt: what Start runs, which run stays open, the history."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ddpm_studio.artifacts import runs
from ddpm_studio.config import RunConfig
from ddpm_studio.training.events import FinishReason, TrainFinished
from ddpm_studio.training.session import (SessionEnd, TrainingSession, finish_job, load_history, read_run,
                                          read_run_config)


def _images(size=16):
    return SimpleNamespace(image_size=size)


def test_start_needs_images_of_the_configured_size(tmp_path):
    s = TrainingSession()
    cfg = RunConfig.from_preset("tiny")
    with pytest.raises(ValueError, match="no images to train on"):
        s.plan_start(cfg, None, None, tmp_path)
    with pytest.raises(ValueError, match="the dataset is 32 px but data.image_size is 16"):
        s.plan_start(cfg, _images(32), None, tmp_path)
    assert s.run_dir is None  # nothing planned


def test_a_new_run_gets_a_fresh_folder_and_keeps_the_images(tmp_path):
    s = TrainingSession()
    images = _images()
    plan = s.plan_start(RunConfig.from_preset("tiny"), images, None, tmp_path)
    assert not plan.resume and plan.fresh and plan.images is images
    assert plan.run_dir.startswith(str(tmp_path)) and plan.run_dir.endswith("-tiny") and s.run_dir == plan.run_dir


def test_continuing_a_run_passes_the_images_only_when_they_are_the_runs(tmp_path):
    s = TrainingSession()
    cfg = RunConfig.from_preset("tiny", data={"folder": "/pics"})
    s.opened(str(tmp_path / "run"), cfg)
    assert s.continuing
    same = s.plan_start(cfg, _images(), "/pics", tmp_path)
    assert same.resume and not same.fresh and same.images is not None and same.run_dir == str(tmp_path / "run")
    other = s.plan_start(cfg, _images(), "/elsewhere", tmp_path)
    assert other.resume and other.images is None  # the trainer loads the run's own folder
    assert s.plan_start(cfg, None, None, tmp_path).resume  # no images loaded: still continues


def test_a_finished_run_stays_open_only_when_its_config_reads_back(tmp_path):
    s = TrainingSession()
    plan = s.plan_start(RunConfig.from_preset("tiny"), _images(), None, tmp_path)
    result = TrainFinished(3, FinishReason.STOPPED, "Stopped.", None)
    s.finished(finish_job(result, plan.run_dir))  # nothing was written there
    assert not s.continuing
    runs.write_config(plan.run_dir, RunConfig.from_preset("tiny"))
    end = finish_job(result, plan.run_dir)
    assert isinstance(end, SessionEnd) and end.run_config is not None
    s.finished(end)
    assert s.resume_dir == plan.run_dir and s.resume_config.model.preset == "tiny"
    s.forget()
    assert not s.continuing and s.resume_config is None


def test_history_is_parsed_from_metrics_and_sets_the_progress_total(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 10, "loss": 0.5, "loss_smooth": 0.6}, {"step": 20, "loss": 0.4, "bucket_loss": [0.1, None]},
             {"note": "not a metrics line"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    h = load_history(run)
    assert h.steps == [10, 20] and h.losses == [0.5, 0.4] and h.smoothed == [0.6, 0.4]
    assert h.buckets == [0.1, None] and h.last_step == 20
    s = TrainingSession()
    assert s.history_total(h) == 20
    s.opened(str(run), RunConfig.from_preset("tiny", train={"steps": 100}))
    assert s.history_total(h) == 100
    s.opened(str(run), RunConfig.from_preset("tiny", train={"steps": None, "minutes": 5.0}))
    assert s.history_total(h) == 20  # no step limit: the last step is the total
    assert load_history(tmp_path / "empty").steps == []


def test_opening_a_folder_without_a_config_is_refused_in_plain_words(tmp_path):
    with pytest.raises(ValueError, match="is not a run folder"):
        read_run_config(tmp_path)


def test_open_run_reads_the_config_and_the_newest_preview(tmp_path):
    import numpy as np
    from PIL import Image

    cfg = RunConfig.from_preset("tiny", train=dict(steps=321))
    cfg.save(tmp_path / "config.json")
    assert read_run(tmp_path).preview is None and read_run(tmp_path).config.train.steps == 321  # no samples/
    (tmp_path / "samples").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "samples" / "step_0000010.png")
    Image.fromarray(np.full((4, 6), 255, np.uint8)).save(tmp_path / "samples" / "step_0000020.png")  # grayscale
    run = read_run(tmp_path)
    assert run.preview_name == "step_0000020" and run.preview.shape == (4, 6, 3) and run.preview.min() == 255
    (tmp_path / "samples" / "step_0000030.png").write_bytes(b"not a png")  # damaged: the run still opens
    run = read_run(tmp_path)
    assert run.preview is None and run.config.train.steps == 321
