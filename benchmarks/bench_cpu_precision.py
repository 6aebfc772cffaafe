"""CPU training and sampling speed: fp32 against bf16 autocast, channels_last and torch.compile.

With --threads 1 the rates are per second of this process's CPU time (robust on a shared
machine); with more threads, per second of wall-clock time (needs a quiet machine).

Run by hand (figures into BENCHMARKS.md with the command and `uptime`):

    python benchmarks/bench_cpu_precision.py [--threads 2] [--configs tiny:16:32 tiny:32:32 small:32:64]
        [--rounds 3] [--compile]
    python benchmarks/bench_cpu_precision.py --threads 1 --trainer 16 32 --rounds 2   # the trainer itself

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
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

# With one thread, this process's CPU time measures the work itself whatever else the machine runs
# (a shared 2-core machine); with more, wall-clock time (OpenMP threads that wait spin on the CPU).
_clock = time.perf_counter
# Steps run before the clock starts: the first bf16 steps create oneDNN primitives and the optimizer's state;
# with 2 (before Dec 1 2026 21:00) bf16's ratio read 0.05-0.2 lower than in a long run.
WARMUP_STEPS = 6


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


@contextlib.contextmanager
def _attention_for(variant: str):
    """Variant bf16_flash: the attention core in bf16, torch's flash kernel (the engine's choice before Dec 1
    2026 21:00; the engine now computes it in fp32 under CPU bf16 autocast)."""
    from ddpm_studio.engine import unet

    engine_attention = unet.attention
    if "flash" in variant:
        unet.attention = torch.nn.functional.scaled_dot_product_attention
    try:
        yield
    finally:
        unet.attention = engine_attention


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

    for _ in range(WARMUP_STEPS):  # warm-up (and compilation)
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


def trainer_rate(size: int, precision: str, steps: int, out: Path) -> float:
    """images/s of the real trainer (tiny preset, built-in set, batch 32, no previews or checkpoints): the
    median of the rates it logs every 10 steps after step 40 (wall-clock, as a user sees them)."""
    from ddpm_studio.artifacts.runs import read_metrics
    from ddpm_studio.config import RunConfig
    from ddpm_studio.training.trainer import Trainer

    run = out / f"trainer_{size}_{precision}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = RunConfig.from_preset("tiny", data={"image_size": size},
                                train=dict(steps=steps, minutes=None, precision=precision, device="cpu", log_every=10,
                                           preview_every=0, checkpoint_every=0))
    Trainer(cfg, run).run()
    rates = [r["images_per_sec"] for r in read_metrics(run) if r.get("step", 0) > 40 and "images_per_sec" in r]
    return statistics.median(rates)


def trainer_table(sizes: list[int], steps: dict[int, int], rounds: int) -> None:
    """fp32 against bf16 in the trainer itself, alternating run by run."""
    out = Path(tempfile.mkdtemp(prefix="bench_cpu_precision_"))
    for size in sizes:
        got = {"fp32": [], "bf16": []}
        for _ in range(rounds):
            for precision in got:
                got[precision].append(trainer_rate(size, precision, steps.get(size, 150), out))
        ratios = [b / f for f, b in zip(got["fp32"], got["bf16"])]
        print(f"trainer, tiny {size} px, batch 32: fp32 {', '.join(f'{r:.1f}' for r in got['fp32'])} img/s; "
              f"bf16 {', '.join(f'{r:.1f}' for r in got['bf16'])}; bf16/fp32 {', '.join(f'{r:.2f}' for r in ratios)}")
    shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["tiny:16:32", "tiny:32:32", "small:32:64"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    ap.add_argument("--trainer", nargs="*", type=int, metavar="PX",
                    help="instead: time the real trainer at these image sizes, fp32 against bf16, --rounds runs each "
                         "(400 steps at 16 px, 150 at 32 px; wall-clock, so on a quiet machine)")
    args = ap.parse_args()
    global _clock
    torch.set_num_threads(args.threads)
    if args.threads == 1:
        _clock = time.process_time
    from ddpm_studio.engine.devices import cpu_has_native_bf16

    clock = 'CPU' if args.threads == 1 else 'wall-clock'
    print(f"torch {torch.__version__}, {args.threads} thread(s) ({clock} time), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}")
    if args.trainer is not None:
        trainer_table(args.trainer or [16, 32], {16: 400, 32: 150}, args.rounds)
        return 0
    variants = ["fp32", "bf16", "bf16_flash", "fp32_cl", "bf16_cl"]
    variants += ["fp32_compile", "bf16_compile"] if args.compile else []
    for spec in args.configs:
        preset, size, batch = spec.split(":")
        size, batch = int(size), int(batch)
        steps = 20 if preset == "tiny" else 6
        best_t = {v: 0.0 for v in variants}
        best_s = {v: 0.0 for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                with _attention_for(v):
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
