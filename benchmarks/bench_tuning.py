"""Tuned timesteps on held-out noise: how much closer a few-step chain comes to a 50-step one.

Run by hand, one trained run at a time (a few minutes each on one CPU thread for the tiny preset):

    OMP_NUM_THREADS=1 python benchmarks/bench_tuning.py --run RUN_DIR [--samplers unipc,dpmpp-2m] [--steps 5]

For each sampler it tunes the timesteps with the app's own search (sampling/tuning.py, 256 chains from its
seed; without the last-step check, which gives up some of this error for closeness to the training images),
then draws --num other starting points (seeds 1000, 1001, ... per batch, never the tuning seed) and
prints the mean squared error per pixel (images in [-1, 1]) of the spacing's own steps and of the tuned ones
against a 50-step DPM-Solver++ 2M chain from the same x_T, the squared error of each pixel's standard deviation
over the images (the spread; tuning minimises the sum of the two), and the seconds the tuning took. Sample quality
against the data (a Frechet distance) is bench_samplers.py's `--variants "unipc:tuned=true"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch


def final_images(loaded, cfg, num: int, batch: int) -> torch.Tensor:
    from ddpm_studio.sampling.service import generate

    out = []
    for b, start in enumerate(range(0, num, batch)):
        last = None
        for last in generate(loaded, cfg, num_images=min(batch, num - start), seed=1000 + b):
            pass
        out.append(last.x_t.float())
    return torch.cat(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--samplers", default="unipc,dpmpp-2m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ddpm_studio.artifacts.loading import load_model
    from ddpm_studio.config import SamplingConfig
    from ddpm_studio.sampling.tuning import tune_timesteps, tuned

    loaded = load_model(args.run, device="cpu")
    reference = final_images(loaded, SamplingConfig(sampler="dpmpp-2m", steps=50), args.num, args.batch)
    rows = []
    for sampler in filter(None, args.samplers.split(",")):
        cfg = SamplingConfig(sampler=sampler, steps=args.steps)
        t0 = time.process_time()
        result = tune_timesteps(loaded, cfg)
        cpu = time.process_time() - t0
        errors, spread = {}, {}
        for name, c in (("own", cfg), ("tuned", tuned(dataclasses.replace(cfg), result))):
            x = final_images(loaded, c, args.num, args.batch)
            errors[name] = float((x - reference).square().mean())
            spread[name] = float((x.std(0) - reference.std(0)).square().mean())
        rows.append(dict(sampler=sampler, steps=args.steps, start=list(result.start), tuned=list(result.timesteps),
                         held_out_own=errors["own"], held_out_tuned=errors["tuned"],
                         spread_own=spread["own"], spread_tuned=spread["tuned"], tuning_error=result.error,
                         tuning_error_start=result.error_start, tuning_cpu_sec=cpu, chains=result.chains))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.run} (step {loaded.step:,}), {args.num} held-out chains, error against 2M-50")
    print("| sampler | own steps | tuned steps | squared error, own | tuned | less | spread error, own | tuned "
          "| tuning CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']}-{r['steps']} | {', '.join(map(str, r['start']))} | {', '.join(map(str, r['tuned']))} "
              f"| {r['held_out_own']:.2e} | {r['held_out_tuned']:.2e} | "
              f"{1 - r['held_out_tuned'] / r['held_out_own']:.0%} | {r['spread_own']:.2e} | {r['spread_tuned']:.2e} "
              f"| {r['tuning_cpu_sec']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
