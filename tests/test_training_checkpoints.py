"""Checkpoints: atomic, verified, and never a way to run code."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.training.trainer import Trainer
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(step: int) -> dict:
    return {"format_version": ck.FORMAT_VERSION, "step": step, "optimizer": {"state": {}, "param_groups": []},
            "rng": {"torch": torch.get_rng_state()}, "counters": {"images_seen": 4 * step}}


def _weights(seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the shapes tiny_config's network has (loading compares them with the config)."""
    from ddpm_studio.footprint import expected_shapes

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(tiny_config().model).items()}


@pytest.fixture
def run_with_two(tmp_path):
    cfg = tiny_config()
    for step in (10, 20):
        ck.save_checkpoint(tmp_path, step, cfg, _weights(step), _weights(step + 1), _state(step))
    return tmp_path, cfg


def test_roundtrip_keeps_weights_config_and_state(run_with_two):
    run, cfg = run_with_two
    got = ck.load_checkpoint(ck.checkpoint_paths(run, 20)[0])
    assert got.step == 20
    assert got.config.to_dict() == cfg.to_dict()
    for k, v in _weights(20).items():
        assert torch.equal(got.model_state[k], v)
    for k, v in _weights(21).items():
        assert torch.equal(got.ema_state[k], v)
    assert got.train_state["counters"]["images_seen"] == 80
    assert got.train_state["rng"]["torch"].dtype == torch.uint8  # a ByteTensor survives weights_only
    assert ck.latest_checkpoint(run).name == "step_0000020.safetensors"
    assert not list((run / "checkpoints").glob("*.tmp")), "temporary files must be renamed away"


def test_truncated_checkpoint_is_refused_and_the_previous_one_still_loads(run_with_two):
    run, _ = run_with_two
    weights, state = ck.checkpoint_paths(run, 20)
    good_w, good_s = weights.read_bytes(), state.read_bytes()
    rng = random.Random(1234)
    offsets = sorted({0, 1, 7, 8, 9, 100, len(good_w) - 1, *(rng.randrange(len(good_w)) for _ in range(6))})
    for cut in offsets:
        weights.write_bytes(good_w[:cut])
        with pytest.raises(ck.CheckpointError) as err:
            ck.load_checkpoint(weights)
        assert "step_0000020" in str(err.value)
        loaded, notes = ck.load_latest(run)
        assert loaded.step == 10, f"cut at {cut}"
        assert any("step_0000020" in n for n in notes) and any("previous good checkpoint" in n for n in notes)
    weights.write_bytes(good_w)
    for cut in (0, 5, len(good_s) // 2, len(good_s) - 1):
        state.write_bytes(good_s[:cut])
        with pytest.raises(ck.CheckpointError, match="state"):
            ck.load_checkpoint(weights)
        assert ck.load_latest(run)[0].step == 10
        # weights alone (sampling) do not need the state file
        assert ck.load_checkpoint(weights, with_state=False).step == 20


def test_flipped_byte_in_tensor_data_is_detected(run_with_two):
    run, _ = run_with_two
    weights = ck.checkpoint_paths(run, 20)[0]
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="damaged"):
        ck.load_checkpoint(weights)


class _Payload:
    """Unpickling this would create ``marker`` (pickle calls open(marker, "w"))."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    cfg = tiny_config()
    # A checkpoint whose state file (with a matching checksum) is a code-running pickle.
    path = ck.save_checkpoint(tmp_path / "run", 5, cfg, _weights(5), _weights(6), {"evil": _Payload(marker)})
    assert not marker.exists()
    with pytest.raises(ck.CheckpointError, match="refused"):
        ck.load_checkpoint(path)
    assert not marker.exists(), "weights_only loading must refuse the pickle before running it"

    # The same payload passed off as weights (.safetensors) or as a .pt checkpoint.
    fake = tmp_path / "step_0000001.safetensors"
    fake.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ck.CheckpointError, match="not a safetensors file|truncated"):
        ck.load_checkpoint(fake)
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ck.CheckpointError, match=r"\.safetensors"):
        ck.load_checkpoint(pt)
    from ddpm_studio.artifacts.loading import load_model

    with pytest.raises(ck.CheckpointError):
        load_model(pt, device="cpu")
    assert not marker.exists()


def test_other_format_version_and_foreign_safetensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    cfg = tiny_config()
    meta = {"format": ck.FORMAT, "format_version": "2", "step": "3", "config": cfg.to_json(), "state_sha256": ""}
    p = tmp_path / "step_0000003.safetensors"
    p.write_bytes(ck.serialize_weights(_weights(1), _weights(2), meta))
    with pytest.raises(ck.CheckpointError, match="format version 2; this program reads version 1"):
        ck.load_checkpoint(p)
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ck.CheckpointError, match="not a DDPM Studio checkpoint"):
        ck.load_checkpoint(foreign)


def test_incompatible_model_is_refused_saying_what_differs(tmp_path):
    images = tiny_images()
    assert Trainer(tiny_config(steps=2), tmp_path, images=images).run().reason == "completed"
    other = tiny_config(steps=4)
    other.model.base_channels = 16
    other.diffusion.timesteps = 30
    with pytest.raises(ck.CheckpointError) as err:
        Trainer(other, tmp_path, images=images, resume=True).run()
    msg = str(err.value)
    assert "model.base_channels: checkpoint 8, this run 16" in msg
    assert "diffusion.timesteps: checkpoint 20, this run 30" in msg


def test_prune_keeps_the_newest(tmp_path):
    cfg = tiny_config()
    for step in (1, 2, 3, 4, 5):
        ck.save_checkpoint(tmp_path, step, cfg, _weights(step), _weights(step), _state(step))
    removed = ck.prune_checkpoints(tmp_path, 2)
    assert [ck.step_of(p) for p in removed] == [1, 2, 3]
    assert [ck.step_of(p) for p in ck.list_checkpoints(tmp_path)] == [4, 5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000004.safetensors", "step_0000004.state.pt", "step_0000005.safetensors", "step_0000005.state.pt"]
