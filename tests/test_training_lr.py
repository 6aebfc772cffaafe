"""The learning-rate schedule: warm-up, constant, and the cool-down at the end of a known run (closed forms)."""

from __future__ import annotations

import pytest

from ddpm_studio.config import RunConfig, TrainConfig
from ddpm_studio.training.loop import learning_rate


def _tc(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-3, "warmup_steps": 10, "steps": 100, **kw})


def test_without_a_cool_down_the_rate_is_the_paper_s_warm_up_then_constant():
    tc = _tc(lr_cooldown=0.0)
    assert learning_rate(tc, 0) == pytest.approx(1e-4)
    assert learning_rate(tc, 4) == pytest.approx(5e-4)
    assert [learning_rate(tc, k) for k in (9, 50, 99)] == pytest.approx([1e-3] * 3)


def test_the_cool_down_falls_linearly_over_the_last_fraction_of_the_steps():
    tc = _tc(lr_cooldown=0.2)  # the last 20 of 100 steps
    assert [learning_rate(tc, k) for k in (10, 50, 79, 80)] == pytest.approx([1e-3] * 4)
    assert learning_rate(tc, 90) == pytest.approx(1e-3 * 10 / 20)
    assert learning_rate(tc, 99) == pytest.approx(1e-3 * 1 / 20)  # the last step still learns
    rates = [learning_rate(tc, k) for k in range(10, 100)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and min(rates) > 0


def test_a_session_the_clock_ends_cools_down_over_its_last_minutes():
    tc = _tc(lr_cooldown=0.2, steps=None, minutes=10.0)
    assert learning_rate(tc, 50, time_done=0.5) == pytest.approx(1e-3)
    assert learning_rate(tc, 50, time_done=0.9) == pytest.approx(5e-4)
    assert learning_rate(tc, 50, time_done=1.2) == 0.0  # past the limit: never negative
    # steps and minutes: whichever end comes first
    both = _tc(lr_cooldown=0.2, steps=1000, minutes=10.0)
    assert learning_rate(both, 900, time_done=0.1) == pytest.approx(5e-4)  # the steps end first
    assert learning_rate(both, 100, time_done=0.95) == pytest.approx(2.5e-4)  # the clock ends first
    # a run a Stop ends has no known end: constant
    assert learning_rate(_tc(lr_cooldown=0.2, steps=None), 10**6) == pytest.approx(1e-3)


def test_presets_cool_down_but_the_paper_s_and_older_runs_stay_constant():
    assert RunConfig.from_preset("tiny").train.lr_cooldown == 0.5
    assert RunConfig.from_preset("small").train.lr_cooldown == 0.5
    assert RunConfig.from_preset("ddpm-cifar10").train.lr_cooldown == 0.0  # as in the paper
    old = RunConfig.from_preset("tiny").to_dict()
    del old["train"]["lr_cooldown"]  # a config.json written before the field existed
    assert RunConfig.from_dict(old).train.lr_cooldown == 0.0  # a run keeps the schedule it was trained with
