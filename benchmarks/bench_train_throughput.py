"""Network training throughput: our U-Net vs the same network built as diffusers' UNet2DModel.

Run by hand:
    python benchmarks/bench_train_throughput.py [--presets tiny small ddpm-cifar10] [--sizes 16 32]
        [--batch 64] [--steps 3] [--cifar-steps 1] [--repeats 2] [--threads N] [--channels-last]
        [--precision fp32|bf16]

One training step = t and noise from a seeded generator, GaussianDiffusion.training_losses (L_simple),
backward, AdamW(foreach=True) step -- identical for both networks, so the ratio measures the networks.
The diffusers twin gets our weights (load_state_dict, key for key), so both compute the same function.
Both run in one process, alternating, and the best of --repeats is printed (the machine may be shared:
say so when recording figures). Goal on CPU: ours >= 1.5x diffusers' images/s.
"""

from __future__ import annotations

import argparse
import time

import torch


def diffusers_twin(spec):
    """UNet2DModel with the same blocks as our UNet (see engine/unet.py's docstring)."""
    import diffusers

    L = len(spec.channel_mult)
    att = spec.attention_resolutions
    return diffusers.UNet2DModel(
        sample_size=spec.image_size, in_channels=spec.in_channels, out_channels=spec.out_channels,
        block_out_channels=spec.block_out_channels, layers_per_block=spec.num_res_blocks, dropout=spec.dropout,
        down_block_types=tuple("AttnDownBlock2D" if spec.image_size // 2**i in att else "DownBlock2D"
                               for i in range(L)),
        up_block_types=tuple("AttnUpBlock2D" if spec.image_size // 2 ** (L - 1 - i) in att else "UpBlock2D"
                             for i in range(L)),
        attention_head_dim=spec.attention_head_dim or (spec.block_out_channels[0] // spec.num_heads
                                                       if spec.num_heads > 1 else None),
        norm_eps=1e-6, norm_num_groups=spec.norm_groups, downsample_padding=spec.downsample_padding,
        flip_sin_to_cos=spec.flip_sin_to_cos, freq_shift=spec.freq_shift)


class _Sample(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


def make_step(model, diffusion, batch, cfg, channels_last, precision="fp32"):
    from ddpm_studio.engine.devices import autocast

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    gen = torch.Generator()
    x0 = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    k = [0]

    def step():
        gen.manual_seed(k[0])
        k[0] += 1
        with autocast("cpu", precision):
            loss, _ = diffusion.training_losses(model, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.float().mean().backward()
        opt.step()

    return step


def timed(step, n):
    step()  # warm-up: oneDNN primitives, allocator
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "ddpm-cifar10"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 32])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--cifar-steps", type=int, default=1, help="timed steps for ddpm-cifar10")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true", help="run our network in channels_last")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: both networks under the same CPU bf16 autocast (engine.devices.autocast)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ddpm_studio.config import RunConfig
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model, count_parameters

    try:
        import diffusers  # noqa: F401
        have_diffusers = not args.no_diffusers
    except ImportError:
        have_diffusers = False
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"channels_last={args.channels_last}, precision {args.precision}")
    print(f"{'preset':<14}{'px':>4}{'params ours':>14}{'params diff':>14}{'ours img/s':>12}{'diff img/s':>12}"
          f"{'ratio':>7}{'ours img/cpu-s':>16}{'diff img/cpu-s':>16}")
    for preset in args.presets:
        for size in args.sizes:
            cfg = RunConfig.from_preset(preset, data={"image_size": size, "channels": "3"})
            torch.manual_seed(0)
            ours = build_model(cfg.model)
            if args.channels_last:
                ours = ours.to(memory_format=torch.channels_last)
            diffusion = GaussianDiffusion.from_config(cfg.diffusion)
            n = args.cifar_steps if preset == "ddpm-cifar10" else args.steps
            runs = {"ours": make_step(ours, diffusion, args.batch, cfg.model, args.channels_last, args.precision)}
            n_diff = None
            if have_diffusers:
                twin = diffusers_twin(ours.spec)
                twin.load_state_dict(build_model(cfg.model).state_dict() if args.channels_last else ours.state_dict())
                n_diff = count_parameters(twin)
                runs["diff"] = make_step(_Sample(twin), diffusion, args.batch, cfg.model, False, args.precision)
            best = {name: (float("inf"), float("inf")) for name in runs}
            for _ in range(args.repeats):
                for name, step in runs.items():
                    wall, cpu = timed(step, n)
                    best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            ips = {name: args.batch * n / w for name, (w, _) in best.items()}
            ipc = {name: args.batch * n / c for name, (_, c) in best.items()}
            dash = "-"
            diff_ips = (f"{ips['diff']:>12.1f}{ips['ours'] / ips['diff']:>7.2f}" if "diff" in ips
                        else f"{dash:>12}{dash:>7}")
            diff_ipc = f"{ipc['diff']:>16.1f}" if "diff" in ipc else f"{'-':>16}"
            print(f"{preset:<14}{size:>4}{count_parameters(ours):>14,}{(n_diff or 0):>14,}"
                  f"{ips['ours']:>12.1f}{diff_ips}{ipc['ours']:>16.1f}{diff_ipc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
