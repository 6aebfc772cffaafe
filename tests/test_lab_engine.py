"""Resuming an engine chain mid-way (start_index, DPM-Solver++ / UniPC history): the lab's branch point.

Oracle: a chain resumed at step k from the x it held there, with the generator in the state it had
there (and DPM-Solver++'s or UniPC's earlier x̂0), continues exactly as the uninterrupted chain.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lab_support import tiny_model
from training_support import one_thread  # noqa: F401

from ddpm_studio.config import SamplingConfig

CASES = [("ddpm", 20, 0.0), ("ddim", 10, 0.0), ("ddim", 10, 1.0), ("dpmpp-2m", 8, 0.0), ("dpmpp-3m", 8, 0.0),
         ("dpmpp-2m-sde", 8, 0.0), ("unipc", 8, 0.0)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sampler,steps,eta", CASES)
def test_resume_at_every_step_continues_the_chain(sampler, steps, eta):
    model, diffusion, shape = tiny_model()
    s = dataclasses.replace(SamplingConfig(), sampler=sampler, steps=steps, eta=eta)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn((2, *shape), generator=g)
    full, states = [], []
    for r in diffusion.sample_progressive(model, x_T.shape, s, generator=g, noise=x_T):
        full.append(r)
        states.append(g.get_state())
    assert len(full) == (20 if sampler == "ddpm" else steps)
    for k in (1, len(full) // 2, len(full) - 1):
        g2 = torch.Generator()
        g2.set_state(states[k - 1])
        history = [r.pred_x0 for r in full[max(0, k - 3):k]]
        rest = list(diffusion.sample_progressive(model, x_T.shape, s, generator=g2, noise=full[k - 1].x_t,
                                                 start_index=k, history=history))
        assert [r.index for r in rest] == list(range(k, len(full)))
        assert [r.t for r in rest] == [r.t for r in full[k:]]
        assert torch.equal(rest[-1].x_t, full[-1].x_t), (sampler, k)


def test_start_index_zero_is_the_old_chain():
    model, diffusion, shape = tiny_model()
    s = dataclasses.replace(SamplingConfig(), sampler="dpmpp-2m", steps=6)
    a = diffusion.sample(model, (1, *shape), s)
    b = diffusion.sample(model, (1, *shape), s, start_index=0)
    assert torch.equal(a, b)


def test_dpm_resume_without_history_warms_up_again():
    """No earlier x̂0: the resumed step is first order (as a fresh chain's first step), so it differs."""
    model, diffusion, shape = tiny_model()
    s = dataclasses.replace(SamplingConfig(), sampler="dpmpp-2m", steps=6)
    x_T = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    full = list(diffusion.sample_progressive(model, x_T.shape, s, noise=x_T))
    cold = list(diffusion.sample_progressive(model, x_T.shape, s, noise=full[2].x_t, start_index=3))
    assert len(cold) == 3 and not torch.equal(cold[-1].x_t, full[-1].x_t)


def test_bad_start_index_is_refused():
    model, diffusion, shape = tiny_model()
    s = dataclasses.replace(SamplingConfig(), sampler="ddim", steps=5)
    with pytest.raises(ValueError, match="start_index must be a whole number from 0 to 4"):
        list(diffusion.sample_progressive(model, (1, *shape), s, noise=torch.zeros(1, *shape), start_index=5))
    with pytest.raises(ValueError, match="needs the x it holds there"):
        list(diffusion.sample_progressive(model, (1, *shape), s, start_index=2))
