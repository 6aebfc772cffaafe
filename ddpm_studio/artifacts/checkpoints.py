"""Checkpoints that can be opened without trusting them.

Length (over 500 lines, on purpose): the checkpoint format with every check made before a byte
is trusted (sizes, checksums, shapes, the state file), read and written in one place.

A checkpoint of step k is two files in ``RUN_DIR/checkpoints/``:

- ``step_XXXXXXX.safetensors`` — the weights: ``model.<name>`` and ``ema.<name>`` tensors. Its
  metadata (plain strings) holds the format name and version, the step, the full run config as
  JSON, a SHA-256 of the tensor bytes, a SHA-256 and the size of the companion state file, the
  mean loss since the previous checkpoint and whether it was healthy, and ``meta_sha256``: a
  SHA-256 of all the other metadata (canonical JSON), so a flipped byte in the step or the config
  is found as surely as one in the weights. (Checkpoints written before ``meta_sha256`` existed
  still load, with the checks they had.)
- ``step_XXXXXXX.state.pt`` — what resuming needs besides the weights: optimizer and grad-scaler
  state, RNG states and counters. Only tensors, numbers, strings, lists, tuples and dicts, so it
  is read with ``torch.load(weights_only=True)``, which refuses anything that could run code.

The ``.safetensors`` file is written last, so it marks a complete checkpoint. Both are written
atomically (temporary file, flush, fsync, rename): killing the process at any moment leaves
every previous checkpoint as it was. Anything wrong — truncated, corrupted, another format
version, a model of another shape — raises :class:`CheckpointError` saying what is wrong.

Reading trusts nothing: a path that is not a regular file (a link to /dev/zero, a named pipe, a
device) is refused from its ``stat`` before it is opened; every read is bounded by the size the
header promises; the weight shapes in the header are compared with the config's before any
tensor is read; the step in the header must match the file name and the state file.

Writing checks the free disk space first, prunes what the rotation would remove anyway when that
makes the room, and never prunes the newest checkpoint whose loss was healthy.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpm_studio import footprint
from ddpm_studio.paths import file_kind
from ddpm_studio.config import RunConfig, atomic_write_bytes

FORMAT = "ddpm-studio-checkpoint"
FORMAT_VERSION = 1

CHECKPOINTS_DIR = "checkpoints"
_NAME_RE = re.compile(r"^step_(\d{7,})\.safetensors$")
_SHA_PLACEHOLDER = "0" * 64
MAX_HEADER_BYTES = 100_000_000
# The metadata of a checkpoint written before meta_sha256 existed: exactly these entries.
_META_V1 = frozenset({"format", "format_version", "step", "config", "state_sha256", "data_sha256"})
DISK_MARGIN_BYTES = 1 << 20  # free space kept beyond the checkpoint's own size
# Sections whose values decide what the weights mean; a checkpoint is only usable with equal ones.
_WEIGHT_SECTIONS = ("model", "diffusion")


class CheckpointError(ValueError):
    """A checkpoint (or run folder) that cannot be used, with a message saying why."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a read-only folder); says what was kept."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return self.strerror if self.strerror else super().__str__()


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
        if m and not p.is_dir():  # links to devices, pipes: listed, so that loading says what they are
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


def _canonical_meta(meta: dict[str, str]) -> bytes:
    """The metadata meta_sha256 covers: every entry but itself, as sorted compact JSON."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def serialize_weights(model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> bytes:
    """The bytes of a .safetensors file whose metadata carries SHA-256s of its tensor data and of itself."""
    from safetensors.torch import save

    tensors = {**_cpu_contiguous(model_state, "model."), **_cpu_contiguous(ema_state, "ema.")}
    meta = dict(metadata)
    meta["data_sha256"] = _SHA_PLACEHOLDER
    meta["meta_sha256"] = _SHA_PLACEHOLDER
    data = bytearray(save(tensors, metadata=meta))
    (n,) = struct.unpack("<Q", data[:8])
    meta["data_sha256"] = hashlib.sha256(memoryview(data)[8 + n:]).hexdigest()
    meta["meta_sha256"] = hashlib.sha256(_canonical_meta(meta)).hexdigest()
    # Fill the placeholders in place: same length, so the header size and all offsets stay valid.
    header = bytes(data[8: 8 + n])
    for key in ("data_sha256", "meta_sha256"):
        needle = f'"{key}":"{_SHA_PLACEHOLDER}"'.encode()
        if header.count(needle) != 1:
            raise RuntimeError("could not place the checksums in the safetensors header")
        start = 8 + header.index(needle) + len(needle) - 65
        data[start: start + 64] = meta[key].encode()
    return bytes(data)


def _mb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _last_good(run_dir: str | os.PathLike, besides: Path | None = None) -> Path | None:
    """The newest checkpoint whose header is intact (other than ``besides``)."""
    for p in reversed(list_checkpoints(run_dir)):
        if besides is not None and p.name == besides.name:
            continue
        try:
            read_metadata(p)
            return p
        except CheckpointError:
            continue
    return None


def _kept_words(run_dir, besides: Path) -> str:
    good = _last_good(run_dir, besides)
    return (f"the last good checkpoint, {good.name}, is kept" if good is not None
            else "no earlier checkpoint exists")


def save_checkpoint(run_dir: str | os.PathLike, step: int, config: RunConfig,
                    model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                    train_state: dict[str, Any], *, loss: float | None = None, healthy: bool = True,
                    keep: int | None = None) -> Path:
    """Write the checkpoint of ``step`` atomically; returns the .safetensors path.

    ``loss``/``healthy`` go into the metadata (pruning never removes the newest healthy one).
    With ``keep``, the rotation is applied: before writing when the disk needs the room, else after.
    Raises CheckpointWriteError (an OSError) naming the file and the checkpoint that was kept.
    """
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
        "state_size": str(len(state_bytes)),
        "healthy": "true" if healthy else "false",
    }
    if loss is not None:
        metadata["loss"] = repr(float(loss))
    weights_bytes = serialize_weights(model_state, ema_state, metadata)
    folder = weights_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointWriteError(f"cannot create {folder} for {weights_path.name}: {e.strerror or e}") from None

    # Room first: the new files, plus a margin, must fit before anything is written.
    need = len(state_bytes) + len(weights_bytes) + DISK_MARGIN_BYTES
    free = shutil.disk_usage(folder).free
    if free < need and keep is not None:
        prune_checkpoints(run_dir, max(0, keep - 1))  # what the rotation removes after this write anyway
        free = shutil.disk_usage(folder).free
    if free < need:
        raise CheckpointWriteError(
            errno.ENOSPC, f"not enough free disk space to write {weights_path} ({_mb(need)} needed, {_mb(free)} "
            f"free); {_kept_words(run_dir, weights_path)}")
    try:
        atomic_write_bytes(state_path, state_bytes)
        atomic_write_bytes(weights_path, weights_bytes)  # last: its presence marks a complete checkpoint
    except OSError as e:
        for q in (state_path, weights_path):
            try:
                q.unlink()
            except OSError:
                pass
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise CheckpointWriteError(e.errno, f"could not write {weights_path} ({why}); "
                                   f"{_kept_words(run_dir, weights_path)}") from None
    if keep is not None:
        prune_checkpoints(run_dir, keep, protect=weights_path)
    return weights_path


def is_healthy(meta: dict[str, str]) -> bool:
    """False only for a checkpoint saved while the loss was diverging (older ones count as healthy)."""
    return meta.get("healthy", "true") != "false"


def newest_healthy(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint with an intact header whose loss was healthy when it was saved."""
    for p in reversed(list_checkpoints(run_dir)):
        try:
            _, _, meta = read_metadata(p)
        except CheckpointError:
            continue
        if is_healthy(meta):
            return p
    return None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; returns what was removed.

    Never removes ``protect`` nor the newest checkpoint whose loss was healthy, so a run that
    diverges keeps the last checkpoint worth going back to whatever ``keep`` is.
    """
    paths = list_checkpoints(run_dir)
    spared = {Path(protect).name} if protect is not None else set()
    healthy = newest_healthy(run_dir)
    if healthy is not None:
        spared.add(healthy.name)
    removed = []
    for p in paths[: max(0, len(paths) - keep)]:
        if p.name in spared:
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


def _kind(mode: int) -> str:
    return file_kind(mode) or "not a plain file"


def _open_regular(path: Path) -> tuple[io.BufferedReader, int]:
    """(open file, size) of a regular file; anything else is refused from its stat, unopened.

    A named pipe would block the open; a link to /dev/zero would read forever.
    """
    try:
        st = os.stat(path)  # follows links: the target is what would be read
    except FileNotFoundError:
        broken = " (a broken link)" if os.path.islink(path) else ""
        raise CheckpointError(f"{path.name} does not exist{broken}") from None
    except OSError as e:
        raise CheckpointError(f"{path.name} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path.name} is not a regular file ({_kind(st.st_mode)}); refused without reading it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(f"{path.name} cannot be read ({e.strerror or e})") from None
    st = os.fstat(fd)  # the file really opened (it may have been swapped since the stat)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path.name} is not a regular file ({_kind(st.st_mode)}); refused without reading it")
    return os.fdopen(fd, "rb"), st.st_size


def _read_exactly(f: io.BufferedReader, n: int, name: str, what: str) -> bytes:
    data = f.read(n)  # n is bounded by the file's size: never more than the header promised
    if len(data) != n:
        raise CheckpointError(f"{name} is truncated: {what} has {len(data)} of {n} bytes")
    return data


def _parse_header(f: io.BufferedReader, size: int, name: str) -> tuple[dict[str, Any], dict[str, str], int]:
    """(tensor table, metadata, header length) read from an open file of ``size`` bytes."""
    head = f.read(8)
    if len(head) < 8:
        raise CheckpointError(f"{name} is not a checkpoint: the file is empty or truncated ({size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"{name} is truncated or not a safetensors file (header length {n} exceeds the file)")
    raw = _read_exactly(f, n, name, "the header")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{name} is not a safetensors file (its header is not valid JSON)") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{name} is not a valid safetensors file (its metadata is not text)")
    end = 0
    for key, info in header.items():
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{name} is not a valid safetensors file (bad entry for {key!r})") from None
    if size != 8 + n + end:
        raise CheckpointError(f"{name} is truncated or damaged: {size} bytes on disk, the header describes "
                              f"{8 + n + end}")
    return header, metadata, n


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor table, metadata) of a .safetensors file, checking only that it is whole.

    Cheap: reads the header and the file size, not the tensors.
    """
    path = Path(path)
    f, size = _open_regular(path)
    with f:
        header, metadata, _ = _parse_header(f, size, path.name)
    return header, metadata


def _check_metadata(path: Path, meta: dict[str, str]) -> None:
    """The metadata checksum (or, for an older checkpoint, its exact set of entries)."""
    if "meta_sha256" in meta:
        if hashlib.sha256(_canonical_meta(meta)).hexdigest() != meta["meta_sha256"]:
            raise CheckpointError(f"{path.name} is damaged: its header (step, config, checksums) does not match "
                                  "the checksum written with it")
    elif set(meta) != _META_V1 and meta.get("format") == FORMAT:
        odd = sorted(set(meta) ^ _META_V1)
        raise CheckpointError(f"{path.name} is damaged: its header has no checksum and unexpected entries "
                              f"({', '.join(odd)})")


def _metadata_from(path: Path, meta: dict[str, str]) -> tuple[int, RunConfig]:
    _check_metadata(path, meta)
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
    named = step_of(path)
    if named is not None and named != step:
        raise CheckpointError(f"{path.name} is damaged: its header says step {step}, its name says step {named}")
    return step, config


def read_metadata(path: str | os.PathLike) -> tuple[int, RunConfig, dict[str, str]]:
    """(step, config, raw metadata) of a DDPM Studio checkpoint, refusing other files clearly.

    Cheap (the header only) but complete for the header: its checksum, the step against the name.
    """
    path = Path(path)
    _, meta = read_header(path)
    step, config = _metadata_from(path, meta)
    return step, config, meta


def check_shapes(path: Path, table: dict[str, Any], config: RunConfig) -> None:
    """Compare the tensor table of the header with the network ``config`` describes (nothing read yet)."""
    expected = footprint.expected_shapes(config.model)
    for prefix, what, optional in (("model.", "model", False), ("ema.", "EMA", True)):
        got = {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix)}
        if not got and optional:
            continue
        try:
            shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in got.items()}
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path.name} is not a valid safetensors file (a tensor has no shape)") from None
        missing = [k for k in expected if k not in shapes]
        unexpected = [k for k in shapes if k not in expected]
        wrong = [f"{k} {shapes[k]} where the config needs {v}" for k, v in expected.items()
                 if k in shapes and shapes[k] != v]
        if missing or unexpected or wrong:
            parts = _mismatches(("of another shape", wrong), ("missing", missing), ("unexpected", unexpected))
            raise CheckpointError(f"{path.name}: the {what} weights do not match the network its config describes: "
                                  + parts + "; refused before reading them")


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
    f, size = _open_regular(path)
    with f:
        table, meta, n = _parse_header(f, size, path.name)
        step, config = _metadata_from(path, meta)
        check_shapes(path, table, config)
        f.seek(0)
        data = _read_exactly(f, size, path.name, "the file")
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
    train_state = _load_state(path, meta, map_location, step, size - 8 - n) if with_state else None
    return Checkpoint(path, step, config, model_state, ema_state, train_state, meta)


def _load_state(weights_path: Path, meta: dict[str, str], map_location, step: int, data_bytes: int) -> dict[str, Any]:
    state_path = state_path_for(weights_path)
    try:
        f, size = _open_regular(state_path)
    except CheckpointError as e:
        if "does not exist" in str(e):
            raise CheckpointError(f"{state_path.name} (optimizer and RNG state) is missing") from None
        raise
    with f:
        if "state_size" in meta:
            promised = int(meta["state_size"]) if meta["state_size"].isdigit() else -1
            if size != promised:
                raise CheckpointError(f"{state_path.name} is truncated, damaged or from another checkpoint "
                                      f"({size} bytes; its checkpoint says {promised})")
        elif size > 2 * data_bytes + (16 << 20):
            # older checkpoints do not record the size: optimizer state is about the size of the weights
            raise CheckpointError(f"{state_path.name} is {_mb(size)}, far more than a training state of "
                                  f"these weights ({_mb(data_bytes)}) can be; refused")
        raw = _read_exactly(f, size, state_path.name, "the file")
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
        raise CheckpointError(f"{state_path.name} is not a DDPM Studio training state of format version "
                              f"{FORMAT_VERSION}")
    if "step" in state and state["step"] != step:
        raise CheckpointError(f"{state_path.name} is from step {state['step']}, its weights from step {step}")
    return state


def verify_checkpoint(path: str | os.PathLike, *, with_state: bool = True) -> tuple[int, RunConfig, dict[str, str]]:
    """Every check load_checkpoint makes (both checksums, shapes, sizes), reading in chunks and
    building no tensors: what ``info`` runs. Returns (step, config, metadata)."""
    path = Path(path)
    f, size = _open_regular(path)
    with f:
        table, meta, n = _parse_header(f, size, path.name)
        step, config = _metadata_from(path, meta)
        check_shapes(path, table, config)
        h, left = hashlib.sha256(), size - 8 - n
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                raise CheckpointError(f"{path.name} is truncated")
            h.update(chunk)
            left -= len(chunk)
    if h.hexdigest() != meta.get("data_sha256"):
        raise CheckpointError(f"{path.name} is damaged: its tensor data does not match the checksum written with it")
    if with_state:
        _load_state(path, meta, "cpu", step, size - 8 - n)
    return step, config, meta


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``run_dir`` whose header and size are intact, or None."""
    return _last_good(run_dir)


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
        parts = _mismatches(("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
        raise CheckpointError(f"the {what} weights do not fit this network: " + parts)
    module.load_state_dict(state)


def _mismatches(*groups: tuple[str, list[str]]) -> str:
    """'2 missing (e.g. a), 1 of another shape (e.g. b)' for the non-empty (words, names) groups, in order."""
    return ", ".join(f"{len(names)} {words} (e.g. {names[0]})" for words, names in groups if names)
