"""torchrun: two CPU processes (gloo) train one run and write one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.artifacts import runs
from training_support import tiny_config


def test_two_process_gloo_run_writes_one_run_folder(tmp_path):
    pytest.importorskip("torch.distributed.run")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    cfg_file = tmp_path / "tiny.json"
    tiny_config(steps=3, checkpoint_every=2).save(cfg_file)
    run = tmp_path / "runs" / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ddpm_studio", "train", "--out", str(run), "--config", str(cfg_file), "--batch-size", "4",
           "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Finished: the run is at step 3") == 1  # only rank 0 reports
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "run.json"]
    assert [ck.step_of(p) for p in ck.list_checkpoints(run)] == [2, 3]
    assert [r["step"] for r in runs.read_metrics(run)] == [1, 2, 3]  # one line per step, not per rank
    info = json.loads((run / "run.json").read_text())
    assert info["sessions"][0]["world_size"] == 2
    assert ck.load_checkpoint(ck.latest_checkpoint(run)).step == 3
