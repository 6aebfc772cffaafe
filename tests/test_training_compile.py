"""train.compile: the training network goes through torch.compile, checkpoints stay plain, a compiler
that fails leaves an uncompiled run that trains on, and devices that cannot compile say so.

torch.compile itself is replaced by a stand-in here (a real compilation takes minutes on a CPU);
the real thing is measured on a GPU by benchmarks/bench_gpu.py and benchmarks/gpu_check.sh."""

from __future__ import annotations

import logging

import pytest
import torch

from ddpm_studio.artifacts import checkpoints as ck
from ddpm_studio.engine import devices
from ddpm_studio.training.events import TrainStarted
from ddpm_studio.training.trainer import Trainer
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class _StandIn(torch.nn.Module):
    """What torch.compile returns, as far as the Trainer sees it: a module around ``_orig_mod``."""

    calls = 0
    fail = False

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).fail:
            raise RuntimeError("backend 'inductor' raised:\nCppCompileError: C++ compile error")
        return self._orig_mod(*args, **kwargs)


@pytest.fixture
def stand_in(monkeypatch):
    _StandIn.calls, _StandIn.fail = 0, False
    wrapped = []

    def fake_compile(module, *args, **kwargs):
        wrapped.append(module)
        return _StandIn(module)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(devices, "resolve_compile", lambda device, wanted: (bool(wanted), None))
    return wrapped


def _weights(run_dir):
    return ck.load_checkpoint(ck.latest_checkpoint(run_dir)).model_state


def test_a_compiled_run_trains_through_the_compiled_network_and_saves_plain_weights(tmp_path, stand_in):
    images = tiny_images()
    done = Trainer(tiny_config(4, compile=True), tmp_path / "compiled", images=images).run()
    assert (done.reason, done.step) == ("completed", 4)
    assert len(stand_in) == 1 and _StandIn.calls == 4  # one forward per step, all through the wrapper
    compiled = _weights(tmp_path / "compiled")
    assert not any("_orig_mod" in name for name in compiled)
    # the stand-in computes what the network does, so the weights equal an uncompiled run's
    Trainer(tiny_config(4), tmp_path / "eager", images=images).run()
    eager = _weights(tmp_path / "eager")
    assert compiled.keys() == eager.keys()
    assert all(torch.equal(compiled[k], eager[k]) for k in eager)
    # and a compiled run resumes like any other
    more = Trainer(tiny_config(6, compile=True), tmp_path / "compiled", images=images, resume=True).run()
    assert (more.reason, more.step) == ("completed", 6)


def test_a_compiler_that_fails_on_the_first_step_leaves_a_run_that_trains_on_uncompiled(tmp_path, stand_in, caplog):
    _StandIn.fail = True
    images = tiny_images()
    with caplog.at_level(logging.WARNING, logger="ddpm_studio"):
        trainer = Trainer(tiny_config(3, compile=True), tmp_path / "run", images=images)
        done = trainer.run()
    assert (done.reason, done.step) == ("completed", 3)
    assert _StandIn.calls == 1 and trainer.compiled is False  # tried once, then the plain network
    assert any("torch.compile failed" in r.getMessage() and "CppCompileError" not in r.getMessage()
               and "RuntimeError" in r.getMessage() for r in caplog.records)
    Trainer(tiny_config(3), tmp_path / "eager", images=images).run()
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "eager")
    assert all(torch.equal(a[k], b[k]) for k in b)  # the failed attempt left no trace in the weights


def test_compile_off_never_calls_torch_compile(tmp_path, stand_in):
    done = Trainer(tiny_config(2), tmp_path / "run", images=tiny_images()).run()
    assert done.reason == "completed" and stand_in == [] and _StandIn.calls == 0


def test_where_compile_cannot_run_the_run_says_so_and_trains_uncompiled(tmp_path, monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    used, note = devices.resolve_compile("cpu", True)
    assert used is False and "needs a C++ compiler" in note
    events = []
    trainer = Trainer(tiny_config(2, compile=True), tmp_path / "run", images=tiny_images())
    done = trainer.run(on_event=events.append)
    assert done.reason == "completed" and trainer.compiled is False
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert any("needs a C++ compiler" in n for n in started.notes)


def test_resolve_compile_by_device(monkeypatch):
    assert devices.resolve_compile("cpu", False) == (False, None)
    used, note = devices.resolve_compile("mps", True)
    assert used is False and "Apple MPS" in note
    monkeypatch.setattr(devices.shutil, "which", lambda name: "/usr/bin/" + name if name == "clang++" else None)
    assert devices.resolve_compile("cpu", True) == (True, None)
    import torch.utils._triton as triton_probe

    monkeypatch.setattr(triton_probe, "has_triton", lambda: False)
    used, note = devices.resolve_compile("cuda", True)
    assert used is False and "needs Triton" in note
    monkeypatch.setattr(triton_probe, "has_triton", lambda: True)
    assert devices.resolve_compile("cuda", True) == (True, None)
