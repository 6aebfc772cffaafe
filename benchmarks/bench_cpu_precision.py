"""CPU training and sampling speed: fp32 against bf16 autocast, channels_last and torch.compile.

With --threads 1 the rates are per second of this process's CPU time (robust on a shared
machine); with more threads, per second of wall-clock time (needs a quiet machine).

Run by hand (figures into BENCHMARKS.md with the command and `uptime`):

    python benchmarks/bench_cpu_precision.py [--threads 2] [--configs tiny:16:32 tiny:32:32 small:32:64]
        [--rounds 3] [--compile]

For each preset:size:batch, every variant is timed in turn, round after round (so a change in the
machine's load hits all of them alike), and the best round of each is printed with its ratio to
fp32. A training step is the trainer's own: GaussianDiffusion.training_losses under
``engine.devices.autocast``, backward, the trainer's AdamW (``make_adamw``: fused on a CPU).
Sampling is one DDIM step (a forward pass under inference_mode) on a batch of 16. The CPU's bf16
support is printed first: where it is not native (no AVX-512 BF16 / AMX), bf16 is emulated and much
slower.
"""

from __future__ import annotations

import argparse
import time

import torch

# With one thread, this process's CPU time measures the work itself whatever else the machine runs
# (a shared 2-core machine); with more, wall-clock time (OpenMP threads that wait spin on the CPU).
_clock = time.perf_counter


def _setup(preset: str, size: int, batch: int, variant: str):
    from ddpm_studio.config import RunConfig
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model

    cfg = RunConfig.from_preset(preset, data={"image_size": size})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = torch.randn(batch, cfg.model.in_channels, size, size)
    if "cl" in variant:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model, dynamic=False) if "compile" in variant else model
    return cfg, model, net, GaussianDiffusion.from_config(cfg.diffusion), x


def train_rate(preset, size, batch, variant, steps):
    from ddpm_studio.engine.devices import autocast
    from ddpm_studio.training.trainer import make_adamw

    cfg, model, net, diffusion, x = _setup(preset, size, batch, variant)
    opt = make_adamw(model.parameters(), torch.device("cpu"), lr=1e-4, weight_decay=0.0)
    precision = "bf16" if variant.startswith("bf16") else "fp32"
    g = torch.Generator().manual_seed(0)

    def step():
        with autocast("cpu", precision):
            loss, _ = diffusion.training_losses(net, x, generator=g)
        loss.float().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        step()
    t = _clock()
    for _ in range(steps):
        step()
    return steps * batch / (_clock() - t)


def sample_rate(preset, size, variant, steps):
    from ddpm_studio.engine.devices import autocast

    cfg, model, net, diffusion, x = _setup(preset, size, 16, variant)
    precision = "bf16" if variant.startswith("bf16") else "fp32"
    tt = torch.full((16,), 500, dtype=torch.long)
    with torch.inference_mode():
        for _ in range(2):
            with autocast("cpu", precision):
                net(x, tt)
        t = _clock()
        for _ in range(steps):
            with autocast("cpu", precision):
                net(x, tt).float()
    return steps / (_clock() - t)  # network evaluations (of 16 images) per second


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["tiny:16:32", "tiny:32:32", "small:32:64"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    args = ap.parse_args()
    global _clock
    torch.set_num_threads(args.threads)
    if args.threads == 1:
        _clock = time.process_time
    from ddpm_studio.engine.devices import cpu_has_native_bf16

    clock = 'CPU' if args.threads == 1 else 'wall-clock'
    print(f"torch {torch.__version__}, {args.threads} thread(s) ({clock} time), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}")
    variants = ["fp32", "bf16", "fp32_cl", "bf16_cl"] + (["fp32_compile", "bf16_compile"] if args.compile else [])
    for spec in args.configs:
        preset, size, batch = spec.split(":")
        size, batch = int(size), int(batch)
        steps = 6 if preset == "tiny" else 3
        best_t = {v: 0.0 for v in variants}
        best_s = {v: 0.0 for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                best_t[v] = max(best_t[v], train_rate(preset, size, batch, v, steps))
                best_s[v] = max(best_s[v], sample_rate(preset, size, v, 3 * steps))
        print(f"\n{preset} {size} px, batch {batch} (best of {args.rounds} rounds)")
        print("| variant | train images/s | x fp32 | sampling evals/s (16 images) | x fp32 |")
        print("|---|---|---|---|---|")
        for v in variants:
            print(f"| {v} | {best_t[v]:.1f} | {best_t[v] / best_t['fp32']:.2f} | {best_s[v]:.2f} | "
                  f"{best_s[v] / best_s['fp32']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
