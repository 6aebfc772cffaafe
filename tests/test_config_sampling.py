"""config.py's sampling data: samplers, their defaults and hints, spacings, and old configs."""

import json

import pytest

from ddpm_studio.config import (DIFFUSERS_SPACINGS, SAMPLER_INFO, SAMPLERS, SPACING_HINTS, SPACING_LABELS, SPACINGS,
                                RunConfig,
                                SamplingConfig, TrainConfig, describe_sampling, resolve_spacing, sampler_default_steps)


def test_defaults_are_the_fast_sampler_from_pure_noise():
    s = SamplingConfig()
    assert (s.sampler, s.steps, s.spacing, s.dynamic_threshold) == ("dpmpp-2m", 20, "auto", None)
    assert (TrainConfig().preview_sampler, TrainConfig().preview_sampling_steps) == ("dpmpp-2m", 20)
    assert SAMPLERS == ("ddpm", "ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc")
    assert set(SPACINGS) == {"auto", "leading", "trailing", "linspace", "logsnr"} == set(SPACING_HINTS) \
        == set(SPACING_LABELS)
    assert set(DIFFUSERS_SPACINGS) == {"leading", "trailing", "linspace"}


def test_auto_spacing_is_log_snr_for_the_multistep_solvers_and_trailing_for_ddim():
    assert [resolve_spacing(n, "auto") for n in SAMPLERS] == ["trailing", "trailing", "logsnr", "logsnr", "logsnr",
                                                              "logsnr"]
    assert resolve_spacing("dpmpp-2m", "linspace") == "linspace" and resolve_spacing("ddim", "logsnr") == "logsnr"
    # what was used is what a run's description and `info` say, with the setting beside it
    assert describe_sampling(SamplingConfig(), 1000) == "dpmpp-2m, 20 steps, logsnr spacing (auto), x_0 clipped, seed 0"
    assert describe_sampling(SamplingConfig(sampler="ddim", steps=50, spacing="trailing"), 1000) == \
        "ddim, 50 steps, trailing spacing, eta 0, x_0 clipped, seed 0"


def test_every_sampler_has_a_label_a_hint_and_a_default_step_count():
    assert set(SAMPLER_INFO) == set(SAMPLERS)
    for name, info in SAMPLER_INFO.items():
        assert info["label"] and info["hint"].endswith(".")
        assert "\n" not in info["hint"] and len(info["hint"]) < 120
    assert [sampler_default_steps(n, 1000) for n in SAMPLERS] == [1000, 50, 20, 20, 20, 10]
    assert sampler_default_steps("ddim", 30) == 30 and sampler_default_steps("dpmpp-2m", 10) == 10  # at most T
    with pytest.raises(ValueError, match="sampling.sampler must be one of"):
        sampler_default_steps("euler", 1000)


def test_a_config_written_before_spacing_existed_loads_with_trailing_for_ddim():
    d = RunConfig().to_dict()
    del d["sampling"]["spacing"], d["sampling"]["dynamic_threshold"], d["train"]["preview_sampler"]
    d["sampling"].update(sampler="ddim", steps=50)
    cfg = RunConfig.from_json(json.dumps(d)).validate()
    assert (cfg.sampling.sampler, cfg.sampling.steps, cfg.sampling.spacing) == ("ddim", 50, "auto")
    assert resolve_spacing(cfg.sampling.sampler, cfg.sampling.spacing) == "trailing"
    assert cfg.train.preview_sampler == "dpmpp-2m"


@pytest.mark.parametrize("field,value,message", [
    ("spacing", "even", "sampling.spacing must be one of auto, trailing, linspace, logsnr, leading; got 'even'"),
    ("sampler", "euler",
     "sampling.sampler must be one of ddpm, ddim, dpmpp-2m, dpmpp-3m, dpmpp-2m-sde, unipc; got 'euler'"),
    ("dynamic_threshold", 1.5, "sampling.dynamic_threshold must be from 0.0 to 1.0; got 1.5"),
])
def test_bad_sampling_values_name_the_field(field, value, message):
    with pytest.raises(ValueError) as e:
        SamplingConfig(**{field: value}).validate()
    assert str(e.value) == message
    with pytest.raises(ValueError, match="train.preview_sampler must be one of"):
        TrainConfig(preview_sampler="euler").validate()
