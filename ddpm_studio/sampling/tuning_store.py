"""Tuned timesteps remembered per model, so that a model is tuned once for each sampler and step count.

A tuning (``tuning.tune_timesteps``) takes minutes on a CPU and holds for one set of weights. It is kept in
``paths.tunings_dir()/<key>.json``, where the key is a digest of the network's weights and of the model and
diffusion settings (:func:`model_key`): the same weights opened as a run, as its checkpoint or as an exported
diffusers folder find the same tunings, and a run trained further (new weights) finds none. Each file holds
one entry per sampler, step count and x_0 clipping (:data:`MATCH`); a newer tuning replaces an older one. A
damaged or unreadable file reads as empty and a failed write loses nothing but the memory of that tuning.

The Sampling panel puts a remembered list back into its "Tuned timesteps" field; ``ddpm-studio sample
--tuned`` uses it; ``ddpm-studio tune-steps`` writes it. Plain Python, no Qt; the digest runs on a worker
thread (measured on an AVX2 CPU, one thread: 13 ms for the tiny preset, 68 ms for small, 0.37 s for the
paper's 35.7M-parameter CIFAR-10 network).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_studio import paths
from ddpm_studio.config import SamplingConfig, atomic_write_text

MATCH = ("sampler", "steps", "eta", "clip_denoised", "clip_range", "dynamic_threshold", "threshold_max")
VERSION = 1


def model_key(loaded) -> str:
    """A digest of what a chain from ``loaded`` depends on: its weights (in a fixed layout, on the CPU), its
    network's resolved architecture, its prediction type and its noise schedule (alpha-bar per timestep)."""
    h = hashlib.blake2b(digest_size=16)
    spec = getattr(loaded.model, "spec", None)
    arch = dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else type(loaded.model).__name__
    h.update(json.dumps({"v": VERSION, "network": arch, "prediction": loaded.diffusion.prediction},
                        sort_keys=True, default=str).encode())
    h.update(np.asarray(loaded.diffusion.schedule.alphas_cumprod, dtype=np.float64).tobytes())
    with torch.no_grad():
        for name, t in sorted(loaded.model.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file(key: str) -> Path:
    return paths.tunings_dir() / f"{key}.json"


def _match(sampling: SamplingConfig) -> dict[str, Any]:
    return {f: getattr(sampling, f) for f in MATCH}


def entry(sampling: SamplingConfig, result) -> dict[str, Any]:
    """The record of one tuning (a ``StepTuning``) for ``sampling``'s sampler, step count and clipping."""
    return {"match": _match(dataclasses.replace(sampling, steps=len(result.timesteps))),
            "timesteps": list(result.timesteps), "note": result.note(), "summary": result.summary(),
            "tuned_at": time.strftime("%Y-%m-%d %H:%M", time.localtime())}


def _valid(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("match"), dict) and isinstance(e.get("timesteps"), list)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in e["timesteps"]))


def recall_all(key: str) -> list[dict[str, Any]]:
    """Every tuning remembered for the model ``key`` ([] when none, or when the file cannot be read)."""
    try:
        data = json.loads(_file(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data.get("tunings") if isinstance(data, dict) else None
    return [e for e in entries if _valid(e)] if isinstance(entries, list) else []


def recall_for(loaded) -> list[dict[str, Any]]:
    """Every tuning remembered for ``loaded``'s weights (the digest reads them: call it off the UI thread)."""
    return recall_all(model_key(loaded))


def find(entries: list[dict[str, Any]], sampling: SamplingConfig) -> dict[str, Any] | None:
    """The entry tuned for ``sampling``'s sampler, step count and clipping, if any."""
    want = _match(sampling)
    return next((e for e in reversed(entries) if e["match"] == want and len(e["timesteps"]) == sampling.steps),
                None)


def with_entry(entries: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """``entries`` with ``new`` in place of an entry for the same settings."""
    return [e for e in entries if e["match"] != new["match"]] + [new]


def remember(key: str, sampling: SamplingConfig, result) -> dict[str, Any]:
    """Keep ``result`` for the model ``key``; return its entry. Raises OSError when it cannot be written."""
    new = entry(sampling, result)
    atomic_write_text(_file(key), json.dumps({"version": VERSION, "tunings": with_entry(recall_all(key), new)},
                                             indent=1))
    return new


__all__ = ["MATCH", "entry", "find", "model_key", "recall_all", "recall_for", "remember", "with_entry"]
