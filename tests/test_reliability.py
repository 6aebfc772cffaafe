"""What a careful user does to files (issue 15): each failure found then, kept fixed.

Hostile checkpoints (links to /dev/zero, named pipes, flipped header bytes), two writers in one
run folder, networks too large for the machine, a full disk, a diverging run with few kept
checkpoints, broken configs, hostile image folders and unwritable sample outputs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ddpm_studio import footprint
from ddpm_studio.cli import main
from ddpm_studio.config import ModelConfig, RunConfig
from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.artifacts import runs
from ddpm_studio.training.trainer import Trainer
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
POSIX = os.name == "posix"


def _weights(cfg: RunConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in footprint.expected_shapes(cfg.model).items()}


def _state(step: int) -> dict:
    return {"format_version": ck.FORMAT_VERSION, "step": step, "optimizer": {"state": {}, "param_groups": []},
            "rng": {"torch": torch.get_rng_state()}, "counters": {}}


@pytest.fixture
def two_checkpoints(tmp_path):
    """A run folder with the checkpoints of steps 10 and 20 (tiny_config's network, random weights)."""
    cfg = tiny_config()
    for step in (10, 20):
        ck.save_checkpoint(tmp_path, step, cfg, _weights(cfg, step), _weights(cfg, step + 1), _state(step))
    return tmp_path, cfg


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` with a deadline: a read that hangs (a FIFO, /dev/zero) fails the test instead of it."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still reading after {timeout} s"
    return box, time.perf_counter() - t0


# -- 1. unbounded reads ---------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_state_file_linked_to_dev_zero_is_refused_quickly_and_resume_falls_back(two_checkpoints):
    run, _ = two_checkpoints
    weights, state = ck.checkpoint_paths(run, 20)
    state.unlink()
    state.symlink_to("/dev/zero")
    box, took = _in_thread(lambda: ck.load_checkpoint(weights))
    assert isinstance(box.get("error"), ck.CheckpointError) and took < 2.0
    assert "step_0000020.state.pt is not a regular file (a device)" in str(box["error"])
    loaded, notes = _in_thread(lambda: ck.load_latest(run))[0]["value"]
    assert loaded.step == 10
    assert any("not a regular file (a device)" in n for n in notes)
    # sampling needs no state file: the weights of step 20 still serve
    assert ck.load_checkpoint(weights, with_state=False).step == 20


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_weights_linked_to_dev_zero_are_refused_and_the_previous_checkpoint_used(two_checkpoints):
    run, _ = two_checkpoints
    weights = ck.checkpoint_paths(run, 20)[0]
    weights.unlink()
    weights.symlink_to("/dev/zero")
    box, took = _in_thread(lambda: ck.load_latest(run))
    loaded, notes = box["value"]
    assert loaded.step == 10 and took < 2.0
    assert any("step_0000020.safetensors is not a regular file (a device)" in n for n in notes), notes
    assert ck.latest_checkpoint(run).name == "step_0000010.safetensors"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_as_state_file_is_refused_without_opening_it(two_checkpoints):
    run, _ = two_checkpoints
    state = ck.checkpoint_paths(run, 20)[1]
    state.unlink()
    os.mkfifo(state)  # opening it for reading would block until someone writes
    box, took = _in_thread(lambda: ck.load_latest(run))
    loaded, notes = box["value"]
    assert loaded.step == 10 and took < 2.0
    assert any("a named pipe" in n for n in notes)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_resume_with_a_dev_zero_state_file_resumes_from_the_previous_checkpoint(tmp_path):
    images = tiny_images()
    assert Trainer(tiny_config(steps=4, checkpoint_every=2), tmp_path, images=images).run().step == 4
    state = ck.checkpoint_paths(tmp_path, 4)[1]
    state.unlink()
    state.symlink_to("/dev/zero")
    events = []
    box, _ = _in_thread(lambda: Trainer(tiny_config(steps=6, checkpoint_every=2), tmp_path, images=images,
                                           resume=True).run(on_event=events.append), timeout=60)
    assert box["value"].reason == "completed" and box["value"].step == 6
    started = events[0]
    assert started.start_step == 2
    assert any("not a regular file (a device)" in n for n in started.notes)


# -- 2. header corruption -------------------------------------------------------------------------


def _flip(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1, (old, data.count(old))
    path.write_bytes(data.replace(old, new))


def test_flipped_step_in_the_header_is_refused_and_fallen_back_past(two_checkpoints):
    run, _ = two_checkpoints
    weights = ck.checkpoint_paths(run, 20)[0]
    _flip(weights, b'"step":"20"', b'"step":"30"')
    with pytest.raises(ck.CheckpointError, match="step_0000020.safetensors is damaged: its header"):
        ck.read_metadata(weights)
    assert ck.latest_checkpoint(run).name == "step_0000010.safetensors"
    loaded, notes = ck.load_latest(run)
    assert loaded.step == 10 and any("damaged" in n for n in notes)


def test_flipped_config_digit_in_the_header_is_refused(two_checkpoints):
    run, cfg = two_checkpoints
    assert cfg.train.ema_decay == 0.995
    weights = ck.checkpoint_paths(run, 20)[0]
    _flip(weights, b'ema_decay\\": 0.995', b'ema_decay\\": 0.985')  # the config is JSON inside the JSON header
    with pytest.raises(ck.CheckpointError, match="damaged"):
        ck.load_checkpoint(weights)
    assert ck.load_latest(run)[0].step == 10


def test_step_must_match_the_file_name_and_the_state_file(tmp_path):
    cfg = tiny_config()
    path = ck.save_checkpoint(tmp_path, 20, cfg, _weights(cfg, 1), _weights(cfg, 2), _state(20))
    renamed = path.with_name("step_0000025.safetensors")
    path.rename(renamed)
    ck.state_path_for(path).rename(ck.state_path_for(renamed))
    with pytest.raises(ck.CheckpointError, match="its header says step 20, its name says step 25"):
        ck.read_metadata(renamed)
    # a state file of another step under a matching checksum
    other = ck.save_checkpoint(tmp_path / "b", 20, cfg, _weights(cfg, 1), _weights(cfg, 2), _state(19))
    with pytest.raises(ck.CheckpointError, match="from step 19, its weights from step 20"):
        ck.load_checkpoint(other)


def _write_v1_checkpoint(run: Path, step: int, cfg: RunConfig) -> Path:
    """A checkpoint as written before meta_sha256 existed (six metadata entries)."""
    import hashlib
    import io
    import struct

    from safetensors.torch import save

    buf = io.BytesIO()
    torch.save(_state(step), buf)
    tensors = {**{f"model.{k}": v for k, v in _weights(cfg, 1).items()},
               **{f"ema.{k}": v for k, v in _weights(cfg, 2).items()}}
    meta = {"format": ck.FORMAT, "format_version": "1", "step": str(step), "config": cfg.to_json(),
            "state_sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "data_sha256": "0" * 64}
    data = save(tensors, metadata=meta)
    (n,) = struct.unpack("<Q", data[:8])
    meta["data_sha256"] = hashlib.sha256(data[8 + n:]).hexdigest()
    weights, state = ck.checkpoint_paths(run, step)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state.write_bytes(buf.getvalue())
    weights.write_bytes(save(tensors, metadata=meta))
    return weights


def test_checkpoints_from_before_the_metadata_checksum_still_load(tmp_path):
    cfg = tiny_config()
    old = _write_v1_checkpoint(tmp_path, 20, cfg)
    assert "meta_sha256" not in ck.read_header(old)[1]
    got = ck.load_checkpoint(old)
    assert got.step == 20 and got.config.to_dict() == cfg.to_dict()
    # the old checks still apply: the step against the name
    _flip(old, b'"step":"20"', b'"step":"30"')
    with pytest.raises(ck.CheckpointError, match="says step 30, its name says step 20"):
        ck.load_checkpoint(old)


def test_a_flipped_checksum_key_is_not_taken_for_an_old_checkpoint(two_checkpoints):
    run, _ = two_checkpoints
    weights = ck.checkpoint_paths(run, 20)[0]
    _flip(weights, b'"meta_sha256"', b'"meta_sha257"')
    with pytest.raises(ck.CheckpointError, match="damaged.*unexpected entries"):
        ck.read_metadata(weights)


# -- 3. one writer per run folder -----------------------------------------------------------------


def test_second_trainer_in_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    images = tiny_images()
    assert Trainer(tiny_config(steps=2), tmp_path, images=images).run().reason == "completed"
    assert not (tmp_path / runs.LOCK_FILE).exists(), "the lock file goes with the lock"
    holder = runs.RunLock(tmp_path).acquire()
    try:
        with pytest.raises(runs.RunLockedError) as err:
            Trainer(tiny_config(steps=4), tmp_path, images=images, resume=True).run()
        msg = str(err.value)
        assert f"process {os.getpid()} on " in msg and "started 20" in msg and "is in use" in msg
        with pytest.raises(runs.RunLockedError):  # a second lock from the same process is refused too
            runs.RunLock(tmp_path).acquire()
    finally:
        holder.release()
    assert Trainer(tiny_config(steps=4), tmp_path, images=images, resume=True).run().step == 4
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_refused_fresh_start_leaves_no_folder_behind(tmp_path):
    cfg = tiny_config()
    with pytest.raises(ValueError):
        Trainer(cfg, tmp_path / "fresh", images=tiny_images(size=16)).run()  # 16 px images, 8 px config
    assert not (tmp_path / "fresh").exists()


_HOLD = """
import sys, time
from ddpm_studio.artifacts.runs import RunLock, RunLockedError
try:
    lock = RunLock(sys.argv[1]).acquire()
except RunLockedError as e:
    print("refused:", e, flush=True)
    sys.exit(3)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder_process(run: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH",
                                                                                                      "")]))
    return subprocess.Popen([sys.executable, "-c", _HOLD, str(run), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.skipif(not POSIX, reason="kill -9 is POSIX")
def test_lock_held_by_another_process_is_refused_and_freed_by_kill_9(tmp_path):
    run = tmp_path / "run"
    proc = _holder_process(run, 60)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunLockedError, match=f"process {proc.pid} on "):
            runs.RunLock(run).acquire()
        with pytest.raises(runs.RunLockedError):
            Trainer(tiny_config(steps=2), run, images=tiny_images()).run()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # killed with -9: no cleanup ran, the lock file is still there, yet the folder is free
    assert (run / runs.LOCK_FILE).exists()
    assert Trainer(tiny_config(steps=2), run, images=tiny_images()).run().reason == "completed"


@pytest.mark.skipif(not POSIX, reason="uses flock")
def test_two_fresh_starts_at_the_same_moment_one_wins(tmp_path):
    run = tmp_path / "run"
    procs = [_holder_process(run, 3) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    assert sum("refused:" in o and "is in use" in o for o in outs) == 1


# -- 4. network size against memory ---------------------------------------------------------------

CONFIGS = [
    RunConfig.from_preset("tiny").model,
    RunConfig.from_preset("small").model,
    RunConfig.from_preset("ddpm-cifar10").model,
    ModelConfig(image_size=16, in_channels=1, base_channels=16, channel_mult=(1, 3, 2), num_res_blocks=2,
                attention_resolutions=(16, 4), dropout=0.1, num_heads=2),
    ModelConfig(image_size=32, base_channels=24, channel_mult=(2, 1, 4, 2), num_res_blocks=3,
                attention_resolutions=(8,)),
    ModelConfig(image_size=32, in_channels=3, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                attention_resolutions=(8,), patch_size=2),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.base_channels}x{list(c.channel_mult)}p{c.patch_size}")
def test_closed_form_shapes_and_parameters_equal_the_built_network(cfg):
    from ddpm_studio.engine.unet import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(cfg)
    assert footprint.expected_shapes(cfg) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert footprint.parameter_count(cfg) == count_parameters(model)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[5]], ids=["tiny", "dropout-attention", "patch-2"])
def test_activation_estimate_matches_what_autograd_saves(cfg):
    """Oracle: the bytes of every tensor autograd saves for backward, per image (batch 4 minus batch 2)."""
    from ddpm_studio.engine.unet import build_model

    model = build_model(cfg).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(batch: int) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
            return t

        x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, torch.arange(batch))
        return sum(n for ptr, n in seen.items() if ptr not in params)

    per_image = (saved_bytes(4) - saved_bytes(2)) / 2
    estimate = footprint.activation_values(cfg) * footprint.BYTES_PER_VALUE
    assert 0.9 < estimate / per_image < 1.2, (estimate, per_image)


def test_huge_channel_mult_is_refused_in_under_a_second_naming_the_size(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        RunConfig.from_dict({"model": {"channel_mult": [1, 2048]}}).validate()
    assert time.perf_counter() - t0 < 1.0
    assert "506,915,370,979 parameters" in str(err.value) and "GB of weights" in str(err.value)
    cfg_file = tmp_path / "huge.json"
    d = RunConfig.from_preset("tiny").to_dict()
    d["model"]["channel_mult"] = [1, 2048]
    cfg_file.write_text(json.dumps(d))
    t0 = time.perf_counter()
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r")]) == 1
    assert time.perf_counter() - t0 < 1.0


def test_network_too_large_for_this_machine_is_refused_before_building(tmp_path, monkeypatch):
    monkeypatch.setattr(footprint, "system_memory_bytes", lambda: 2**30)  # a 1 GB machine
    cfg = RunConfig.from_preset("ddpm-cifar10", train={"device": "cpu", "batch_size": 128})
    built = []
    from ddpm_studio.engine import unet

    monkeypatch.setattr(unet, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError) as err:
        Trainer(cfg, tmp_path / "r", images=tiny_images(size=32)).run()
    msg = str(err.value)
    assert "35,746,307 parameters" in msg and "this machine's 1.0 GB of memory" in msg and "batch 128" in msg
    assert not built and not (tmp_path / "r").exists()
    # the same network samples (one copy of the weights) on that machine
    footprint.check_fits(cfg.model, memory=2**30, where="x")


def test_checkpoint_whose_weights_do_not_match_its_config_is_refused_before_reading(tmp_path, monkeypatch):
    cfg = tiny_config()
    bigger = tiny_config()
    bigger.model.base_channels = 16
    path = ck.save_checkpoint(tmp_path, 5, cfg, _weights(bigger, 1), _weights(bigger, 2), _state(5))
    reads = []
    real = ck._read_exactly
    monkeypatch.setattr(ck, "_read_exactly", lambda f, n, name, what: reads.append(what) or real(f, n, name, what))
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(path)
    assert "do not match the network its config describes" in str(err.value)
    assert "conv_in.weight (16, 3, 3, 3) where the config needs (8, 3, 3, 3)" in str(err.value)
    assert reads == ["the header"], "nothing past the header may be read"


# -- 5. info verifies -----------------------------------------------------------------------------


def test_info_names_the_damaged_checkpoint_and_the_one_used(two_checkpoints, capsys):
    run, cfg = two_checkpoints
    cfg.save(run / "config.json")
    weights = ck.checkpoint_paths(run, 20)[0]
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # tensor bytes: the header still looks whole
    weights.write_bytes(bytes(data))
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "damaged:     step_0000020.safetensors is damaged: its tensor data" in out
    assert "checkpoint:  step_0000010.safetensors (step 10" in out and "sample and --resume use it" in out
    weights.write_bytes(bytes(data[:-100]))  # now truncated
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step_0000020.safetensors is truncated" in out and "step_0000010.safetensors (step 10" in out
    assert main(["info", str(weights)]) == 1
    assert "truncated" in capsys.readouterr().err


def test_info_says_when_only_sampling_can_use_the_newest(two_checkpoints, capsys):
    run, cfg = two_checkpoints
    cfg.save(run / "config.json")
    state = ck.checkpoint_paths(run, 20)[1]
    state.write_bytes(state.read_bytes()[:-10])
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step_0000020.state.pt is truncated" in out and "sample can use step_0000020.safetensors" in out
    assert "step_0000010.safetensors (step 10" in out and "--resume uses it" in out


# -- 6. config types ------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"data": {"folder": 5}}, "data.folder must be text in quotes or null; got 5"),
    ({"train": {"ema_warmup": "no"}}, 'train.ema_warmup must be true or false (without quotes); got "no"'),
    ({"sampling": {"clip_denoised": "no"}}, 'sampling.clip_denoised must be true or false (without quotes); got "no"'),
    ({"version": "1"}, 'version must be the number 1 (without quotes); got "1"'),
    ({"model": {"image_size": 32}, "data": {"image_size": 16}},
     "model.image_size (32) differs from data.image_size (16)"),
    ({"model": {"channel_mult": [1, "2"]}}, 'model.channel_mult must be a list of whole numbers; got [1, "2"]'),
    ({"train": {"lr": "0.001"}}, 'train.lr must be a number; got "0.001"'),
]


@pytest.mark.parametrize("change,message", BAD_CONFIGS, ids=[m.split(" ")[0] for _, m in BAD_CONFIGS])
def test_config_of_the_wrong_type_is_one_line_naming_the_field(tmp_path, capsys, change, message):
    d = RunConfig.from_preset("tiny").to_dict()
    for section, values in change.items():
        if isinstance(values, dict):
            d[section].update(values)
        else:
            d[section] = values
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps(d))
    with pytest.raises(ValueError) as err:
        RunConfig.load(cfg_file)
    assert message in str(err.value)
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "r")]) == 1  # README: 1 = refused input
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and message in err_text and "Traceback" not in err_text
    assert not (tmp_path / "r").exists()


def test_equal_model_and_data_image_sizes_and_valid_configs_still_load():
    for name in ("tiny", "small", "ddpm-cifar10"):
        cfg = RunConfig.from_preset(name)
        assert RunConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    d = RunConfig.from_preset("tiny").to_dict()
    del d["model"]["image_size"]
    d["data"]["image_size"] = 32
    assert RunConfig.from_dict(d).sync().model.image_size == 32  # left out: taken from data


# -- 7. NaN stop keeps the last healthy checkpoint ------------------------------------------------


def test_diverging_run_keeps_the_last_healthy_checkpoint_whatever_the_rotation(tmp_path, monkeypatch):
    from ddpm_studio.engine.diffusion import GaussianDiffusion

    real = GaussianDiffusion.training_losses
    calls = []

    def diverging(self, model, x0, **kw):
        loss, t = real(self, model, x0, **kw)
        calls.append(1)
        k = len(calls)  # the step being trained (1-based)
        if k > 20:
            return loss * float("nan"), t
        if k > 10:
            return loss * 1000.0 ** ((k - 10) / 5), t  # blowing up, still finite
        return loss, t

    monkeypatch.setattr(GaussianDiffusion, "training_losses", diverging)
    cfg = tiny_config(steps=40, checkpoint_every=2, keep_checkpoints=2)
    done = Trainer(cfg, tmp_path, images=tiny_images()).run()
    assert done.reason == "nan"
    kept = [ck.step_of(p) for p in ck.list_checkpoints(tmp_path)]
    healthy = [ck.step_of(p) for p in ck.list_checkpoints(tmp_path) if ck.is_healthy(ck.read_metadata(p)[2])]
    assert kept[-2:] == [18, 20] and healthy[-1] <= 12, (kept, healthy)
    assert healthy[-1] in kept, "the newest healthy checkpoint must survive the rotation"
    name = f"step_{healthy[-1]:07d}.safetensors"
    assert f"saved while the loss was healthy, {name}, is kept" in done.message
    assert done.checkpoint.endswith(name)


# -- 8. disk full ---------------------------------------------------------------------------------


def _usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10**12, 10**12 - free, free)


def test_full_disk_prunes_first_when_that_makes_room(tmp_path, monkeypatch):
    cfg = tiny_config(steps=8, checkpoint_every=2, keep_checkpoints=2)
    Trainer(cfg, tmp_path / "probe", images=tiny_images()).run()  # how big one checkpoint of this run is
    probe = ck.list_checkpoints(tmp_path / "probe")[-1]
    one = probe.stat().st_size + ck.state_path_for(probe).stat().st_size
    capacity = 2 * one + ck.DISK_MARGIN_BYTES + one // 2  # room for two checkpoints and the margin, not three
    folder = tmp_path / "run" / "checkpoints"

    def disk_usage(path):
        used = sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0
        return _usage(max(0, capacity - used))

    monkeypatch.setattr(ck.shutil, "disk_usage", disk_usage)
    done = Trainer(cfg, tmp_path / "run", images=tiny_images()).run()
    assert done.reason == "completed", done.message
    assert [ck.step_of(p) for p in ck.list_checkpoints(tmp_path / "run")] == [6, 8]


def test_full_disk_message_names_the_file_and_the_checkpoint_kept(tmp_path, monkeypatch):
    cfg = tiny_config(steps=6, checkpoint_every=2, keep_checkpoints=3)
    run = tmp_path / "run"
    state = {"n": 0}
    real = ck.atomic_write_bytes

    def failing_write(path, data):
        state["n"] += 1
        if path.name == "step_0000004.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", failing_write)
    done = Trainer(cfg, run, images=tiny_images()).run()
    assert done.reason == "error"
    assert f"could not write {run / 'checkpoints' / 'step_0000004.safetensors'} (the disk is full)" in done.message
    assert "the last good checkpoint, step_0000002.safetensors, is kept" in done.message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002.safetensors",
                                                                      "step_0000002.state.pt"]
    # no room at all, found before writing
    monkeypatch.setattr(ck, "atomic_write_bytes", real)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: _usage(1000))
    done = Trainer(tiny_config(steps=4, checkpoint_every=2), run, images=tiny_images(), resume=True).run()
    assert done.reason == "error" and "not enough free disk space to write" in done.message
    assert "step_0000004.safetensors" in done.message and "step_0000002.safetensors, is kept" in done.message
    assert ck.load_latest(run)[0].step == 2


# -- 9. hostile image folders ---------------------------------------------------------------------


@pytest.mark.skipif(not (hasattr(os, "mkfifo") and os.path.exists("/dev/zero")), reason="needs FIFOs and /dev/zero")
def test_image_folder_reports_devices_and_pipes_without_opening_them(tmp_path):
    from PIL import Image

    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images, load_paths
    from ddpm_studio.data.decode import decode_file
    from ddpm_studio.data.imageset import settings_from_config

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 12), (40 * i, 90, 200)).save(folder / f"ok{i}.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe-no-extension")
    (folder / "gone.png").symlink_to(folder / "missing.png")
    box, took = _in_thread(lambda: load_images(DataConfig(folder=str(folder), image_size=8), use_cache=False))
    s = box["value"]
    assert len(s) == 3 and took < 10
    reasons = {Path(k.path).name: k.reason for k in s.skipped}
    assert reasons["zero.png"] == "not a regular file (a device)"
    assert reasons["pipe.png"] == "not a regular file (a named pipe; not opened)"
    assert reasons["pipe-no-extension"] == "not a regular file (a named pipe; not opened)"
    assert reasons["gone.png"] == "broken link (its target does not exist)"
    # a pipe named directly (dropped on the window) is refused too, and decode_file never opens one
    box, _ = _in_thread(lambda: load_paths([str(folder / "pipe.png"), str(folder / "ok0.png")],
                                           DataConfig(image_size=8), use_cache=False))
    assert len(box["value"]) == 1 and "named pipe" in box["value"].skipped[0].reason
    settings = settings_from_config(DataConfig(image_size=8))
    box, _ = _in_thread(lambda: decode_file(str(folder / "pipe.png"), settings))
    assert box["value"].reason == "not a regular file (a named pipe; not opened)"
    assert decode_file(str(folder / "zero.png"), settings).reason == "not a regular file (a device)"


# -- 10. unwritable sample outputs ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    torch.set_num_threads(1)
    Trainer(tiny_config(steps=2), run, images=tiny_images()).run()
    return run


def _sample(run: Path, out: Path, *extra: str) -> int:
    return main(["sample", "--run", str(run), "--num", "2", "--out", str(out), "--device", "cpu", "--quiet",
                 "--sampling-steps", "2", *extra])


def test_unwritable_grid_or_gif_is_refused_before_any_image_is_made(trained_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = tmp_path / "out"
    cases = [("--grid", str(a_file / "grid.png"), "is a file, not a folder"),
             ("--gif", str(a_file / "sub" / "chain.gif"), "is a file, not a folder"),
             ("--grid", str(tmp_path), "must name a .png file")]
    if os.path.isdir("/proc"):
        cases.append(("--gif", "/proc/chain.gif", "cannot write /proc/chain.gif"))
    if POSIX and os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append(("--grid", str(ro / "grid.png"), "cannot write"))
    for flag, value, words in cases:
        assert _sample(trained_run, out, flag, value) == 1, (flag, value)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
        assert not out.exists() or not list(out.iterdir()), "no PNG may be written before the check"
    assert _sample(trained_run, a_file / "pngs") == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert _sample(trained_run, out, "--grid", str(tmp_path / "new" / "grid.png")) == 0
    assert (tmp_path / "new" / "grid.png").exists() and len(list(out.glob("*.png"))) == 2
