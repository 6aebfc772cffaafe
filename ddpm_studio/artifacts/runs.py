"""The run folder: where one training run keeps everything it writes.

```
RUN_DIR/
  config.json      the RunConfig (every hyperparameter; RunConfig.load reads it back strictly)
  run.json         what is not a hyperparameter: dataset source and fingerprint, package
                   versions, device, resume history
  metrics.jsonl    one JSON object per logged step (appended; trimmed to the checkpoint on resume)
  checkpoints/     step_XXXXXXX.safetensors + step_XXXXXXX.state.pt (see checkpoints.py)
  samples/         step_XXXXXXX.png preview grids from the EMA model
  .lock            held (flock) by the one process training into the folder; says who that is
```

No torch here, so the GUI can read a run folder without the engine.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ddpm_studio.config import RunConfig, atomic_write_text

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"
LOCK_FILE = ".lock"


def is_run_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / CONFIG_FILE).is_file() or (p / CHECKPOINTS_DIR).is_dir())


def preview_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"step_{step:07d}.png"


def write_config(run_dir: str | os.PathLike, cfg: RunConfig) -> None:
    cfg.save(Path(run_dir) / CONFIG_FILE)


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    try:
        return RunConfig.load(path)
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG_FILE})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def package_versions() -> dict[str, str]:
    """Versions of the packages a run's results depend on (missing ones are left out)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("ddpm-studio", "torch", "numpy", "pillow", "safetensors", "diffusers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_run_info(run_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(info, indent=2) + "\n")


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """run.json as a dict ({} when absent or unreadable: it is informative only)."""
    try:
        info = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def dataset_record(cfg: RunConfig, *, source: str, fingerprint: str, num_images: int,
                   skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """run.json's "dataset": where the images came from, and every file skipped with its reason."""
    return {"source": source, "fingerprint": fingerprint, "num_images": num_images, "folder": cfg.data.folder,
            "skipped": list(skipped or [])}


def new_run_info(cfg: RunConfig, *, dataset: dict[str, Any], device: str, world_size: int,
                 precision: str = "fp32") -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": dataset,
        "seed": cfg.train.seed,
        "versions": package_versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "sessions": [{"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": 0, "device": device,
                      "world_size": world_size, "precision": precision}],
    }


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl. One write per line; a reader skips a torn last line."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every readable line of metrics.jsonl ([] when there is none)."""
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        if isinstance(rec, dict):
            out.append(rec)
    return out


def trim_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Keep only the lines up to ``last_step`` (used on resume: later lines were never checkpointed)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in keep))


# -- one writer per run folder --------------------------------------------------------------------


class RunLockedError(ValueError):
    """Another process is training into this run folder."""


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the open file ``fd``; the OS drops it when the process dies."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the text, so the holder's words stay readable
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _holder(path: Path) -> str:
    """Who holds the lock, in words, from what the holder wrote into the lock file."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not said which yet)"


class RunLock:
    """Held for as long as a training writes into ``run_dir``: ``RUN_DIR/.lock``, locked with
    ``flock`` (``msvcrt.locking`` on Windows) on a file kept open. The lock belongs to the open
    file, so a process that is killed (even with kill -9) releases it at once; the file's text
    (pid, host, start time) only serves the message a second writer gets.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> "RunLock":
        """Lock the folder (created if missing) or raise RunLockedError naming the holder."""
        if not self.run_dir.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.created_dir = True
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise RunLockedError(f"{self.run_dir} is in use: {_holder(self.path)} is training into it. "
                                     "Wait for it to finish or stop it, or choose another folder")
            try:  # the file we locked must still be the one at the path (a releaser may have removed it)
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunLockedError(f"could not lock {self.run_dir}: its lock file keeps changing")
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(info) + "\n").encode())
        return self

    def release(self, *, remove_folder_if_unused: bool = False) -> None:
        """Unlock and remove the lock file (while still holding it, so no one can be using it). With
        ``remove_folder_if_unused``, a folder this lock created is removed again when nothing else
        was written into it (a refused start leaves nothing behind)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                self.path.unlink()
            if remove_folder_if_unused and self.created_dir:
                self.run_dir.rmdir()  # only succeeds when empty
        except OSError:
            pass
        os.close(fd)  # drops the lock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
