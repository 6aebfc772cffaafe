"""Draw bench_samplers.py's results.json as a PNG: quality (Frechet distance, lower is better) against
network evaluations, log-x, one line per sampler, with a dashed reference line (default: DDIM at 50).

    python benchmarks/plot_samplers.py bench_samplers_out/results.json docs/benchmarks/samplers_nfe.png

Pillow only (no matplotlib), so it runs wherever the app does.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194)]
W, H = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 50, 70  # margins: the legend sits on the right


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _series(points: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        out.setdefault(p["sampler"], []).append((int(p["nfe"]), float(p["frechet"])))
    return {k: sorted(v) for k, v in out.items() if len(v) >= 2}


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step = next(m * step for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def plot(results: dict, out: Path, *, title: str, reference: tuple[str, int] | None) -> None:
    series = _series(results["points"])
    if not series:
        raise SystemExit("results.json has no sampler with two or more points")
    nfes = sorted({n for s in series.values() for n, _ in s})
    values = [v for s in series.values() for _, v in s]
    span = max(values) - min(values) or 1.0
    y_lo, y_hi = max(0.0, min(values) - 0.08 * span), max(values) + 0.05 * span  # not from 0: curves differ ~10 %
    x_lo, x_hi = math.log(nfes[0] / 1.15), math.log(nfes[-1] * 1.15)

    def px(nfe: float, v: float) -> tuple[float, float]:
        x = LEFT + (math.log(nfe) - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT)
        y = H - BOTTOM - (v - y_lo) / (y_hi - y_lo) * (H - TOP - BOTTOM)
        return x, y

    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f, small = _font(16), _font(13)
    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline=(0, 0, 0))
    for n in nfes:  # log-x: ticks at the measured NFEs
        x, _ = px(n, 0)
        d.line([x, TOP, x, H - BOTTOM], fill=(230, 230, 230))
        d.text((x, H - BOTTOM + 6), str(n), fill=(0, 0, 0), font=small, anchor="ma")
    for v in _nice_ticks(y_lo, y_hi):
        _, y = px(nfes[0], v)
        d.line([LEFT, y, W - RIGHT, y], fill=(230, 230, 230))
        d.text((LEFT - 6, y), f"{v:g}", fill=(0, 0, 0), font=small, anchor="rm")
    d.text(((LEFT + W - RIGHT) / 2, H - 22), "network evaluations (NFE, log scale)", fill=(0, 0, 0), font=f,
           anchor="mm")
    label = Image.new("RGB", (H - TOP - BOTTOM, 24), "white")
    ImageDraw.Draw(label).text((label.width / 2, 12), "Frechet distance (lower is better)", fill=(0, 0, 0), font=f,
                               anchor="mm")
    img.paste(label.rotate(90, expand=True), (12, TOP))
    d.text(((LEFT + W - RIGHT) / 2, 22), title, fill=(0, 0, 0), font=f, anchor="mm")

    legend_y = TOP + 4
    if reference is not None:
        ref = next((v for n, v in series.get(reference[0], []) if n == reference[1]), None)
        if ref is not None:
            _, y = px(nfes[0], ref)
            for x0 in range(LEFT, W - RIGHT, 12):
                d.line([x0, y, min(x0 + 6, W - RIGHT), y], fill=(90, 90, 90), width=1)
            d.text((W - RIGHT + 12, legend_y), f"- - {reference[0]} at {reference[1]}: {ref:.2f}", fill=(90, 90, 90),
                   font=small)
            legend_y += 22
    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        xy = [px(n, v) for n, v in pts]
        d.line(xy, fill=colour, width=3)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        d.line([W - RIGHT + 12, legend_y + 8, W - RIGHT + 40, legend_y + 8], fill=colour, width=3)
        d.text((W - RIGHT + 46, legend_y), name, fill=(0, 0, 0), font=small)
        legend_y += 22
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="results.json written by bench_samplers.py")
    ap.add_argument("out", help="the PNG to write")
    ap.add_argument("--title", default=None)
    ap.add_argument("--reference", default="ddim:50", help="SAMPLER:NFE drawn as a dashed line ('' for none)")
    args = ap.parse_args()
    results = json.loads(Path(args.results).read_text())
    title = args.title or f"Sample quality vs evaluations ({results['num']} samples per point, step {results['step']})"
    ref = None
    if args.reference:
        name, _, nfe = args.reference.rpartition(":")
        ref = (name, int(nfe))
    plot(results, Path(args.out), title=title, reference=ref)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
