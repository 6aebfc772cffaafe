"""The run folder: where one training run keeps everything it writes.

```
RUN_DIR/
  config.json      the RunConfig (every hyperparameter; RunConfig.load reads it back strictly)
  run.json         what is not a hyperparameter: dataset source and fingerprint, package
                   versions, device, resume history
  metrics.jsonl    one JSON object per logged step (appended; trimmed to the checkpoint on resume)
  checkpoints/     step_XXXXXXX.safetensors + step_XXXXXXX.state.pt (see checkpoints.py)
  samples/         step_XXXXXXX.png preview grids from the EMA model
```

No torch here, so the GUI can read a run folder without the engine.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ddpm_studio.config import RunConfig, atomic_write_text

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
SAMPLES_DIR = "samples"


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


def new_run_info(cfg: RunConfig, *, dataset_source: str, dataset_fingerprint: str, num_images: int,
                 device: str, world_size: int, precision: str = "fp32") -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": {"source": dataset_source, "fingerprint": dataset_fingerprint, "num_images": num_images,
                    "folder": cfg.data.folder},
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
