"""Repeat issue 15's reliability experiments and print a table: tried / handled cleanly / lost data.

    OMP_NUM_THREADS=1 python benchmarks/bench_reliability.py [--kills 6] [--seed 0]

"Handled cleanly" means the program did the right thing with a plain message (refused a bad
file and fell back, resumed, refused a second writer, ...); "lost data" counts trials where
work that had been saved was gone or wrong afterwards (a checkpoint silently accepted with other
contents, a resume that failed, a run's metrics out of order, the last good checkpoint pruned).
Everything runs in a temporary folder, on CPU, with an 8 px network (T=20).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from ddpm_studio.cli import main as cli  # noqa: E402
from ddpm_studio.config import RunConfig  # noqa: E402
from ddpm_studio.artifacts import checkpoints as ck  # noqa: E402
from ddpm_studio.artifacts import runs  # noqa: E402
from ddpm_studio.training.trainer import Trainer  # noqa: E402

ROWS: list[tuple[str, int, int, int, str]] = []


def row(name: str, tried: int, clean: int, lost: int, note: str = "") -> None:
    ROWS.append((name, tried, clean, lost, note))
    print(f"  {name}: {clean}/{tried} handled cleanly, {lost} lost data {note}", flush=True)


def tiny(steps: int, **train) -> RunConfig:
    t = dict(steps=steps, batch_size=4, log_every=1, preview_every=0, checkpoint_every=5, checkpoint_minutes=0.0,
             device="cpu", warmup_steps=3, lr=1e-3, keep_checkpoints=3)
    t.update(train)
    return RunConfig.from_preset("tiny", data={"image_size": 8},
                                 model={"base_channels": 8, "channel_mult": (1, 2), "attention_resolutions": (4,)},
                                 diffusion={"timesteps": 20}, train=t)


def images():
    import numpy as np

    from ddpm_studio.data import ImageSet

    rng = np.random.default_rng(0)
    return ImageSet(images=rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8), paths=[f"{i}.png" for i in range(24)],
                    channels=3, image_size=8, source="bench", fingerprint="bench")


def two_checkpoint_run(folder: Path) -> Path:
    Trainer(tiny(10), folder, images=images()).run()
    return folder


def with_deadline(fn, seconds: float = 10.0):
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return box, t.is_alive()


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


# -- experiments ----------------------------------------------------------------------------------


def kill9(base: Path, kills: int, rng: random.Random) -> None:
    """kill -9 a CLI training at random moments, resume each time; count steps redone."""
    run, cfg_file = base / "kill9", base / "kill9.json"
    tiny(400).save(cfg_file)
    data = base / "kill9-images"
    data.mkdir()
    from PIL import Image

    for i in range(16):
        Image.new("RGB", (8, 8), (16 * i, 100, 255 - 16 * i)).save(data / f"{i}.png")
    clean = lost = 0
    redone = []
    for _ in range(kills):
        argv = [sys.executable, "-m", "ddpm_studio", "train", "--out", str(run)]
        argv += ["--resume"] if ck.list_checkpoints(run) else ["--config", str(cfg_file), "--data", str(data)]
        p = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while True:  # the start line comes once the session trains
            line = p.stderr.readline()
            if not line or line.startswith(("Training ", "Resuming ")):
                break
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment, checkpoint writes included
        p.send_signal(signal.SIGKILL)
        p.wait()
        last = runs.read_metrics(run)
        killed_at = last[-1]["step"] if last else 0
        try:
            ckpt, _ = ck.load_latest(run, with_state=True)
            saved = ckpt.step
        except ck.CheckpointError:
            saved = 0  # killed before the first checkpoint: nothing had been saved
        redone.append(killed_at - saved)
        ok = killed_at - saved <= 5
        clean += ok
        lost += not ok
    # finish the run and check the metrics: one line per step, in order
    p = subprocess.run([sys.executable, "-m", "ddpm_studio", "train", "--out", str(run), "--resume", "--quiet",
                        "--steps", "420"], env=env(), capture_output=True, text=True)
    if p.returncode:
        print("    final resume:", p.stderr.strip()[-300:])
    steps = [r["step"] for r in runs.read_metrics(run)]
    whole = p.returncode == 0 and steps == list(range(1, 421))
    row("kill -9 at a random moment, then resume", kills, clean, lost + (not whole),
        f"(steps redone per resume: {min(redone)}-{max(redone)} with checkpoints every 5; "
        f"final run {'whole' if whole else 'BROKEN'}: {len(steps)} metric lines for 420 steps)")


def truncated(base: Path, rng: random.Random, n: int = 12) -> None:
    run = two_checkpoint_run(base / "trunc")
    weights, state = ck.checkpoint_paths(run, 10)
    good_w, good_s = weights.read_bytes(), state.read_bytes()
    clean = lost = 0
    for i in range(n):
        target, good = (weights, good_w) if i % 2 == 0 else (state, good_s)
        target.write_bytes(good[: rng.randrange(len(good))])
        try:
            got, notes = ck.load_latest(run)
            ok = got.step == 5 and any("step_0000010" in x for x in notes)
        except ck.CheckpointError:
            ok = False
        clean += ok
        lost += not ok
        weights.write_bytes(good_w)
        state.write_bytes(good_s)
    row("truncated newest weights / state file", n, clean, lost)


def flipped(base: Path, rng: random.Random, n: int = 40) -> None:
    """One flipped byte anywhere in the newest weights: refused, or (never) silently accepted as other data."""
    run = two_checkpoint_run(base / "flip")
    weights = ck.checkpoint_paths(run, 10)[0]
    good = weights.read_bytes()
    (hn,) = __import__("struct").unpack("<Q", good[:8])
    reference = ck.load_checkpoint(weights)
    clean = lost = header_hits = 0
    for i in range(n):
        data = bytearray(good)
        # half in the header (step, config, checksums), half in the tensors
        pos = rng.randrange(8, 8 + hn) if i % 2 == 0 else rng.randrange(8 + hn, len(good))
        header_hits += pos < 8 + hn
        data[pos] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(data))
        try:
            got = ck.load_checkpoint(weights)
            same = got.step == reference.step and got.config.to_dict() == reference.config.to_dict() and all(
                torch.equal(got.model_state[k], v) for k, v in reference.model_state.items())
            clean += same  # a flip in JSON whitespace changes nothing
            lost += not same
        except ck.CheckpointError:
            clean += ck.load_latest(run)[0].step == 5
    weights.write_bytes(good)
    row("one flipped bit in the newest weights file", n, clean, lost, f"({header_hits} in the header)")


def dev_zero(base: Path) -> None:
    clean = lost = tried = 0
    for which in (0, 1):  # the weights, then the state file
        for attempt in ("load_latest", "resume"):
            tried += 1
            run = two_checkpoint_run(base / f"zero{which}{attempt}")
            path = ck.checkpoint_paths(run, 10)[which]
            path.unlink()
            path.symlink_to("/dev/zero")
            if attempt == "load_latest":
                box, hung = with_deadline(lambda run=run: ck.load_latest(run))
                ok = not hung and "value" in box and box["value"][0].step == 5
            else:
                resume = lambda run=run: Trainer(tiny(12), run, images=images(), resume=True).run()  # noqa: E731
                box, hung = with_deadline(resume, 60)
                ok = not hung and "value" in box and box["value"].reason == "completed"
            clean += ok
            lost += not ok
    if hasattr(os, "mkfifo"):
        tried += 1
        run = two_checkpoint_run(base / "fifo")
        state = ck.checkpoint_paths(run, 10)[1]
        state.unlink()
        os.mkfifo(state)
        box, hung = with_deadline(lambda: ck.load_latest(run))
        ok = not hung and "value" in box and box["value"][0].step == 5
        clean += ok
        lost += not ok
    row("/dev/zero links (weights, state) and a FIFO state file", tried, clean, lost)


HOLD = """
import sys, time
from ddpm_studio.artifacts.runs import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def two_writers(base: Path) -> None:
    clean = lost = tried = 0
    # a: a second training (resume, fresh start) while a process holds the folder; then kill -9 of the holder
    run = two_checkpoint_run(base / "two")
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env=env(), stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    for resume in (True, False):
        tried += 1
        try:
            Trainer(tiny(20), run, images=images(), resume=resume).run()
            lost += 1
        except runs.RunLockedError as e:
            clean += f"process {p.pid}" in str(e)
    p.send_signal(signal.SIGKILL)
    p.wait()
    tried += 1
    ok = Trainer(tiny(20), run, images=images(), resume=True).run().reason == "completed"
    clean += ok
    lost += not ok
    # b: two CLI fresh starts into one folder at the same moment (twice)
    cfg_file = base / "two.json"
    tiny(60).save(cfg_file)
    for k in range(2):
        tried += 1
        out = base / f"race{k}"
        argv = [sys.executable, "-m", "ddpm_studio", "train", "--out", str(out), "--config", str(cfg_file), "--quiet"]
        procs = [subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [q.communicate(timeout=300) + (q.returncode,) for q in procs]
        codes = sorted(r[2] for r in results)
        refused = sum("is in use" in r[1] or "already holds a run" in r[1] for r in results)
        steps = [r["step"] for r in runs.read_metrics(out)]
        ok = codes == [0, 1] and refused == 1 and steps == list(range(1, 61))
        clean += ok
        lost += not ok
    row("two writers in one run folder", tried, clean, lost, "(resume and fresh start while held; kill -9 of the "
        "holder; two simultaneous CLI starts x2)")


def full_disk(base: Path) -> None:
    clean = lost = tried = 0
    probe = base / "disk-probe"
    Trainer(tiny(10, keep_checkpoints=2), probe, images=images()).run()
    last = ck.list_checkpoints(probe)[-1]
    one = last.stat().st_size + ck.state_path_for(last).stat().st_size
    real = shutil.disk_usage
    for room in (0.5, 1.2, 2.5, 3.5):  # room on the "disk" in checkpoints (plus the 1 MB margin)
        tried += 1
        run = base / f"disk{room}"
        folder = run / "checkpoints"
        capacity = int(room * one) + ck.DISK_MARGIN_BYTES

        def usage(path, folder=folder, capacity=capacity):
            used = sum(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else 0
            return shutil._ntuple_diskusage(10**12, 0, max(0, capacity - used))

        ck.shutil.disk_usage = usage
        try:
            done = Trainer(tiny(30, keep_checkpoints=2), run, images=images()).run()
        finally:
            ck.shutil.disk_usage = real
        kept = ck.list_checkpoints(run)
        if room < 1:
            ok = done.reason == "error" and "no earlier checkpoint exists" in done.message and not kept
        elif room < 2:  # room for one only: the new one would need the last good one deleted first
            ok = (done.reason == "error" and [ck.step_of(p) for p in kept] == [5]
                  and "step_0000005.safetensors, is kept" in done.message)
        else:
            ok = done.reason == "completed" and [ck.step_of(p) for p in kept] == [25, 30]
        clean += ok
        lost += not ok and done.reason == "completed"
    # the write itself fails with ENOSPC
    tried += 1
    run = base / "enospc"
    real_write = ck.atomic_write_bytes

    def failing(path, data):
        if path.name == "step_0000010.safetensors":
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    ck.atomic_write_bytes = failing
    try:
        done = Trainer(tiny(30), run, images=images()).run()
    finally:
        ck.atomic_write_bytes = real_write
    ok = done.reason == "error" and "step_0000010.safetensors" in done.message and "step_0000005" in done.message
    clean += ok and ck.load_latest(run)[0].step == 5
    row("full disk (simulated: 0.5-3.5 checkpoints of room; ENOSPC on write)", tried, clean, lost)


HOSTILE_CONFIGS = [
    {"data": {"folder": 5}}, {"train": {"ema_warmup": "no"}}, {"sampling": {"clip_denoised": "no"}},
    {"version": "1"}, {"model": {"image_size": 32}}, {"model": {"channel_mult": [1, 2048]}},
    {"model": {"channel_mult": []}}, {"model": {"base_channels": "32"}}, {"train": {"lr": float("nan")}},
    {"train": {"steps": -5}}, {"train": {"batch_size": 10**9}}, {"model": {"attention_resolutions": "8"}},
    {"nonsense": {}}, {"train": {"typo_field": 1}}, {"diffusion": {"betas": [0.5]}}, {"data": None},
]


def hostile_configs(base: Path) -> None:
    clean = lost = 0
    for i, change in enumerate(HOSTILE_CONFIGS):
        d = RunConfig.from_preset("tiny").to_dict()
        for key, value in change.items():
            d[key] = {**d[key], **value} if isinstance(d.get(key), dict) and isinstance(value, dict) else value
        f = base / f"hostile{i}.json"
        f.write_text(json.dumps(d))
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli(["train", "--config", str(f), "--out", str(base / f"hostile-run{i}")])
            except BaseException as e:  # noqa: BLE001 - a traceback would be a failure
                code, err = -1, io.StringIO(repr(e))
        text = err.getvalue()
        ok = code == 1 and text.count("\n") == 1 and "Traceback" not in text and time.perf_counter() - t0 < 5
        clean += ok
        if not ok:
            print(f"    not clean: {change} -> {code} {text.strip()[:200]}")
    row("hostile config.json (types, sizes, version, unknown keys)", len(HOSTILE_CONFIGS), clean, lost)


def hostile_folder(base: Path) -> None:
    from PIL import Image

    from ddpm_studio.config import DataConfig
    from ddpm_studio.data import load_images

    folder = base / "folder"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (60 * i, 90, 200)).save(folder / f"ok{i}.png")
    specials = {"zero.png": "a device", "gone.png": "broken link", "empty.png": "empty", "trunc.png": ("truncated",
                                                                                                       "not an image"),
                "dir.png": None}
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(folder / "nothing.png")
    (folder / "empty.png").write_bytes(b"")
    whole = (folder / "ok0.png").read_bytes()
    (folder / "trunc.png").write_bytes(whole[: len(whole) // 2])
    (folder / "dir.png").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.png")
        os.mkfifo(folder / "pipe")
        specials["pipe.png"] = "named pipe"
        specials["pipe"] = "named pipe"
    box, hung = with_deadline(lambda: load_images(DataConfig(folder=str(folder), image_size=8), use_cache=False), 30)
    reasons = {Path(s.path).name: s.reason for s in box["value"].skipped} if "value" in box else {}
    clean = 0
    for name, words in specials.items():
        if words is None:  # a folder named like an image is walked into, not reported
            clean += name not in reasons
        else:
            clean += any(w in reasons.get(name, "") for w in ((words,) if isinstance(words, str) else words))
    lost = 0 if (not hung and "value" in box and len(box["value"]) == 4) else 1
    row("hostile image folder entries (/dev/zero link, FIFOs, broken link, empty, truncated, folder)",
        len(specials), clean, lost)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        os.environ["DDPM_STUDIO_CACHE_DIR"] = str(base / "cache")
        for fn in (lambda: kill9(base, args.kills, rng), lambda: truncated(base, rng), lambda: flipped(base, rng),
                   lambda: dev_zero(base), lambda: two_writers(base), lambda: full_disk(base),
                   lambda: hostile_configs(base), lambda: hostile_folder(base)):
            fn()
    took = time.perf_counter() - t0
    print("\n| experiment | tried | handled cleanly | lost data |\n|---|---|---|---|")
    for name, tried, clean, lost, note in ROWS:
        print(f"| {name} {note}".rstrip() + f" | {tried} | {clean} | {lost} |")
    print(f"\n{took:.0f} s in all")
    return 0 if all(c == t and lost == 0 for _, t, c, lost, _ in ROWS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
