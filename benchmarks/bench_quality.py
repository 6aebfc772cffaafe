"""Sample quality at a fixed CPU budget: which defaults learn fastest on small data.

Run by hand (one config per call; figures are appended as one JSON line to OUT/results.jsonl):

    OMP_NUM_THREADS=1 python benchmarks/bench_quality.py --data shapes --cpu-sec 240 \
        --set train.lr=2e-3 --set train.batch_size=16 --tag lr2e-3_b16 --out /tmp/q
    OMP_NUM_THREADS=1 python benchmarks/bench_quality.py --data glyphs --recipe diffusers ...
    python benchmarks/bench_quality.py --summary --out /tmp/q

Training: ``--recipe ours`` is the real Trainer on ``RunConfig.from_preset(--preset)`` plus the
``--set section.field=value`` overrides; ``--recipe diffusers`` re-implements diffusers'
examples/unconditional_image_generation/train_unconditional.py loop (UNet2DModel built from the
same network as ours, DDPMScheduler linear T=1000, AdamW lr 1e-4 betas (0.95, 0.999) wd 1e-6,
cosine schedule with 500 warm-up steps over 100 epochs, EMAModel 0.9999 inv_gamma 1 power 3/4,
batch 16, grad clip 1). Either stops when this process has used --cpu-sec seconds of CPU time
(time.process_time, after the data is loaded), with torch.set_num_threads(--threads).

Scoring (no downloads): --num DDIM-50 samples of the EMA weights, against the training images:
- ``fd_feat``: Frechet distance on 64 features of a fixed random-weight conv net (seed 0);
  ``fd_pix``: Frechet distance on 4x4-average-pooled pixels. ``*_floor``: the same distance between
  two real subsets of the same size (what a perfect model would get at this sample count).
- ``confident``: fraction of samples a small CNN trained on the dataset's labels (shapes:
  index.json; glyphs: the digit drawn) classifies with probability > 0.9; ``entropy``: the
  normalised entropy of the predicted-class histogram (1 = classes evenly covered). The
  classifier's held-out accuracy is printed with it.
- ``nn_rmse``: median RMSE (0-1 pixel scale) from each sample to its nearest training image;
  ``nn_rmse_real``: the same for held-out real images (a sample much closer than real images are
  to each other is a memorised copy).

Datasets: ``shapes`` = the built-in set (coloured shapes, 4,096); ``glyphs`` = 3,000 grayscale
digits drawn by this script with Pillow's default font at random sizes, positions and grey levels
(written once into OUT/glyphs/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench_train_throughput import _Sample  # diffusers UNet2DModel output -> plain tensor (same folder)


# -- datasets ---------------------------------------------------------------------------------


def make_glyphs(folder: Path, count: int = 3000, seed: int = 7) -> None:
    """Grayscale digits 0-9, file name d<label>_<index>.png, 32 px."""
    from PIL import Image, ImageDraw, ImageFont

    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fonts = {s: ImageFont.load_default(size=s) for s in range(14, 29)}
    for i in range(count):
        label = int(rng.integers(10))
        bg = int(rng.integers(0, 256))
        fg = (bg + int(rng.integers(110, 146))) % 256 if bg < 110 else bg - int(rng.integers(110, bg + 1))
        im = Image.new("L", (32, 32), bg)
        d = ImageDraw.Draw(im)
        font = fonts[int(rng.integers(14, 29))]
        x0, y0, x1, y1 = d.textbbox((0, 0), str(label), font=font)
        w, h = x1 - x0, y1 - y0
        x = int(rng.integers(0, max(1, 32 - w + 1))) - x0
        y = int(rng.integers(0, max(1, 32 - h + 1))) - y0
        d.text((x, y), str(label), fill=fg, font=font)
        im.save(folder / f"d{label}_{i:05d}.png")


def load_dataset(name: str, size: int, out: Path):
    """(ImageSet, labels (N,), class names, DataConfig overrides)."""
    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images

    if name == "shapes":
        from ddpm_studio.data.builtin import builtin_dir

        index = json.loads((builtin_dir() / "index.json").read_text())
        data = dict(folder=None, image_size=size)
        imgs = load_images(DataConfig(**data))
        return imgs, np.asarray(index["labels"]), index["shapes"], data
    folder = out / "glyphs"
    make_glyphs(folder)
    data = dict(folder=str(folder), image_size=size, flip=False)  # mirrored digits are not digits
    imgs = load_images(DataConfig(**data))
    labels = np.asarray([int(Path(p).name[1]) for p in imgs.paths])
    return imgs, labels, [str(i) for i in range(10)], data


def to_tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, C, H, W) in [-1, 1]


# -- training ---------------------------------------------------------------------------------


def parse_sets(items: list[str]) -> dict[str, dict]:
    sections: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        if isinstance(v, list):
            v = tuple(v)
        sections.setdefault(section, {})[name] = v
    return sections


def budget_clock(args):
    """What the training budget is counted in: this process's CPU time (default; robust on a shared
    machine) or wall-clock time (``args.clock == "wall"``, the way a user trains)."""
    return time.perf_counter if getattr(args, "clock", "cpu") == "wall" else time.process_time


def _at_milestone(args, budget: float, clock, step: int, batch: int, snapshot) -> float:
    """Hand ``args.on_milestone`` the model as it is after ``budget`` seconds of training; returns the
    clock time that took, which the caller leaves out of the training budget."""
    t = clock()
    model, diffusion = snapshot()
    args.on_milestone(budget, model.eval(), diffusion, dict(steps=step, images_seen=step * batch,
                                                            cpu_sec=round(budget, 1)))
    return clock() - t


def _model_and_diffusion(loaded):
    return loaded.model, loaded.diffusion


def train_ours(args, imgs, data_overrides, run_dir: Path):
    from ddpm_studio.config import RunConfig
    from ddpm_studio.training.events import StepMetrics, TrainStarted
    from ddpm_studio.training.trainer import TrainControl, Trainer

    sets = parse_sets(args.set)
    sets["data"] = {**data_overrides, **sets.get("data", {})}
    sets["train"] = {**dict(steps=10_000_000, preview_every=0, checkpoint_every=0, checkpoint_minutes=0.0,
                            log_every=5, device=args.device, seed=args.seed), **sets.get("train", {})}
    cfg = RunConfig.from_preset(args.preset, **sets)
    if args.images:  # a budget in images seen instead of CPU seconds
        cfg.train.steps = math.ceil(args.images / cfg.train.batch_size)
    elif cfg.train.minutes is None and not getattr(args, "milestones", None):
        # the trainer knows the budget, as for a user's `--minutes`, so that train.lr_cooldown can end on it (its own
        # clock is wall-clock time: on a core of its own that is this process's CPU time; milestones' scoring would
        # count on that clock, so runs with milestones cool down on neither)
        cfg.train.minutes = args.cpu_sec / 60.0
    control = TrainControl()
    state = {"t0": None, "last": None}

    clock = budget_clock(args)

    milestones = sorted(m for m in getattr(args, "milestones", None) or () if m < args.cpu_sec)

    def on_event(ev):
        if isinstance(ev, TrainStarted):
            state["t0"] = clock()
        elif isinstance(ev, StepMetrics):
            state["last"] = ev
            if milestones and clock() - state["t0"] >= milestones[0]:
                state["t0"] += _at_milestone(args, milestones.pop(0), clock, ev.step, cfg.train.batch_size,
                                             lambda: _model_and_diffusion(trainer.snapshot()))
            if not args.images and clock() - state["t0"] >= args.cpu_sec:
                control.stop()

    if run_dir.exists():  # a fresh run every time (this script's own scratch folder)
        import shutil

        shutil.rmtree(run_dir)
    trainer = Trainer(cfg, run_dir, images=imgs)
    t_wall = time.time()
    fin = trainer.run(control, on_event)
    wall = time.time() - t_wall
    cpu = clock() - state["t0"]
    loaded = trainer.snapshot()
    info = dict(steps=fin.step, images_seen=fin.step * cfg.train.batch_size, cpu_sec=round(cpu, 1),
                wall_sec=round(wall, 1), loss_smooth=round(float(state["last"].loss_smooth), 4),
                config={s: getattr(cfg, s).__dict__ for s in ("model", "diffusion", "data", "train")})
    return loaded.model.eval(), loaded.diffusion, cfg, info


def train_diffusers(args, imgs, data_overrides):
    """A faithful short copy of train_unconditional.py's loop (see the module docstring)."""
    import diffusers
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ddpm_studio.config import RunConfig
    from ddpm_studio.data.loader import make_loader
    from ddpm_studio.engine.unet import build_model
    from ddpm_studio.artifacts.diffusers_format import unet_config_for

    cfg = RunConfig.from_preset(args.preset, data=data_overrides, **{k: v for k, v in parse_sets(args.set).items()
                                                                    if k == "model"})
    cfg.model.in_channels = imgs.channels
    cfg.model.patch_size = 1  # UNet2DModel has no patch input: diffusers' recipe trains the same network unpatched
    spec = build_model(cfg.model).spec
    conf = {k: v for k, v in unet_config_for(spec).items() if not k.startswith("_")}
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = diffusers.UNet2DModel(**conf).to(device)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    batch = 16
    lr = float(getattr(args, "diffusers_lr", 1e-4))  # the script's default learning rate is 1e-4
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    total = math.ceil(len(imgs) / batch) * 100  # 100 epochs, the script's default
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=500, num_training_steps=total)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    # the script flips only with --random_flip (off by default)
    loader = make_loader(imgs, batch, flip=data_overrides.get("flip", False), seed=args.seed)
    milestones = sorted(m for m in getattr(args, "milestones", None) or () if m < args.cpu_sec)
    clock = budget_clock(args)
    t0, t_wall, step = clock(), time.time(), 0
    losses = []
    for x0 in loader.batches(0):
        x0 = x0.to(device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device).long()
        x_t = sched.add_noise(x0, noise, t)
        model.train()
        loss = F.mse_loss(model(x_t, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(model.parameters())
        step += 1
        losses.append(loss.detach())
        if milestones and clock() - t0 >= milestones[0]:
            t0 += _at_milestone(args, milestones.pop(0), clock, step, batch, lambda: ema_snapshot(model, ema, cfg))
        if (step * batch >= args.images) if args.images else (clock() - t0 >= args.cpu_sec):
            break
    cpu, wall = clock() - t0, time.time() - t_wall
    sampler, diffusion = ema_snapshot(model, ema, cfg)
    info = dict(steps=step, images_seen=step * batch, cpu_sec=round(cpu, 1), wall_sec=round(wall, 1),
                loss_smooth=round(float(torch.stack(losses[-100:]).float().mean()), 4),
                parameters=sum(p.numel() for p in model.parameters()),
                config=dict(recipe="diffusers train_unconditional", lr=lr, network=conf))
    return sampler, diffusion, cfg, info


def ema_snapshot(model, ema, cfg):
    """The EMA weights of diffusers' recipe as a sampling model (a copy), and its diffusion."""
    import copy

    from ddpm_studio.engine.diffusion import GaussianDiffusion

    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    cfg.diffusion.schedule, cfg.diffusion.prediction, cfg.diffusion.loss_weighting = "linear", "epsilon", "none"
    return _Sample(ema_model.cpu()).eval(), GaussianDiffusion.from_config(cfg.diffusion)


# -- scoring ----------------------------------------------------------------------------------


def _feature_net(channels: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    layers, c = [], channels
    for width in (32, 64, 64):
        conv = torch.nn.Conv2d(c, width, 3, padding=1)
        torch.nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (9 * c)), generator=g)
        torch.nn.init.zeros_(conv.bias)
        layers += [conv, torch.nn.ReLU(), torch.nn.AvgPool2d(2)]
        c = width
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # trace sqrt(s1 s2) from the eigenvalues of s1^1/2 s2 s1^1/2 (symmetric PSD)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def train_classifier(x: torch.Tensor, y: np.ndarray, k: int, cache: Path) -> tuple[torch.nn.Module, float]:
    C = x.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(C, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(64, k))
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        net.load_state_dict(saved["net"])
        return net.eval(), float(saved["acc"])
    torch.manual_seed(0)
    yt = torch.from_numpy(y).long()
    n_val = len(x) // 8
    perm = torch.randperm(len(x))
    val, tr = perm[:n_val], perm[n_val:]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    with torch.enable_grad():
        _fit(net, opt, x, yt, tr)
    net.eval()
    with torch.no_grad():
        acc = float((net(x[val]).argmax(1) == yt[val]).float().mean())
    torch.save({"net": net.state_dict(), "acc": acc}, cache)
    return net, acc


def _fit(net, opt, x, yt, tr, epochs: int = 12) -> None:
    for _ in range(epochs):
        for idx in tr[torch.randperm(len(tr))].split(64):
            xb = x[idx] + 0.03 * torch.randn_like(x[idx])  # slight noise: samples are never exactly clean
            loss = F.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def score(samples_u8: np.ndarray, imgs, labels, classes, out: Path, dataset: str) -> dict:
    real = to_tensor(imgs.images)
    fake = to_tensor(samples_u8)
    n = len(fake)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(real))
    ref, ref2 = real[perm[:n]], real[perm[n:2 * n]]
    net = _feature_net(real.shape[1])

    def feat(x):
        return net(x).numpy().astype(np.float64)

    def pix(x):
        return F.avg_pool2d(x, x.shape[-1] // 4).flatten(1).numpy().astype(np.float64)

    res = dict(fd_feat=frechet(feat(fake), feat(ref)), fd_feat_floor=frechet(feat(ref2), feat(ref)),
               fd_pix=frechet(pix(fake), pix(ref)), fd_pix_floor=frechet(pix(ref2), pix(ref)))
    clf, acc = train_classifier(real, labels, len(classes), out / f"clf_{dataset}_{imgs.image_size}.pt")
    p = torch.softmax(clf(fake), 1)
    conf, pred = p.max(1)
    hist = np.bincount(pred.numpy(), minlength=len(classes)) / n
    ent = -(hist[hist > 0] * np.log(hist[hist > 0])).sum() / math.log(len(classes))
    res.update(confident=float((conf > 0.9).float().mean()), entropy=float(ent), classifier_acc=acc,
               class_hist=[round(float(h), 3) for h in hist])
    p_real = torch.softmax(clf(ref), 1).max(1).values
    res["confident_real"] = float((p_real > 0.9).float().mean())
    train = real[perm[2 * n:]].flatten(1) * 0.5 + 0.5  # (M, D) in [0, 1]

    def nn_rmse(x):
        d = torch.cdist(x.flatten(1) * 0.5 + 0.5, train) / math.sqrt(train.shape[1])  # (n, M)
        return float(d.min(1).values.median())

    res.update(nn_rmse=nn_rmse(fake), nn_rmse_real=nn_rmse(ref))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}


def sample(model, diffusion, n: int, channels: int, size: int, seed: int = 123, steps: int = 50,
           batch: int = 256) -> np.ndarray:
    """n DDIM samples (eta 0, ``steps`` leading-spaced steps, as before the app had spacings), ``batch`` at a time."""
    from ddpm_studio.sampling.service import to_uint8

    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        x = None
        for st in diffusion.ddim_sample_loop_progressive(model, (min(batch, n - start), channels, size, size),
                                                         steps=steps, eta=0.0, clip_denoised=True, generator=g,
                                                         spacing="leading"):  # as every figure before spacings
            x = st.x_t
        out.append(to_uint8(x.cpu()))
    return np.concatenate(out)


def summary(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    keys = ["dataset", "tag", "px", "steps", "images_seen", "cpu_sec", "img_per_cpu_sec", "loss_smooth", "fd_feat",
            "fd_feat_floor", "fd_pix", "fd_pix_floor", "confident", "confident_real", "entropy", "nn_rmse",
            "nn_rmse_real"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("shapes", "glyphs"), default="shapes")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--recipe", choices=("ours", "diffusers"), default="ours")
    ap.add_argument("--set", action="append", default=[], help="section.field=value (JSON value), repeatable")
    ap.add_argument("--cpu-sec", type=float, default=240.0)
    ap.add_argument("--images", type=int, default=0,
                    help="budget in images seen instead of --cpu-sec (for runs on a GPU: same images = same CPU "
                         "cost for settings that do not change the network)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training and sampling)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (weights, data order, noise)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num", type=int, default=128, help="samples to score")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "ddpm_quality"))
    ap.add_argument("--summary", action="store_true", help="print the results table and exit")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        summary(out)
        return 0
    torch.set_num_threads(args.threads)
    tag = args.tag or (args.recipe + "_" + "_".join(args.set))
    imgs, labels, classes, data_overrides = load_dataset(args.data, args.size, out)
    if args.recipe == "ours":
        model, diffusion, cfg, info = train_ours(args, imgs, data_overrides,
                                                 out / "runs" / f"{args.data}_{args.size}_{tag}")
    else:
        model, diffusion, cfg, info = train_diffusers(args, imgs, data_overrides)
    t = time.process_time()
    samples = sample(model.to(args.device), diffusion, args.num, imgs.channels, imgs.image_size)
    sample_cpu = time.process_time() - t
    np.save(out / f"samples_{args.data}_{args.size}_{tag}.npy", samples)
    res = score(samples, imgs, labels, classes, out, args.data)
    from ddpm_studio.sampling.export import make_grid, save_png, upscale_nearest

    grid_path = out / f"grid_{args.data}_{args.size}_{tag}.png"
    save_png(upscale_nearest(make_grid(samples[:64], nrow=8), 4), grid_path)
    row = dict(dataset=args.data, tag=tag, px=args.size, threads=args.threads, device=args.device, seed=args.seed,
               budget_images=args.images or None, **{k: v for k, v in info.items() if k != "config"},
               img_per_cpu_sec=round(info["images_seen"] / max(info["cpu_sec"], 1e-9), 1),
               sample_cpu_sec=round(sample_cpu, 1), **res, grid=str(grid_path), config=info["config"])
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
