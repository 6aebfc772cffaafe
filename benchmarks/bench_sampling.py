"""Sampling throughput: DDPM with all T=1000 steps vs DDIM with 50, ours and diffusers'.

Run by hand:  python benchmarks/bench_sampling.py [--preset tiny] [--size 16] [--num 8]
              [--ddim-steps 50] [--threads N] [--device cpu|cuda]

Ours: sampling.service.generate (the engine's ancestral and DDIM generators, EMA-free random
weights). diffusers: the same network as UNet2DModel (built from our network's diffusers config)
with DDPMScheduler / DDIMScheduler in the loop their pipelines use. Prints seconds per chain and
per image, and the DDPM/DDIM time ratio (goal: >= 18x for 1000 vs 50 steps).
"""

from __future__ import annotations

import argparse
import time

import torch


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--num", type=int, default=8, help="images per chain")
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from ddpm_studio.config import RunConfig, SamplingConfig
    from ddpm_studio.engine.unet import build_model, count_parameters
    from ddpm_studio.artifacts.loaded import build_loaded
    from ddpm_studio.sampling.service import generate

    cfg = RunConfig.from_preset(args.preset, data={"image_size": args.size})
    torch.manual_seed(0)
    net = build_model(cfg.model)
    loaded = build_loaded(cfg, net.state_dict(), step=0, source="random", device=device)
    T = loaded.diffusion.T
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s); preset {args.preset} "
          f"at {args.size} px ({count_parameters(net):,} parameters), {args.num} images, T={T}")

    def drain(sampling):
        for _ in generate(loaded, sampling):
            pass

    ddpm = SamplingConfig(sampler="ddpm", num_images=args.num)
    ddim = SamplingConfig(sampler="ddim", steps=args.ddim_steps, num_images=args.num)
    drain(SamplingConfig(sampler="ddim", steps=2, num_images=args.num))  # warm-up
    t_ddim = _timed(lambda: drain(ddim), device)
    t_ddpm = _timed(lambda: drain(ddpm), device)
    rows = [("ours", t_ddpm, t_ddim)]

    try:
        import diffusers
    except ImportError:
        diffusers = None
    if diffusers is not None:
        from ddpm_studio.artifacts.diffusers_format import unet_config_for

        conf = {k: v for k, v in unet_config_for(net.spec).items() if not k.startswith("_")}
        unet = diffusers.UNet2DModel(**conf).to(device).eval()
        shape = (args.num, cfg.model.in_channels, args.size, args.size)

        @torch.inference_mode()
        def loop(scheduler, steps):
            scheduler.set_timesteps(steps)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(device)
            for t in scheduler.timesteps:
                eps = unet(x, t).sample
                x = scheduler.step(eps, t, x, generator=g).prev_sample
            return x

        ddpm_s = diffusers.DDPMScheduler(num_train_timesteps=T)
        ddim_s = diffusers.DDIMScheduler(num_train_timesteps=T)
        loop(ddim_s, 2)  # warm-up
        d_ddim = _timed(lambda: loop(ddim_s, args.ddim_steps), device)
        d_ddpm = _timed(lambda: loop(ddpm_s, T), device)
        rows.append(("diffusers", d_ddpm, d_ddim))

    print(f"{'':<10}{'DDPM ' + str(T) + ' s':>14}{'DDIM ' + str(args.ddim_steps) + ' s':>13}{'DDPM/DDIM':>11}"
          f"{'DDPM s/img':>12}{'DDIM s/img':>12}")
    for name, a, b in rows:
        print(f"{name:<10}{a:>14.2f}{b:>13.3f}{a / b:>11.1f}{a / args.num:>12.3f}{b / args.num:>12.4f}")
    if len(rows) == 2:
        print(f"ours vs diffusers: DDPM {rows[1][1] / rows[0][1]:.2f}x, DDIM {rows[1][2] / rows[0][2]:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
