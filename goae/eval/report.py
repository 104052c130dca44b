"""What `goae eval` writes from its per-image records: `eval.json` (the summary and every image), `metrics.csv`,
`report.png` (contact sheet of the best and worst images: input | reconstruction | views), `hist_<metric>.png`
(each metric's distribution) and `report.html`, which shows them together. Drawn with PIL; written atomically.
"""
from __future__ import annotations

import base64
import collections
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from goae.eval import metrics as M
from goae.io import atomic_write_bytes

SCHEMA = "goae-eval/1"
TILE = 128


def metric_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        for k in r.get("metrics") or {}:
            if k not in names:
                names.append(k)
    order = {k: i for i, k in enumerate(("mse", "lpips", "ssim", "id"))}
    return sorted(names, key=lambda k: (order.get(k, 9), k))


def _fid(out_root: Path, ok: list[dict]) -> dict:
    """FID of the novel views and of the reconstructions against the inputs, from the saved Inception features."""
    from safetensors.torch import load_file

    feats = collections.defaultdict(list)
    for r in ok:
        f = out_root / "images" / r["name"] / "inception.safetensors"
        if f.is_file():
            for k, v in load_file(str(f)).items():
                feats[k].append(v.double().numpy())
    if not feats:
        return {}
    stack = {k: np.concatenate(v) for k, v in feats.items()}
    result = {}
    for name, key in (("fid_views", "views"), ("fid_reconstruction", "reconstruction")):
        try:
            result[name] = M.fid(stack[key], stack["input"]) if key in stack else None
        except ValueError as e:
            result[name] = None
            result[f"{name}_note"] = str(e)
    return result


def summarise(out_root: Path, records: list[dict], run: dict) -> dict:
    from goae import __version__

    ok = [r for r in records if r.get("status") == "ok"]
    names = metric_names(ok)
    stats = {}
    for k in names:
        vals = [r["metrics"][k] for r in ok if k in r["metrics"] and math.isfinite(r["metrics"][k])]
        stats[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "min": float(np.min(vals)),
                    "max": float(np.max(vals)), "count": len(vals), "higher_is_better": M.higher_is_better(k)}
    reasons = collections.Counter(r.get("reason") or "?" for r in records if r.get("status") != "ok")
    secs = [r["seconds"] for r in ok if "seconds" in r]
    return {"schema": SCHEMA, "goae": __version__, **run, "inputs": len(records), "measured": len(ok),
            "skipped": len(records) - len(ok), "skipped_reasons": dict(reasons.most_common()),
            "metrics": stats, **_fid(out_root, ok),
            "seconds_per_image": float(np.mean(secs)) if secs else None,
            "images": [{k: v for k, v in r.items() if k != "settings"} for r in records]}


def _best_worst(ok: list[dict], metric: str, rows: int) -> tuple[list[dict], list[dict]]:
    have = [r for r in ok if metric in r["metrics"]]
    ranked = sorted(have, key=lambda r: r["metrics"][metric], reverse=M.higher_is_better(metric))
    best = ranked[:rows]
    worst = [r for r in ranked[::-1][:rows] if r not in best]
    return best, worst


def contact_sheet(out_root: Path, ok: list[dict], metric: str, rows: int, views: list[str],
                  banner: str = "") -> Image.Image | None:
    """Best and worst images by `metric`: one row each, input | reconstruction | views (tile names `views`),
    with the values; `banner` goes on top (e.g. that the weights are random)."""
    best, worst = _best_worst(ok, metric, rows)
    if not best:
        return None
    tiles = ["input", "reconstruction", *views]
    label_w, head = 180, 22 + 16 * bool(banner)
    lines = [("best", r) for r in best] + [("worst", r) for r in worst]
    sheet = Image.new("RGB", (label_w + TILE * len(tiles), head + (TILE + 4) * len(lines)), "white")
    draw = ImageDraw.Draw(sheet)
    if banner:
        draw.text((4, 4), banner, fill=(200, 0, 0))
    for j, t in enumerate(tiles):
        draw.text((label_w + j * TILE + 4, head - 17), t.replace("id_", "view "), fill="black")
    for i, (kind, r) in enumerate(lines):
        y = head + i * (TILE + 4)
        text = [f"{kind} by {metric}", r["name"][:36]] + [f"{k} {v:.4f}" for k, v in list(r["metrics"].items())[:5]]
        draw.multiline_text((4, y + 2), "\n".join(text), fill="black", spacing=2)
        for j, t in enumerate(tiles):
            p = out_root / "images" / r["name"] / f"{t}.png"
            if p.is_file():
                with Image.open(p) as im:
                    sheet.paste(im.convert("RGB").resize((TILE, TILE), Image.BILINEAR), (label_w + j * TILE, y))
    return sheet


def histogram(values: list[float], title: str, bins: int = 20, size=(360, 200)) -> Image.Image:
    """A bar histogram with its range and mean, drawn with PIL."""
    w, h = size
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    left, right, top, bottom = 30, w - 10, 24, h - 30
    bw = (right - left) / bins
    for i, c in enumerate(counts):
        bh = (bottom - top) * c / max(counts.max(), 1)
        d.rectangle([left + i * bw + 1, bottom - bh, left + (i + 1) * bw - 1, bottom], fill=(70, 110, 190))
    mean = float(np.mean(values))
    mx = left + (mean - lo) / (hi - lo) * (right - left)
    d.line([mx, top, mx, bottom], fill=(200, 40, 40), width=2)
    d.line([left, bottom, right, bottom], fill="black")
    d.text((left, 4), f"{title}: n={len(values)}, mean {mean:.4g}", fill="black")
    d.text((left, bottom + 6), f"{lo:.4g}", fill="black")
    d.text((right - 50, bottom + 6), f"{hi:.4g}", fill="black")
    d.text((4, top), str(int(counts.max())), fill="black")
    return im


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_report(out_root: Path, records: list[dict], run: dict) -> dict:
    """Write eval.json, metrics.csv, report.png, hist_*.png and report.html; return the summary."""
    out_root = Path(out_root)
    summary = summarise(out_root, records, run)
    ok = [r for r in records if r.get("status") == "ok"]
    names = metric_names(ok)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "input", "status", "reason", *names, "seconds"])
    for r in records:
        m = r.get("metrics") or {}
        w.writerow([r["name"], r["input"], r["status"], r.get("reason") or "",
                    *[f"{m[k]:.6g}" if k in m else "" for k in names], r.get("seconds", "")])
    atomic_write_bytes(out_root / "metrics.csv", buf.getvalue().encode())
    images = {}
    metric = run.get("options", {}).get("best_by", "lpips")
    metric = metric if metric in names else (names[0] if names else metric)
    o = run.get("options", {})
    views = [M.view_key(y, o.get("pitch", 0.0)) for y in o.get("yaws", ())]
    banner = "RANDOM WEIGHTS: these pictures and numbers measure nothing" if run.get("random_weights") else ""
    sheet = contact_sheet(out_root, ok, metric, int(o.get("sheet_rows", 4)), views, banner) if ok else None
    if sheet is not None:
        images["report.png"] = _png(sheet)
    for k in names:
        vals = [r["metrics"][k] for r in ok if k in r["metrics"] and math.isfinite(r["metrics"][k])]
        if vals:
            images[f"hist_{k}.png"] = _png(histogram(vals, k))
    for name, data in images.items():
        atomic_write_bytes(out_root / name, data)
    summary["files"] = {"csv": "metrics.csv", "html": "report.html", "images": sorted(images)}
    atomic_write_bytes(out_root / "eval.json", (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out_root / "report.html", _html(summary, images).encode())
    return summary


def _html(s: dict, images: dict[str, bytes]) -> str:
    from html import escape

    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v['mean']:.4f}</td><td>{v['std']:.4f}</td><td>{v['count']}</td>"
                   f"<td>{'higher' if v['higher_is_better'] else 'lower'}</td></tr>" for k, v in s["metrics"].items())
    fid = "".join(f"<p>{escape(k)}: {s[k]:.3f}</p>" for k in ("fid_views", "fid_reconstruction") if s.get(k) is not None)
    skipped = "".join(f"<li>{n} x {escape(reason)}</li>" for reason, n in s["skipped_reasons"].items())
    nets = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in s["networks"].items())
    img = "".join(f"<h3>{escape(n)}</h3><img src='data:image/png;base64,{base64.b64encode(d).decode()}'>"
                  for n, d in images.items())
    return (f"<!doctype html><meta charset='utf-8'><title>goae eval</title><h1>goae eval</h1>"
            f"<p>weights: {escape(str(s['weights']))}; device: {escape(s['device'])}; {s['measured']} of {s['inputs']} "
            f"images measured, {s['skipped']} skipped</p><ul>{skipped}</ul><h2>Networks</h2><ul>{nets}</ul>"
            f"<h2>Means</h2><table border=1><tr><th>metric</th><th>mean</th><th>std</th><th>n</th><th>better</th></tr>"
            f"{rows}</table>{fid}{img}")
