"""Checkpoints that can be opened without trusting them.

A checkpoint of step k is two files in ``RUN_DIR/checkpoints/``:

- ``step_XXXXXXX.safetensors`` — the weights: ``model.<name>`` and ``ema.<name>`` tensors. Its
  metadata (plain strings) holds the format name and version, the step, the full run config as
  JSON, a SHA-256 of the tensor bytes and a SHA-256 of the companion state file.
- ``step_XXXXXXX.state.pt`` — what resuming needs besides the weights: optimizer and grad-scaler
  state, RNG states and counters. Only tensors, numbers, strings, lists, tuples and dicts, so it
  is read with ``torch.load(weights_only=True)``, which refuses anything that could run code.

The ``.safetensors`` file is written last, so it marks a complete checkpoint. Both are written
atomically (temporary file, flush, fsync, rename): killing the process at any moment leaves
every previous checkpoint as it was. Anything wrong — truncated, corrupted, another format
version, a model of another shape — raises :class:`CheckpointError` saying what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpm_studio.config import RunConfig, atomic_write_bytes

FORMAT = "ddpm-studio-checkpoint"
FORMAT_VERSION = 1

CHECKPOINTS_DIR = "checkpoints"
_NAME_RE = re.compile(r"^step_(\d{7,})\.safetensors$")
_SHA_PLACEHOLDER = "0" * 64
# Sections whose values decide what the weights mean; a checkpoint is only usable with equal ones.
_WEIGHT_SECTIONS = ("model", "diffusion")


class CheckpointError(ValueError):
    """A checkpoint (or run folder) that cannot be used, with a message saying why."""


@dataclass
class Checkpoint:
    path: Path  # the .safetensors file
    step: int
    config: RunConfig
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None = None  # contents of the .state.pt (None if not loaded)
    metadata: dict[str, str] = field(default_factory=dict)


# -- names ------------------------------------------------------------------------------------


def checkpoint_stem(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_paths(run_dir: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """(weights .safetensors, companion .state.pt) for ``step`` in ``run_dir``."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    stem = checkpoint_stem(step)
    return folder / f"{stem}.safetensors", folder / f"{stem}.state.pt"


def state_path_for(weights: Path) -> Path:
    return weights.with_name(weights.name[: -len(".safetensors")] + ".state.pt")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Every ``step_*.safetensors`` in the run folder, oldest first (not checked)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int | None:
    m = _NAME_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


# -- writing ----------------------------------------------------------------------------------


def _cpu_contiguous(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{prefix}{name} is not a tensor")
        # clone: safetensors refuses tensors that share memory, and the copy must not change later
        out[prefix + name] = t.detach().to("cpu").contiguous().clone()
    return out


def serialize_weights(model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> bytes:
    """The bytes of a .safetensors file with a SHA-256 of its tensor data in the metadata."""
    from safetensors.torch import save

    tensors = {**_cpu_contiguous(model_state, "model."), **_cpu_contiguous(ema_state, "ema.")}
    meta = dict(metadata)
    meta["data_sha256"] = _SHA_PLACEHOLDER
    data = bytearray(save(tensors, metadata=meta))
    (n,) = struct.unpack("<Q", data[:8])
    digest = hashlib.sha256(memoryview(data)[8 + n:]).hexdigest()
    # Fill the placeholder in place: same length, so the header size and all offsets stay valid.
    header = bytes(data[8: 8 + n])
    needle = f'"data_sha256":"{_SHA_PLACEHOLDER}"'.encode()
    if header.count(needle) != 1:
        raise RuntimeError("could not place the checksum in the safetensors header")
    start = 8 + header.index(needle) + len(needle) - 65
    data[start: start + 64] = digest.encode()
    return bytes(data)


def save_checkpoint(run_dir: str | os.PathLike, step: int, config: RunConfig,
                    model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``step`` atomically; returns the .safetensors path."""
    weights_path, state_path = checkpoint_paths(run_dir, step)
    buf = io.BytesIO()
    torch.save(train_state, buf)
    state_bytes = buf.getvalue()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "step": str(int(step)),
        "config": config.to_json(),
        "state_sha256": hashlib.sha256(state_bytes).hexdigest(),
    }
    weights_bytes = serialize_weights(model_state, ema_state, metadata)
    atomic_write_bytes(state_path, state_bytes)
    atomic_write_bytes(weights_path, weights_bytes)  # last: its presence marks a complete checkpoint
    return weights_path


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (never ``protect``); returns what was removed."""
    paths = list_checkpoints(run_dir)
    removed = []
    for p in paths[: max(0, len(paths) - keep)]:
        if protect is not None and p.resolve() == Path(protect).resolve():
            continue
        for q in (p, state_path_for(p)):
            try:
                q.unlink()
            except FileNotFoundError:
                pass
        removed.append(p)
    return removed


def remove_stale_temp_files(run_dir: str | os.PathLike) -> None:
    """Delete temporary files left by a process killed in the middle of a write."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass


# -- reading ----------------------------------------------------------------------------------


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor table, metadata) of a .safetensors file, checking only that it is whole.

    Cheap: reads the header and the file size, not the tensors.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is not a checkpoint: the file is empty or truncated ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                raise CheckpointError(f"{path.name} is truncated or not a safetensors file (header length {n} exceeds the file)")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path.name} is not a safetensors file (its header is not valid JSON)") from None
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{path.name} is not a valid safetensors file (bad entry for {name!r})") from None
    if size != 8 + n + end:
        raise CheckpointError(
            f"{path.name} is truncated or damaged: {size} bytes on disk, the header describes {8 + n + end}"
        )
    return header, metadata


def read_metadata(path: str | os.PathLike) -> tuple[int, RunConfig, dict[str, str]]:
    """(step, config, raw metadata) of a DDPM Studio checkpoint, refusing other files clearly."""
    path = Path(path)
    _, meta = read_header(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a DDPM Studio checkpoint (no '{FORMAT}' format tag)"
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(
            f"{path.name} has checkpoint format version {version}; this program reads version {FORMAT_VERSION}"
        )
    try:
        step = int(meta["step"])
        config = RunConfig.from_json(meta["config"])
        config.validate()
    except KeyError as e:
        raise CheckpointError(f"{path.name} is missing the {e.args[0]!r} metadata entry") from None
    except ValueError as e:
        raise CheckpointError(f"{path.name} carries a config this program cannot use: {e}") from None
    return step, config, meta


def load_checkpoint(path: str | os.PathLike, *, with_state: bool = True,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint. ``with_state=False`` skips the optimizer/RNG file (sampling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path.name} is not a DDPM Studio checkpoint: expected a .safetensors file "
            "(pickled .pt/.ckpt weights are refused because opening them can run code)"
        )
    step, config, meta = read_metadata(path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if hashlib.sha256(memoryview(data)[8 + n:]).hexdigest() != meta.get("data_sha256"):
        raise CheckpointError(f"{path.name} is damaged: its tensor data does not match the checksum written with it")
    try:
        tensors = load(data)
    except SafetensorError as e:
        raise CheckpointError(f"{path.name} could not be read: {e}") from None
    del data
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not model_state:
        raise CheckpointError(f"{path.name} holds no model weights")
    if map_location != "cpu":
        model_state = {k: v.to(map_location) for k, v in model_state.items()}
        ema_state = {k: v.to(map_location) for k, v in ema_state.items()}
    train_state = _load_state(path, meta, map_location) if with_state else None
    return Checkpoint(path, step, config, model_state, ema_state, train_state, meta)


def _load_state(weights_path: Path, meta: dict[str, str], map_location) -> dict[str, Any]:
    state_path = state_path_for(weights_path)
    try:
        raw = state_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{state_path.name} (optimizer and RNG state) is missing") from None
    if hashlib.sha256(raw).hexdigest() != meta.get("state_sha256"):
        raise CheckpointError(
            f"{state_path.name} is truncated, damaged or from another checkpoint (checksum mismatch)"
        )
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only; a file built
        # to run code when unpickled is refused before anything in it executes.
        state = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "refused"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{state_path.name} was refused: {first}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_path.name} is not a DDPM Studio training state of format version {FORMAT_VERSION}")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``run_dir`` whose header and size are intact, or None."""
    for p in reversed(list_checkpoints(run_dir)):
        try:
            read_metadata(p)
            return p
        except CheckpointError:
            continue
    return None


def load_latest(run_dir: str | os.PathLike, *, with_state: bool = True,
                map_location: str | torch.device = "cpu") -> tuple[Checkpoint, list[str]]:
    """The newest checkpoint that loads completely, and notes on any newer ones that did not.

    Raises CheckpointError when the folder has no usable checkpoint at all.
    """
    run_dir = Path(run_dir)
    paths = list_checkpoints(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir} has no checkpoints (expected {CHECKPOINTS_DIR}/step_*.safetensors)")
    notes: list[str] = []
    for p in reversed(paths):
        try:
            ckpt = load_checkpoint(p, with_state=with_state, map_location=map_location)
        except CheckpointError as e:
            notes.append(f"skipped: {e}")
            continue
        if notes:
            notes.append(f"using the previous good checkpoint {p.name} (step {ckpt.step})")
        return ckpt, notes
    raise CheckpointError(f"no usable checkpoint in {run_dir}: " + "; ".join(notes))


# -- compatibility ----------------------------------------------------------------------------


def config_differences(saved: RunConfig, wanted: RunConfig, sections=_WEIGHT_SECTIONS) -> list[str]:
    """'section.field: saved X, now Y' for every field that differs in ``sections``."""
    a, b = saved.to_dict(), wanted.to_dict()
    diffs = []
    for section in sections:
        for key in a[section]:
            if key == "preset":  # a name, not a shape
                continue
            if a[section][key] != b[section].get(key):
                diffs.append(f"{section}.{key}: checkpoint {a[section][key]!r}, this run {b[section].get(key)!r}")
    return diffs


def check_compatible(ckpt: Checkpoint, wanted: RunConfig) -> None:
    """Refuse a checkpoint whose network or diffusion process differs from ``wanted``."""
    diffs = config_differences(ckpt.config, wanted)
    if diffs:
        raise CheckpointError(f"{ckpt.path.name} is incompatible with this run: " + "; ".join(diffs))


def load_weights_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` with a CheckpointError naming what does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
        raise CheckpointError(f"the {what} weights do not fit this network: " + ", ".join(parts))
    module.load_state_dict(state)
