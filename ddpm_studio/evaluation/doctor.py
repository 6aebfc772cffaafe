"""The dataset doctor: what in an image folder will surprise the user after hours of training.

``diagnose(paths, image_size=32, flip=False)`` reads every image file under the given folders
(regular files only; never a pipe or a device) and returns a :class:`DoctorReport` of
:class:`Finding`s, each with the files it concerns and plain advice:

- exact duplicates (same bytes, SHA-256) and near duplicates (16 x 16 grayscale thumbnails of the
  whole image within ``NEAR_DUPLICATE_RMSE`` of each other), with a safe fix: exclude all but the
  first file of each group (the shortest name, so "a.png" stays and "a copy.png" goes). The rule
  is ``data.duplicates``', which the loader applies itself with ``DataConfig.exclude_duplicates``
  (``train --exclude-duplicates``, the Dataset tab's button);
- mixed sizes (non-square images lose their edges to the centre crop; small ones are upsampled)
  and mixed modes (grayscale with colour, transparency, palettes);
- images whose left-right mirror is unlike the set (text, digits, logos, profiles facing one
  way): flip augmentation would teach the model mirrored ones;
- very small sets: what to expect (memorisation) and settings to start from;
- very large images, downscaled a long way (and images over the pixel limit, which are refused).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_studio.data import duplicates as dup
from ddpm_studio.data.decode import IMAGE_EXTENSIONS
from ddpm_studio.data.duplicates import NEAR_DUPLICATE_RMSE, THUMB  # noqa: F401 - the rule lives in data/

MIRROR_RATIO = 1.5  # an image whose mirror is this much farther from the set than itself
MIRROR_SET_RATIO = 1.25  # the set's median ratio above which flip augmentation gets a warning
SMALL_SET = 200
TINY_SET = 30
LARGE_FACTOR = 8  # short side more than 8x the training size
MAX_LISTED = 200  # files kept per finding (the count says how many there are)


@dataclass
class Finding:
    # exact_duplicates, near_duplicates, mixed_sizes, mixed_modes, mirror, small_set, large_images, unreadable
    kind: str
    severity: str  # "warning" or "info"
    title: str  # one line
    advice: str  # plain words: what it means, what to do
    files: list[str] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # duplicates: the files that are one image
    exclude: list[str] = field(default_factory=list)  # the safe fix: files to leave out (empty: no fix)

    @property
    def fix_label(self) -> str:
        return f"Exclude {len(self.exclude)} duplicate file(s)" if self.exclude else ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "title": self.title, "advice": self.advice,
                "files": self.files, "groups": self.groups, "exclude": self.exclude}


@dataclass
class DoctorReport:
    findings: list[Finding]
    files: list[str]  # every image file read
    seconds: float = 0.0

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def exclude(self) -> list[str]:
        """Every file the duplicate fixes would leave out."""
        seen: list[str] = []
        for f in self.findings:
            seen += [p for p in f.exclude if p not in seen]
        return seen

    def kept_files(self) -> list[str]:
        drop = set(self.exclude())
        return [p for p in self.files if p not in drop]

    def summary(self) -> str:
        w = sum(f.severity == "warning" for f in self.findings)
        if not self.findings:
            return f"{len(self.files):,} images: nothing to report"
        return f"{len(self.files):,} images: {w} warning(s), {len(self.findings) - w} note(s)"

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "num_files": len(self.files), "seconds": self.seconds,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass
class _Info:
    path: str
    sha: str
    width: int
    height: int
    mode: str
    gray: np.ndarray  # (THUMB, THUMB) float32, the whole image squeezed, 0-1
    square: np.ndarray  # (THUMB, THUMB, 3) float32, the centre square as training sees it, 0-1


def image_files(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files in path order, [(path, why it was left out)]) under folders and files."""
    found, bad = [], []
    for root in paths:
        root = str(root)
        if os.path.isfile(root):
            found.append(root)
            continue
        if not os.path.isdir(root):
            raise ValueError(f"{root} does not exist")
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in names:
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                p = os.path.join(folder, name)
                try:
                    mode = os.stat(p).st_mode
                except OSError as e:
                    bad.append((p, f"cannot be read ({e.strerror or e})"))
                    continue
                if not stat.S_ISREG(mode):
                    bad.append((p, "not a regular file (not opened)"))
                    continue
                found.append(p)
    found.sort(key=lambda p: (p.casefold(), p))
    return found, bad


def _read(path: str) -> _Info:
    data = dup.read_bytes(path)
    rgb, width, height, mode = dup.open_small(data)
    s = min(rgb.size)
    left, top = (rgb.width - s) // 2, (rgb.height - s) // 2
    sq = rgb.crop((left, top, left + s, top + s)).resize((THUMB, THUMB), Image.Resampling.BOX)
    return _Info(path, hashlib.sha256(data).hexdigest(), width, height, mode, dup.gray_thumbnail(rgb),
                 np.asarray(sq, np.float32) / 255.0)


def _nearest_other(a: np.ndarray, b: np.ndarray, same: bool) -> np.ndarray:
    """For each row of a, the RMSE to the nearest row of b (excluding the same index when ``same``)."""
    out = np.empty(len(a), np.float64)
    b2 = (b * b).sum(1)
    d = a.shape[1]
    for start in range(0, len(a), 1024):
        blk = a[start:start + 1024]
        d2 = (blk * blk).sum(1)[:, None] + b2[None, :] - 2.0 * blk @ b.T  # (blk, len(b))
        if same:
            d2[np.arange(len(blk)), np.arange(start, start + len(blk))] = np.inf
        out[start:start + len(blk)] = np.sqrt(np.clip(d2.min(1), 0, None) / d)
    return out


def _listed(paths: list[str]) -> list[str]:
    return paths[:MAX_LISTED]


def diagnose(paths, *, image_size: int = 32, flip: bool = False, progress=None, should_stop=None) -> DoctorReport:
    """Examine the images under ``paths`` (folders and/or files) for training at ``image_size`` px."""
    t0 = time.perf_counter()
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files, bad = image_files(paths)
    infos = _read_all(files, bad, progress, should_stop)
    findings = _unreadable(bad)
    names = [x.path for x in infos]
    if not infos:
        if not bad:
            findings.append(Finding("unreadable", "warning", "no image files found",
                                    f"Nothing with an image extension ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                                    "is here."))
        return DoctorReport(findings, names, time.perf_counter() - t0)
    groups = dup.group_duplicates(names, [x.sha for x in infos], [x.gray for x in infos])
    uniq = groups.distinct
    findings += _exact_duplicates(groups, names)
    findings += _near_duplicates(groups, names)
    findings += _mixed_sizes(infos, names, image_size)
    findings += _mixed_modes(infos)
    findings += _mirror(infos, names, uniq, flip)
    findings += _small_set(len(uniq), flip)
    findings += _large_images(infos, image_size)
    return DoctorReport(findings, names, time.perf_counter() - t0)


def _read_all(files: list[str], bad: list[tuple[str, str]], progress, should_stop) -> list[_Info]:
    """Every readable file's :class:`_Info`; an unreadable one is appended to ``bad`` with the reason."""
    infos: list[_Info] = []
    for i, p in enumerate(files):
        if should_stop is not None and should_stop():
            from ddpm_studio.data import Cancelled

            raise Cancelled("the dataset check was cancelled")
        try:
            infos.append(_read(p))
        except Exception as e:  # noqa: BLE001 - every unreadable file becomes a finding, nothing raises
            bad.append((p, str(e) or type(e).__name__))
        if progress is not None and (i % 64 == 0 or i == len(files) - 1):
            progress(i + 1, len(files), f"Checking {i + 1:,} of {len(files):,} images")
    return infos


def _unreadable(bad: list[tuple[str, str]]) -> list[Finding]:
    if not bad:
        return []
    reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in bad[:5])
    return [Finding("unreadable", "warning", f"{len(bad)} file(s) cannot be used",
                    "They are skipped when the folder is loaded: " + reasons,
                    files=_listed([p for p, _ in bad]))]


# -- duplicates -----------------------------------------------------------------------------------

def _exact_duplicates(groups: dup.DuplicateGroups, names: list[str]) -> list[Finding]:
    exact = groups.exact
    if not exact:
        return []
    extra = [names[i] for g in exact for i in g[1:]]
    return [Finding(
        "exact_duplicates", "warning", f"{len(extra)} exact duplicate file(s) in {len(exact)} group(s)",
        "The same picture more than once weighs it more in training and makes copies of it likelier. "
        "Excluding the extra copies keeps the first file of each group (the shortest name).",
        files=_listed(extra), groups=[[names[i] for i in g] for g in exact[:MAX_LISTED]], exclude=extra)]


def _near_duplicates(groups: dup.DuplicateGroups, names: list[str]) -> list[Finding]:
    near = groups.near
    if not near:
        return []
    extra = [names[i] for grp in near for i in grp[1:]]
    return [Finding(
        "near_duplicates", "warning", f"{len(extra)} near duplicate(s) in {len(near)} group(s)",
        "These look the same at thumbnail size (a re-save, a resize or a small edit). Look at the groups; "
        "excluding keeps the first file of each group (the shortest name).",
        files=_listed(extra), groups=[[names[i] for i in grp] for grp in near[:MAX_LISTED]], exclude=extra)]


# -- sizes and modes ------------------------------------------------------------------------------

def _mixed_sizes(infos: list[_Info], names: list[str], image_size: int) -> list[Finding]:
    sizes = {(x.width, x.height) for x in infos}
    if len(sizes) <= 1:
        return []
    non_square = [x.path for x in infos if max(x.width, x.height) > 1.1 * min(x.width, x.height)]
    small = [x.path for x in infos if min(x.width, x.height) < image_size]
    parts = [f"{len(sizes)} different sizes"]
    if non_square:
        parts.append(f"{len(non_square)} not square: the centre crop cuts their edges off")
    if small:
        parts.append(f"{len(small)} smaller than {image_size} px: they are enlarged and look blurry")
    return [Finding("mixed_sizes", "warning" if non_square or small else "info", "mixed image sizes",
                    "; ".join(parts) + ". Crop them the way you want them, or set a Minimum size to skip small ones.",
                    files=_listed(sorted(set(non_square + small)) or names))]


_MODE_WORDS = {"L": "grayscale", "1": "black and white", "LA": "grayscale with transparency",
               "RGBA": "colour with transparency", "P": "palette colour", "RGB": "colour", "CMYK": "CMYK colour"}


def _mixed_modes(infos: list[_Info]) -> list[Finding]:
    modes: dict[str, list[str]] = {}
    for x in infos:
        modes.setdefault(_MODE_WORDS.get(x.mode, x.mode), []).append(x.path)
    if len(modes) <= 1:
        return []
    desc = ", ".join(f"{len(v)} {k}" for k, v in sorted(modes.items(), key=lambda kv: -len(kv[1])))
    commonest = max(modes, key=lambda m: len(modes[m]))
    return [Finding("mixed_modes", "info", "mixed image modes",
                    f"{desc}. With Channels set to Automatic the set trains in colour unless every image is "
                    "grayscale; transparent pixels are painted onto the background colour.",
                    files=_listed([p for k, v in modes.items() if k != commonest for p in v]))]


# -- mirror ---------------------------------------------------------------------------------------

def _mirror(infos: list[_Info], names: list[str], uniq: list[int], flip: bool) -> list[Finding]:
    if len(uniq) < 8:
        return []
    sq = np.stack([infos[i].square for i in uniq]).astype(np.float32)  # (U, T, T, 3)
    flat = sq.reshape(len(sq), -1)  # (U, T*T*3)
    mirrored = sq[:, :, ::-1, :].reshape(len(sq), -1)  # (U, T*T*3), each image flipped left-right
    own = _nearest_other(flat, flat, same=True)
    mir = _nearest_other(mirrored, flat, same=True)
    ratio = mir / np.maximum(own, 1e-3)
    odd = [names[uniq[i]] for i in np.argsort(-ratio) if ratio[i] > MIRROR_RATIO]
    median = float(np.median(ratio))
    if not (median > MIRROR_SET_RATIO or len(odd) > 0.25 * len(uniq)):
        return []
    advice = ("Turn off random horizontal flip: the model would learn mirrored ones." if flip
              else "Leave random horizontal flip off.")
    return [Finding(
        "mirror", "warning" if flip else "info", "mirrored images do not look like this set",
        f"Flipped left-right, these images are {median:.1f}x farther from the rest than as they are (text, digits, "
        "logos, things facing one way). " + advice,
        files=_listed(odd))]


# -- size of the set and of its images ------------------------------------------------------------

def _small_set(distinct: int, flip: bool) -> list[Finding]:
    if distinct >= SMALL_SET:
        return []
    return [Finding(
        "small_set", "warning" if distinct < TINY_SET else "info", f"a small set: {distinct} distinct image(s)",
        f"With {distinct} images a model learns them by heart: early samples are blends, later ones copies of "
        "training images (the smaller the set, the sooner). Start from the tiny preset at 16-32 px, "
        + ("turn on random horizontal flip if mirrored images make sense, " if not flip else "")
        + "save checkpoints often and watch the memorisation check (Evaluate, or ddpm-studio nearest); "
        "stop when samples turn into near-copies. More images help more than more steps.",
        files=[])]


def _large_images(infos: list[_Info], image_size: int) -> list[Finding]:
    large = [x.path for x in infos if min(x.width, x.height) > LARGE_FACTOR * image_size]
    if not large:
        return []
    biggest = max(infos, key=lambda x: x.width * x.height)
    return [Finding(
        "large_images", "info", f"{len(large)} image(s) over {LARGE_FACTOR}x the training size",
        f"They are downscaled to {image_size} px (the largest, {Path(biggest.path).name}, is "
        f"{biggest.width}x{biggest.height}): small details vanish, and decoding them is slow the first time "
        "(the result is cached). Crop to the part that matters, or train at a larger image size.",
        files=_listed(large))]
