"""Training throughput: images/s of one training step, ours vs the same network in diffusers.

Run by hand:  python benchmarks/bench_training.py [--presets tiny small] [--sizes 16 32]
              [--batch 64] [--steps 3] [--threads N] [--device cpu|cuda]

"Ours" is the trainer's step: t and noise from a seeded generator, GaussianDiffusion.training_losses
(L_simple), backward, gradient clipping, AdamW (foreach on CPU, fused on CUDA), EMA update.
"diffusers" is the same recipe as diffusers' train_unconditional example: DDPMScheduler.add_noise,
UNet2DModel, MSE, backward, clipping, AdamW (its defaults), EMAModel.step — with the UNet2DModel
built from our network's own diffusers config (so both have the same layers; parameter counts are
printed and must agree within 1%). Both run in the same process, alternating, best of --repeats.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def _ours(cfg, batch: int, device: torch.device):
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.ema import EMA
    from ddpm_studio.engine.unet import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    ema = EMA(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    gen = torch.Generator(device=device)
    x0 = torch.rand(batch, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size, device=device) * 2 - 1
    state = {"k": 0}

    def step():
        gen.manual_seed(state["k"])
        t = torch.randint(0, diffusion.T, (batch,), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        model.train()
        loss, _ = diffusion.training_losses(model, x0, t=t, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state["k"] += 1
        ema.update(model, state["k"])

    return model, step


def _diffusers(cfg, ours_model, batch: int, device: torch.device):
    import diffusers
    from diffusers.training_utils import EMAModel

    from ddpm_studio.interop.diffusers_format import unet_config_for

    conf = {k: v for k, v in unet_config_for(ours_model.spec).items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**conf).to(device)
    sched = diffusers.DDPMScheduler(num_train_timesteps=cfg.diffusion.timesteps)
    ema = EMAModel(model.parameters(), decay=0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.rand(batch, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size, device=device) * 2 - 1

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=device)
        noisy = sched.add_noise(x0, noise, t)
        model.train()
        pred = model(noisy, t).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())

    return model, step


def _time(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 32])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="alternating measurements; the best is kept")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from ddpm_studio.config import RunConfig
    from ddpm_studio.engine.unet import count_parameters

    try:
        import diffusers
        have_diffusers = True
    except ImportError:
        have_diffusers = False
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__ if have_diffusers else 'not installed'}, "
          f"device {device}, {torch.get_num_threads()} thread(s), batch {args.batch}")
    print(f"{'preset':<14}{'px':>4}{'params ours':>14}{'params diff.':>14}{'ours img/s':>12}{'diff. img/s':>13}{'ratio':>7}")
    for preset in args.presets:
        for px in args.sizes:
            cfg = RunConfig.from_preset(preset, data={"image_size": px})
            model, step = _ours(cfg, args.batch, device)
            n_ours = count_parameters(model)
            step()  # warm-up
            best_ours, best_theirs, n_theirs = float("inf"), float("inf"), None
            if have_diffusers:
                dmodel, dstep = _diffusers(cfg, model, args.batch, device)
                n_theirs = sum(p.numel() for p in dmodel.parameters())
                dstep()
            for _ in range(args.repeats):
                best_ours = min(best_ours, _time(step, args.steps, device))
                if have_diffusers:
                    best_theirs = min(best_theirs, _time(dstep, args.steps, device))
            ips_ours = args.batch / best_ours
            if have_diffusers:
                ips_theirs = args.batch / best_theirs
                assert abs(n_ours - n_theirs) <= 0.01 * n_theirs, (n_ours, n_theirs)
                print(f"{preset:<14}{px:>4}{n_ours:>14,}{n_theirs:>14,}{ips_ours:>12.1f}{ips_theirs:>13.1f}"
                      f"{ips_ours / ips_theirs:>7.2f}")
            else:
                print(f"{preset:<14}{px:>4}{n_ours:>14,}{'-':>14}{ips_ours:>12.1f}{'-':>13}{'-':>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
