"""Explicit (tuned) timesteps: every few-step sampler visits exactly them; tuning finds better ones, checked on
the exact denoiser of Gaussian data; the CLI's tune-steps and sample --timesteps."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ddpm_studio.artifacts.loaded import LoadedModel
from ddpm_studio.config import RunConfig, SamplingConfig
from ddpm_studio.engine.diffusion import GaussianDiffusion
from ddpm_studio.engine.schedules import NoiseSchedule
from ddpm_studio.errors import Cancelled
from ddpm_studio.sampling.service import generate
from ddpm_studio.sampling.tuning import (TUNING_SEED, chain_error, check_tunable, own_timesteps, tune_timesteps,
                                         tuned)
from training_support import one_thread, tiny_trained_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
MU, S = 0.3, 0.5  # the Gaussian data N(MU, S^2), per pixel


class GaussianDenoiser(torch.nn.Module):
    """The exact optimal network (v-prediction) for data N(MU, S^2): x0_hat = E[x_0 | x_t] in closed form."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.ab = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # a device for LoadedModel

    def forward(self, x, t):
        ab = self.ab[t].view(-1, 1, 1, 1)
        x0 = MU + ab.sqrt() * S * S * (x - ab.sqrt() * MU) / (ab * S * S + 1 - ab)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def _gaussian_loaded() -> LoadedModel:
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=1, image_size=4),
                              diffusion=dataclasses.replace(cfg.diffusion, prediction="v"))
    d = GaussianDiffusion(NoiseSchedule.from_config("linear", 1000), prediction="v")
    return LoadedModel(GaussianDenoiser(d.schedule.alphas_cumprod), d, cfg, 0, "gaussian")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde", "unipc"])
def test_every_few_step_sampler_visits_exactly_the_explicit_timesteps(sampler):
    from ddpm_studio.lab.chain import sampler_timesteps

    loaded = _gaussian_loaded()
    cfg = SamplingConfig(sampler=sampler, steps=3, timesteps=(999, 420, 37), clip_denoised=False)
    assert [r.t for r in generate(loaded, cfg, num_images=2)] == [999, 420, 37]
    assert sampler_timesteps(loaded.diffusion, cfg) == [999, 420, 37]  # the lab's views and branches agree
    plain = dataclasses.replace(cfg, timesteps=None)
    assert own_timesteps(loaded, plain) != [999, 420, 37]


def test_explicit_timesteps_are_checked_against_the_steps_and_the_model():
    with pytest.raises(ValueError, match="lists 2 timestep.*steps is 3"):
        SamplingConfig(sampler="unipc", steps=3, timesteps=(900, 10)).validate()
    with pytest.raises(ValueError, match="distinct and descending"):
        SamplingConfig(sampler="unipc", steps=3, timesteps=(900, 10, 10)).validate()
    SamplingConfig(sampler="unipc", steps=2, timesteps=(900, 10)).validate()
    loaded = _gaussian_loaded()
    too_high = dataclasses.replace(SamplingConfig(sampler="ddim", steps=2), timesteps=(1000, 10))
    with pytest.raises(ValueError, match="at most T-1=999"):
        list(generate(loaded, too_high, num_images=1))


def test_the_error_counts_lost_spread_as_well_as_distance():
    """Images pulled halfway to their mean are as far from the reference per image as a shift of half a std,
    but only the first has lost spread: the error charges it (std / 2)^2 more."""
    ref = torch.randn((256, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert chain_error(ref, ref) == 0.0
    shrunk = ref.mean(0) + 0.5 * (ref - ref.mean(0))
    shifted = ref + 0.5 * ref.std(0)
    mse, mse_shifted = float((shrunk - ref).square().mean()), float((shifted - ref).square().mean())
    assert mse_shifted == pytest.approx(mse, rel=1e-2)  # (N - 1) / N apart
    assert chain_error(shifted, ref) == pytest.approx(mse_shifted, rel=1e-5)  # a shift keeps the spread
    assert chain_error(shrunk, ref) == pytest.approx(mse + float((0.5 * ref.std(0)).square().mean()), rel=1e-5)


def test_only_deterministic_settings_can_be_tuned():
    for cfg, words in ((SamplingConfig(sampler="ddpm"), "deterministic sampler"),
                       (SamplingConfig(sampler="dpmpp-2m-sde"), "fresh noise"),
                       (SamplingConfig(sampler="ddim", eta=0.5), "eta 0"),
                       (SamplingConfig(sampler="unipc", steps=1), "at least 2 steps")):
        with pytest.raises(ValueError, match=words):
            check_tunable(cfg)


@pytest.mark.parametrize("sampler", ["ddim", "unipc"])
def test_tuning_on_the_exact_denoiser_comes_closer_to_the_ode_and_to_the_data(sampler):
    """For Gaussian data the ODE's solution is known; tuned steps land nearer the reference chain (the error
    the search reports is what the tuned config gives from the tuning seed) and nearer the data's spread."""
    loaded = _gaussian_loaded()
    cfg = SamplingConfig(sampler=sampler, steps=3, clip_denoised=False)
    r = tune_timesteps(loaded, cfg, images=64)
    assert r.timesteps[0] == r.start[0] == 999 and len(r.timesteps) == 3 and r.timesteps != r.start
    assert r.error < 0.5 * r.error_start, r  # measured: 0.26x (DDIM-3), 0.27x (UniPC-3)
    # re-run: the tuned config's images from the tuning seed give the error reported
    ref = torch.cat([list(generate(loaded, dataclasses.replace(cfg, sampler="dpmpp-2m", steps=50), num_images=32,
                                   seed=TUNING_SEED + k))[-1].x_t for k in (0, 1)])
    got = torch.cat([list(generate(loaded, tuned(cfg, r), num_images=32, seed=TUNING_SEED + k))[-1].x_t
                     for k in (0, 1)])
    assert chain_error(got, ref) == pytest.approx(r.error, rel=1e-5)
    # the exact flow maps x_T to MU + S * (x_T - sqrt(ab) MU) / sqrt(ab S^2 + 1 - ab): the reference is on it
    ab = float(loaded.diffusion.schedule.alphas_cumprod[-1])
    x_T = torch.randn((32, 1, 4, 4), generator=torch.Generator().manual_seed(TUNING_SEED))
    exact = MU + S * (x_T - math.sqrt(ab) * MU) / math.sqrt(ab * S * S + 1 - ab)
    assert float((ref[:32] - exact).abs().max()) < 5e-3  # 2M-50: 3.3e-3
    # and on other seeds the tuned chain keeps more of the data's spread than the spacing's own steps
    spread = {name: float(torch.cat([list(generate(loaded, c, num_images=64, seed=7 + k))[-1].x_t
                                     for k in range(4)]).std()) for name, c in
              (("start", cfg), ("tuned", tuned(cfg, r)))}
    assert abs(spread["tuned"] - S) < abs(spread["start"] - S), spread


def test_tuning_stops_when_asked_and_refuses_a_result_for_another_sampler():
    loaded = _gaussian_loaded()
    calls = []
    with pytest.raises(Cancelled):
        tune_timesteps(loaded, SamplingConfig(sampler="unipc", steps=3), images=8,
                       progress=lambda n, e: calls.append(n), should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2
    r = tune_timesteps(loaded, SamplingConfig(sampler="ddim", steps=2, clip_denoised=False), images=8)
    with pytest.raises(ValueError, match="tuned for ddim, not unipc"):
        tuned(SamplingConfig(sampler="unipc", steps=2), r)


def test_cli_tune_steps_then_sample_with_them(tiny_run, tmp_path, capsys):
    from ddpm_studio.cli import main

    assert main(["tune-steps", "--run", str(tiny_run), "--sampling-steps", "3", "--images", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tuned unipc, 3 steps:" in out and "not checked" not in out  # a run: its training images are at hand
    flag = out.split("--timesteps ")[1].split()[0]
    ts = [int(t) for t in flag.split(",")]
    assert len(ts) == 3 and ts[0] == 19 and ts == sorted(ts, reverse=True)
    dest = tmp_path / "samples"
    assert main(["sample", "--run", str(tiny_run), "--sampler", "unipc", "--timesteps", flag, "--num", "2",
                 "--out", str(dest), "--quiet"]) == 0
    record = json.loads(next(dest.glob("*.json")).read_text())
    sampling = record.get("sampling", record)
    assert list(sampling["timesteps"]) == ts and sampling["steps"] == 3
    assert len(list(dest.glob("*.png"))) == 2
    assert main(["tune-steps", "--run", str(tiny_run), "--sampler", "ddpm"]) == 1
    assert "deterministic sampler" in capsys.readouterr().err


def test_tuned_images_are_what_the_tuned_config_generates(tiny_run):
    from ddpm_studio.artifacts.loading import load_model

    loaded = load_model(tiny_run, device="cpu")
    r = tune_timesteps(loaded, SamplingConfig(sampler="dpmpp-2m", steps=3), images=8)
    a = np.stack([s.t for s in generate(loaded, tuned(SamplingConfig(sampler="dpmpp-2m"), r), num_images=1)])
    assert list(a) == list(r.timesteps) and r.error <= r.error_start


def test_cli_tune_steps_measures_the_tuning_default_number_of_chains(tiny_run, capsys, monkeypatch):
    from ddpm_studio.cli import main
    from ddpm_studio.sampling import tuning

    monkeypatch.setattr(tuning, "IMAGES", 6)  # without --images the CLI asks for the tuning's own number
    assert main(["tune-steps", "--run", str(tiny_run), "--sampling-steps", "2", "--quiet"]) == 0
    assert "; 6 images," in capsys.readouterr().out


def _grid_images(mean: float, n: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, 1, 8, 8) images in [-1, 1] whose 2 x 2 blocks are constant, around ``mean``."""
    g = torch.Generator().manual_seed(seed)
    return (mean + 0.2 * torch.randn((n, 1, 4, 4), generator=g)).repeat_interleave(2, 2).repeat_interleave(2, 3)


def test_the_last_step_goes_to_0_only_when_that_brings_the_images_closer_to_the_training_images():
    from ddpm_studio.sampling.tuning import check_last_step

    data = ((_grid_images(0.5, 200, seed=1).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    seen = []

    def final_zero_like_data(ts):
        seen.append(list(ts))
        return _grid_images(0.5 if ts[-1] == 0 else -0.3)

    ts, check = check_last_step(final_zero_like_data, [999, 500, 40], data)
    assert ts == [999, 500, 0] and check[1] < check[0] and seen == [[999, 500, 40], [999, 500, 0]]
    ts, check = check_last_step(lambda ts: _grid_images(-0.3 if ts[-1] == 0 else 0.5), [999, 500, 40], data)
    assert ts == [999, 500, 40] and check[0] < check[1]
    assert check_last_step(final_zero_like_data, [999, 500, 0], data) == ([999, 500, 0], None)


def test_tuning_with_the_training_images_reports_the_check_and_the_chosen_lists_own_error(tiny_run):
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.evaluation.metrics import tuning_images

    loaded = load_model(tiny_run, device="cpu")
    data, said = tuning_images(loaded)
    assert data is not None and said == "the run's training images" and data.shape[1:] == (8, 8, 1)
    cfg = SamplingConfig(sampler="unipc", steps=3)
    plain = tune_timesteps(loaded, cfg, images=8)
    phases = []
    r = tune_timesteps(loaded, cfg, images=8, data=data, data_note=said, phase=phases.append)
    assert phases == ["solving 8 chains with 20 steps, the reference",
                      "checking the last step against the training images (1024 chains per list)"]
    assert plain.data_check is None and not plain.ends_at_zero and "last step" not in plain.summary()
    assert r.data_check is not None and r.timesteps[:-1] == plain.timesteps[:-1]
    assert r.timesteps[-1] == (0 if r.ends_at_zero else plain.timesteps[-1])
    ref = torch.cat([list(generate(loaded, dataclasses.replace(cfg, sampler="dpmpp-2m", steps=20, spacing="auto"),
                                   num_images=8, seed=TUNING_SEED))[-1].x_t])
    got = list(generate(loaded, tuned(cfg, r), num_images=8, seed=TUNING_SEED))[-1].x_t
    assert chain_error(got, ref) == pytest.approx(r.error, rel=1e-5)  # the error of the list it returns
    assert ("last step moved to 0" in r.summary()) == r.ends_at_zero
    assert ("Tuned, last step at 0" in r.note()) == r.ends_at_zero
    assert r.note().endswith("Last step checked against the run's training images.")


def test_the_training_images_for_the_check_come_from_the_run_a_folder_or_the_open_set_or_are_said_to_be_missing(
        tiny_run, tmp_path):
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.evaluation.metrics import tuning_images
    from training_support import tiny_images

    checkpoint = next((tiny_run / "checkpoints").glob("*.safetensors"))
    assert tuning_images(load_model(checkpoint, device="cpu"))[0] is not None  # a checkpoint in its run's folder
    loaded = dataclasses.replace(load_model(tiny_run, device="cpu"), source=str(tmp_path))  # e.g. a diffusers folder
    data, why = tuning_images(loaded)
    assert data is None and "not a run folder" in why
    folder = tmp_path / "pictures"
    folder.mkdir()
    from PIL import Image

    for i, im in enumerate(tiny_images(n=5, size=12, channels=3).images):
        Image.fromarray(im).save(folder / f"{i}.png")
    data, said = tuning_images(loaded, folder)
    assert data.shape == (5, 8, 8, 1) and said == f"the images in {folder}"  # decoded at the model's size, grey
    data, why = tuning_images(loaded, tmp_path / "gone")
    assert data is None and "folder not found" in why
    data, said = tuning_images(loaded, open_images=tiny_images(n=6, size=8, channels=1))
    assert data.shape == (6, 8, 8, 1) and said == "the images open in the Dataset panel"
    data, why = tuning_images(loaded, open_images=tiny_images(n=6, size=16, channels=3))
    assert data is None and "are 6 images, 16x16 RGB, not the model's 8x8 greyscale" in why


def test_cli_tune_steps_checks_a_model_without_a_run_against_data(tiny_run, tmp_path, capsys):
    from PIL import Image

    from ddpm_studio.cli import main
    from training_support import tiny_images

    folder = tmp_path / "diffusers"
    assert main(["export", "--run", str(tiny_run), "--format", "diffusers", "--out", str(folder)]) == 0
    capsys.readouterr()
    base = ["tune-steps", "--model", str(folder), "--sampling-steps", "3", "--images", "8", "--quiet"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "last step not checked" in out and "give them with --data DIR" in out
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for i, im in enumerate(tiny_images(n=4, size=8, channels=1).images):
        Image.fromarray(im[..., 0]).save(pictures / f"{i}.png")
    assert main(base + ["--data", str(pictures)]) == 0
    out = capsys.readouterr().out
    assert f"last step checked against the images in {pictures} (4)" in out and "not checked" not in out


def test_a_tuning_is_remembered_for_the_weights_wherever_they_are_opened_from_and_survives_a_damaged_file(
        tiny_run, tmp_path):
    from ddpm_studio import paths
    from ddpm_studio.artifacts.diffusers_format import write_diffusers_folder
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.sampling import tuning_store

    loaded = load_model(tiny_run, device="cpu")
    key = tuning_store.model_key(loaded)
    write_diffusers_folder(loaded, tmp_path / "exported")
    assert tuning_store.model_key(load_model(tmp_path / "exported", device="cpu")) == key  # the same weights
    changed = load_model(tiny_run, device="cpu")
    with torch.no_grad():
        next(changed.model.parameters()).add_(1e-3)
    assert tuning_store.model_key(changed) != key  # trained further: other weights, no tuning
    cfg = SamplingConfig(sampler="unipc", steps=3)
    assert tuning_store.recall_all(key) == [] and tuning_store.find([], cfg) is None
    r = tune_timesteps(loaded, cfg, images=8)
    tuning_store.remember(key, cfg, r)
    again = dataclasses.replace(r, timesteps=(19, 9, 2))
    tuning_store.remember(key, cfg, again)  # a newer tuning of the same settings replaces the older
    entries = tuning_store.recall_all(key)
    assert len(entries) == 1 and tuning_store.find(entries, cfg)["timesteps"] == [19, 9, 2]
    assert tuning_store.find(entries, dataclasses.replace(cfg, steps=4)) is None
    assert tuning_store.find(entries, dataclasses.replace(cfg, clip_denoised=False)) is None
    assert tuning_store.find(entries, dataclasses.replace(cfg, sampler="dpmpp-2m")) is None
    (paths.tunings_dir() / f"{key}.json").write_text('{"tunings": [{"match": 1}', encoding="utf-8")  # cut short
    assert tuning_store.recall_all(key) == []
    tuning_store.remember(key, cfg, r)  # and it is written anew
    assert tuning_store.find(tuning_store.recall_all(key), cfg)["timesteps"] == list(r.timesteps)


def test_cli_sample_tuned_uses_what_tune_steps_remembered_and_refuses_settings_never_tuned(tiny_run, tmp_path, capsys):
    from ddpm_studio.cli import main

    sample = ["sample", "--run", str(tiny_run), "--sampler", "unipc", "--num", "2", "--quiet", "--tuned"]
    assert main(sample + ["--sampling-steps", "3", "--out", str(tmp_path / "none")]) == 1
    assert "no tuned timesteps remembered for this model with unipc at 3 steps" in capsys.readouterr().err
    assert main(["tune-steps", "--run", str(tiny_run), "--sampling-steps", "3", "--images", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    ts = [int(t) for t in out.split("--timesteps ")[1].split()[0].split(",")]
    assert "--sampling-steps 3 --tuned --out DIR (remembered for this model" in out
    assert main(["info", str(tiny_run)]) == 0
    assert f"tuned:       unipc, 3 steps: {','.join(map(str, ts))} (tuned " in capsys.readouterr().out
    assert main(sample + ["--sampling-steps", "3", "--out", str(tmp_path / "tuned")]) == 0
    record = json.loads(next((tmp_path / "tuned").glob("*.json")).read_text())
    assert list(record.get("sampling", record)["timesteps"]) == ts
    assert main(sample + ["--sampling-steps", "4", "--out", str(tmp_path / "four")]) == 1
    assert "unipc at 4 steps" in capsys.readouterr().err
    assert main(sample + ["--timesteps", "19,5,1", "--out", str(tmp_path / "both")]) == 1
    assert "--tuned and --timesteps" in capsys.readouterr().err


def test_tune_steps_still_prints_its_timesteps_when_the_tuning_cannot_be_remembered(tiny_run, capsys):
    from ddpm_studio import paths
    from ddpm_studio.cli import main

    paths.tunings_dir().parent.mkdir(parents=True, exist_ok=True)
    paths.tunings_dir().write_text("not a folder", encoding="utf-8")  # so nothing can be written under it
    assert main(["tune-steps", "--run", str(tiny_run), "--sampling-steps", "3", "--images", "8", "--quiet"]) == 0
    io = capsys.readouterr()
    assert "--timesteps " in io.out and "note: the tuning could not be remembered" in io.err
    assert main(["info", str(tiny_run)]) == 0 and "tuned:" not in capsys.readouterr().out  # nothing to list
