"""Training and sampling throughput on a CUDA GPU: our U-Net vs the same network as diffusers' UNet2DModel.

Run by hand on a machine with CUDA:
    python benchmarks/bench_gpu.py [--presets tiny small ddpm-cifar10] [--batch 128] [--steps 20]
        [--precisions fp32 bf16 fp16] [--no-diffusers]

One training step is what the Trainer does: t and noise drawn on the GPU, the loss under
``engine.devices.autocast`` (bf16 or fp16 autocast; fp32 keeps PyTorch's defaults, i.e. TF32 for
convolutions), backward through a GradScaler when fp16, fused AdamW. Both networks get the same
weights and the same step. Timing: 3 warm-up steps, then --steps steps between two
``torch.cuda.synchronize()``; the best of --repeats. Also prints peak GPU memory per step and
DDIM-50 / DDPM-1000 sampling throughput of our network (fp32).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_train_throughput import _Sample, diffusers_twin  # same folder


def make_step(model, diffusion, batch, spec, precision):
    from ddpm_studio.engine.devices import autocast, uses_grad_scaler

    dev = torch.device("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=uses_grad_scaler(dev, precision))
    gen = torch.Generator(device=dev).manual_seed(0)
    x0 = torch.rand(batch, spec.in_channels, spec.image_size, spec.image_size, device=dev, generator=gen) * 2 - 1

    def step():
        with autocast(dev, precision):
            loss, _ = diffusion.training_losses(model, x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss.float().mean()).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def timed(step, n, repeats):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            loss = step()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    assert torch.isfinite(loss).all(), "non-finite loss"
    return best


@torch.no_grad()
def sampling_rate(model, diffusion, spec, num, steps):
    shape = (num, spec.in_channels, spec.image_size, spec.image_size)
    gen = torch.Generator(device="cuda").manual_seed(0)
    run = (lambda: diffusion.ddim_sample_loop_progressive(model, shape, steps=steps,
                                                          generator=gen)) if steps < diffusion.T \
        else (lambda: diffusion.p_sample_loop_progressive(model, shape, generator=gen))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    last = None
    for st in run():
        last = st.x_t
    torch.cuda.synchronize()
    assert torch.isfinite(last).all()
    return num / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "ddpm-cifar10"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--sample-num", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available():
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
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, diffusers {dv}, batch {args.batch}, "
          f"{args.steps} timed steps, best of {args.repeats}")
    print(f"{'preset':<14}{'px':>4}{'params':>12}{'prec':>6}{'ours img/s':>12}{'diff img/s':>12}{'ratio':>7}"
          f"{'ours GiB':>10}{'diff GiB':>10}")
    for preset in args.presets:
        cfg = RunConfig.from_preset(preset, data={"channels": "3"})
        torch.manual_seed(0)
        ours = build_model(cfg.model).cuda()
        spec = ours.spec
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        twin = None
        if have_diffusers:
            twin = diffusers_twin(spec)
            twin.load_state_dict(ours.state_dict())
            twin = _Sample(twin).cuda()
        for precision in args.precisions:
            res = {}
            for name, net in (("ours", ours), ("diff", twin)):
                if net is None:
                    continue
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                sec = timed(make_step(net, diffusion, args.batch, spec, precision), args.steps, args.repeats)
                res[name] = (args.batch * args.steps / sec, torch.cuda.max_memory_allocated() / 2**30)
            o = res["ours"]
            d = res.get("diff")
            dtxt = f"{d[0]:>12.0f}{o[0] / d[0]:>7.2f}" if d else f"{'-':>12}{'-':>7}"
            print(f"{preset:<14}{spec.image_size:>4}{count_parameters(ours):>12,}{precision:>6}{o[0]:>12.0f}{dtxt}"
                  f"{o[1]:>10.2f}{(d[1] if d else float('nan')):>10.2f}", flush=True)
        ours.eval()
        ddim = sampling_rate(ours, diffusion, spec, args.sample_num, 50)
        ddpm = sampling_rate(ours, diffusion, spec, args.sample_num, diffusion.T)
        print(f"{preset:<14} sampling {args.sample_num} images, fp32: DDIM-50 {ddim:,.0f} img/s, "
              f"DDPM-{diffusion.T} {ddpm:,.1f} img/s ({ddim / ddpm:.1f}x)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
