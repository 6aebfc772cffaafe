"""Training and sampling throughput on a CUDA GPU: our U-Net vs the same network as diffusers' UNet2DModel.

Run by hand on a machine with CUDA:
    python benchmarks/bench_gpu.py [--presets tiny small ddpm-cifar10] [--batches 128 256] [--steps 20]
        [--precisions fp32 bf16 fp16] [--variants eager cl compile compile-cl] [--no-diffusers]
        [--jsonl FILE] [--sample-num 256] [--cudnn-benchmark]

One training step is what the Trainer does: t and noise drawn on the GPU, the loss under
``engine.devices.autocast`` (bf16 or fp16 autocast; fp32 keeps PyTorch's defaults, i.e. TF32 for
convolutions), backward through a GradScaler when fp16, fused AdamW. Both networks get the same
weights and the same step. Variants: ``eager``; ``cl`` = channels_last weights and inputs;
``compile`` = ``torch.compile(network)`` (default mode; the loss stays eager, as in the Trainer);
``compile-cl`` both. Timing: 3 warm-up steps (their time is printed for compiled variants: it holds
the compilation), then --steps steps between two ``torch.cuda.synchronize()``; the best of --repeats.
Also prints peak GPU memory per step and the sampling throughput of our network: DDIM-50 and
DPM-Solver++(2M)-20 (the default sampler), and DDPM-T with --ddpm.

``--device cpu`` runs the same code on the CPU (tiny sizes) to check this script without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from bench_train_throughput import _Sample, diffusers_twin  # same folder

VARIANTS = ("eager", "cl", "compile", "compile-cl")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def make_step(model, diffusion, batch, spec, precision, dev, channels_last=False):
    from ddpm_studio.engine.devices import autocast, uses_grad_scaler

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    scaler = torch.amp.GradScaler(dev.type, enabled=uses_grad_scaler(dev, precision))
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.rand(batch, spec.in_channels, spec.image_size, spec.image_size, device=dev, generator=gen) * 2 - 1
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def step():
        with autocast(dev, precision):
            loss, _ = diffusion.training_losses(model, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss.float().mean()).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def timed(step, n, repeats, dev):
    """(best seconds for n steps, seconds of the 3 warm-up steps)."""
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync(dev)
    warm = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        sync(dev)
        best = min(best, time.perf_counter() - t0)
    assert torch.isfinite(loss).all(), "non-finite loss"
    return best, warm


@torch.no_grad()
def sampling_rate(model, diffusion, spec, num, sampler, steps, dev, precision="fp32"):
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.engine.devices import autocast

    shape = (num, spec.in_channels, spec.image_size, spec.image_size)
    sampling = SamplingConfig(sampler=sampler, steps=steps)
    gen = torch.Generator(device=dev).manual_seed(0)
    sync(dev)
    t0 = time.perf_counter()
    with autocast(dev, precision):
        x = diffusion.sample(model, shape, sampling, generator=gen, device=dev)
    sync(dev)
    assert x is not None and torch.isfinite(x).all()
    return num / (time.perf_counter() - t0)


def peak_gib(dev):
    return torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def prepare(net, variant):
    """The network for one variant: a channels_last copy of the weights and/or a compiled wrapper
    (the caller's module is left as it is)."""
    import copy

    cl = variant.endswith("cl")
    net = copy.deepcopy(net)
    if cl:
        net = net.to(memory_format=torch.channels_last)
    if variant.startswith("compile"):
        net = torch.compile(net)
    return net, cl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "ddpm-cifar10"])
    ap.add_argument("--batches", nargs="+", type=int, default=[128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--variants", nargs="+", default=["eager"], choices=VARIANTS)
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--sample-num", type=int, default=256, help="images per sampling measurement (0: none)")
    ap.add_argument("--ddpm", action="store_true", help="also time DDPM with all T steps")
    ap.add_argument("--jsonl", default=None, help="append one JSON line per measurement to this file")
    ap.add_argument("--device", default="cuda", help="cuda (what this measures) or cpu (to check the script)")
    ap.add_argument("--image-size", type=int, default=None, help="override the presets' image size")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms for each shape)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1

    from ddpm_studio.config import RunConfig
    from ddpm_studio.engine.diffusion import GaussianDiffusion
    from ddpm_studio.engine.unet import build_model, count_parameters

    try:
        import diffusers
        have_diffusers = not args.no_diffusers
        dv = diffusers.__version__
    except ImportError:
        have_diffusers, dv = False, "not installed"
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, diffusers {dv}, {args.steps} timed steps, best of {args.repeats}, "
          f"cudnn.benchmark {args.cudnn_benchmark}")
    print(f"{'preset':<13}{'px':>3}{'params':>11}{'batch':>6}{'prec':>5}{'variant':>11}{'ours img/s':>11}"
          f"{'diff img/s':>11}{'ratio':>6}{'ours GiB':>9}{'diff GiB':>9}{'warm-up s':>14}")
    log = open(args.jsonl, "a") if args.jsonl else contextlib.nullcontext()
    with log:
        def record(**row):
            if args.jsonl:
                log.write(json.dumps(row) + "\n")
                log.flush()

        for preset in args.presets:
            data = {"channels": "3"}
            if args.image_size:
                data["image_size"] = args.image_size
            cfg = RunConfig.from_preset(preset, data=data)
            torch.manual_seed(0)
            ours = build_model(cfg.model).to(dev)
            spec = ours.spec
            diffusion = GaussianDiffusion.from_config(cfg.diffusion)
            twin = None
            if have_diffusers:
                twin = diffusers_twin(spec)
                twin.load_state_dict(ours.state_dict())
                twin = _Sample(twin).to(dev)
            params = count_parameters(ours)
            for batch in args.batches:
                for precision in args.precisions:
                    for variant in args.variants:
                        res = {}
                        for who, base in (("ours", ours), ("diff", twin)):
                            if base is None:
                                continue
                            try:
                                net, cl = prepare(base, variant)
                                reset_peak(dev)
                                sec, warm = timed(make_step(net, diffusion, batch, spec, precision, dev, cl),
                                                  args.steps, args.repeats, dev)
                                res[who] = (batch * args.steps / sec, peak_gib(dev), warm)
                            except Exception as exc:  # a variant that fails (e.g. compile) must not end the run
                                print(f"  {who} {preset} b{batch} {precision} {variant}: FAILED "
                                      f"{type(exc).__name__}: {str(exc)[:300]}", flush=True)
                            finally:
                                net = None
                                torch._dynamo.reset()
                        if "ours" not in res:
                            continue
                        o, d = res["ours"], res.get("diff")
                        dtxt = f"{d[0]:>11.0f}{o[0] / d[0]:>6.2f}" if d else f"{'-':>11}{'-':>6}"
                        warm = f"{o[2]:.0f}/{d[2]:.0f}" if d else f"{o[2]:.0f}"
                        print(f"{preset:<13}{spec.image_size:>3}{params:>11,}{batch:>6}{precision:>5}{variant:>11}"
                              f"{o[0]:>11.0f}{dtxt}{o[1]:>9.2f}{(d[1] if d else float('nan')):>9.2f}{warm:>14}",
                              flush=True)
                        record(kind="train", preset=preset, px=spec.image_size, params=params, batch=batch,
                               precision=precision, variant=variant, ours=o[0], diffusers=d[0] if d else None,
                               ours_gib=o[1], diffusers_gib=d[1] if d else None, warm_ours=o[2],
                               warm_diffusers=d[2] if d else None, device=name, torch=torch.__version__,
                               cudnn_benchmark=args.cudnn_benchmark)
            if args.sample_num:
                ours.eval()
                rates = []
                chains = [("ddim", 50), ("dpmpp-2m", 20)] + ([("ddpm", diffusion.T)] if args.ddpm else [])
                for sampler, steps in chains:
                    for precision in ("fp32", "bf16"):
                        rate = sampling_rate(ours, diffusion, spec, args.sample_num, sampler, steps, dev, precision)
                        rates.append(f"{sampler}-{steps} {precision} {rate:,.0f}")
                        record(kind="sample", preset=preset, px=spec.image_size, num=args.sample_num,
                               sampler=sampler, steps=steps, precision=precision, images_per_s=rate, device=name)
                print(f"{preset:<13} sampling {args.sample_num} images (img/s): {', '.join(rates)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
