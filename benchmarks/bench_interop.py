"""How closely imported diffusers models match diffusers, and how long import/export take.

Run by hand (needs diffusers):  python benchmarks/bench_interop.py [--threads N]
Prints the largest absolute differences (network outputs, DDIM images, DDPM images) and timings
for the paper's CIFAR-10 UNet2DModel (35.7M parameters, random weights) and a small one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import diffusers

    from ddpm_studio.artifacts.diffusers_format import load_diffusers_folder
    from ddpm_studio.artifacts.loading import export_diffusers
    from ddpm_studio.sampling.service import generate

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_interop_diffusers import PAPER_CIFAR10, SMALL  # the configurations the tests use

    tmp = Path(tempfile.mkdtemp(prefix="bench_interop_"))
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {args.threads} thread(s)")

    torch.manual_seed(0)
    paper = diffusers.UNet2DModel(**PAPER_CIFAR10).eval()
    diffusers.DDPMPipeline(unet=paper, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp / "paper")
    t0 = time.perf_counter()
    loaded = load_diffusers_folder(tmp / "paper", device="cpu")
    t_import = time.perf_counter() - t0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 300, 700, 999])
    with torch.no_grad():
        for _ in range(2):  # warm-up, then timed
            t0 = time.perf_counter()
            ours = loaded.model(x, t)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs = paper(x, t).sample
            t_theirs = time.perf_counter() - t0
    print(f"paper CIFAR-10 UNet: import {t_import:.2f} s; forward (4x3x32x32) ours {t_ours:.3f} s, "
          f"diffusers {t_theirs:.3f} s (ratio {t_ours / t_theirs:.2f}); max |diff| "
          f"{(ours - theirs).abs().max().item():.2e} "
          f"(output max |y| {theirs.abs().max().item():.2f})")
    t0 = time.perf_counter()
    export_diffusers(loaded, tmp / "paper_export")
    print(f"paper CIFAR-10 UNet: export {time.perf_counter() - t0:.2f} s")

    torch.manual_seed(1)
    small = diffusers.UNet2DModel(**SMALL).eval()
    for sched in (dict(beta_schedule="squaredcos_cap_v2"), dict(beta_schedule="linear", num_train_timesteps=500,
                                                                prediction_type="sample"),
                  dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       prediction_type="v_prediction", clip_sample=False)):
        folder = tmp / f"small_{len(list(tmp.iterdir()))}"
        diffusers.DDPMPipeline(unet=small, scheduler=diffusers.DDPMScheduler(**sched)).save_pretrained(folder)
        lm = load_diffusers_folder(folder, device="cpu")
        s = lm.config.sampling
        s.sampler, s.steps, s.eta, s.num_images, s.seed = "ddim", 20, 0.0, 8, 11
        mine = ((list(generate(lm, s))[-1].x_t + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        pipe = diffusers.DDIMPipeline(unet=small, scheduler=diffusers.DDIMScheduler.from_pretrained(folder,
                                                                                                    subfolder="scheduler"))
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(batch_size=8, generator=torch.Generator().manual_seed(11), eta=0.0, num_inference_steps=20,
                   use_clipped_model_output=True, output_type="np").images
        print(f"small UNet, DDIM 20 steps, 8 images, {sched}: max |diff| vs DDIMPipeline "
              f"{np.abs(mine - ref).max():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
