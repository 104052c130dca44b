"""Accuracy and speed of goae.align on the shared examples.

Aligned GOAE portraits (ground-truth EG3D labels): camera yaw/pitch, estimated vs label, for both camera
methods, and the IoU of the re-aligned crop box with the full 512 image. Wild photos: faces found and time.

    python benchmarks/align_accuracy.py [--examples ../shared/examples]
Writes benchmarks/results/align_accuracy.json.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run from a checkout without installing
from goae.align import AlignError, align_face, estimate_camera  # noqa: E402

METHODS = ("landmarks", "matrix")


def camera_yaw_pitch(label):
    """Yaw and elevation (degrees) of the camera position seen from the EG3D look-at point (0, 0, 0.2)."""
    c = np.asarray(label, np.float64)[[3, 7, 11]] - [0.0, 0.0, 0.2]
    return float(np.degrees(np.arctan2(c[0], c[2]))), float(np.degrees(np.arctan2(c[1], np.hypot(c[0], c[2]))))


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def timed_align(path):
    t = time.perf_counter()
    try:
        a = align_face(path)
    except AlignError as e:
        return None, type(e).__name__, 1000 * (time.perf_counter() - t)
    return a, None, 1000 * (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=os.environ.get("GOAE_EXAMPLES_DIR", ROOT.parent / "shared" / "examples"))
    ap.add_argument("--out", default=ROOT / "benchmarks" / "results" / "align_accuracy.json")
    args = ap.parse_args()
    ex = Path(args.examples)
    folder = ex / "goae" / "real_person"
    labels = dict(json.loads((folder / "label.json").read_text())["labels"])
    align_face(ex / "wild" / "astronaut.png")   # warm-up: mediapipe start-up is not per-image time

    print(f"{'image':8s} {'GT yaw':>7s} {'GT pit':>7s} | " + " | ".join(
        f"{m[:5]} yaw  pit  e_y  e_p" for m in METHODS) + f" | {'IoU':>5s} {'ms':>5s}")
    rows, err = [], {m: [] for m in METHODS}
    for name in sorted(labels, key=lambda n: int(n.split(".")[0])):
        gt = camera_yaw_pitch(labels[name])
        a, error, ms = timed_align(folder / name)
        row = {"image": name, "gt_yaw": gt[0], "gt_pitch": gt[1], "ms": ms, "error": error}
        if a is None:
            print(f"{name:8s} {gt[0]:7.1f} {gt[1]:7.1f} | {error} ({ms:.0f} ms)")
            rows.append(row)
            continue
        cells = []
        for m in METHODS:
            c = a.camera if m == "landmarks" else estimate_camera(a.faces[a.face_index], a.crop_params, method=m)
            yp = camera_yaw_pitch(c)
            e = (yp[0] - gt[0], yp[1] - gt[1])
            err[m].append(e)
            row[m] = {"yaw": yp[0], "pitch": yp[1], "yaw_err": e[0], "pitch_err": e[1]}
            cells.append(f"{yp[0]:5.1f} {yp[1]:5.1f} {e[0]:+4.1f} {e[1]:+4.1f}")
        row["crop_iou"] = iou(a.box, (0, 0, 512, 512))
        rows.append(row)
        print(f"{name:8s} {gt[0]:7.1f} {gt[1]:7.1f} | " + " | ".join(cells) + f" | {row['crop_iou']:.3f} {ms:5.0f}")

    summary = {}
    for m in METHODS:
        e = np.abs(np.array(err[m]))
        summary[m] = {"yaw_err_mean": float(e[:, 0].mean()), "yaw_err_max": float(e[:, 0].max()),
                      "pitch_err_mean": float(e[:, 1].mean()), "pitch_err_max": float(e[:, 1].max()), "n": len(e)}
        print(f"{m:9s}: yaw err mean {e[:, 0].mean():.2f} max {e[:, 0].max():.2f} | "
              f"pitch err mean {e[:, 1].mean():.2f} max {e[:, 1].max():.2f} deg  (n={len(e)})")
    ious = [r["crop_iou"] for r in rows if "crop_iou" in r]
    summary["crop_iou_mean"], summary["crop_iou_min"] = float(np.mean(ious)), float(np.min(ious))
    print(f"re-alignment IoU: mean {np.mean(ious):.3f} min {np.min(ious):.3f}")

    wild = []
    print("\nwild photo         faces  chosen  result        ms")
    for p in sorted((ex / "wild").iterdir()):
        a, error, ms = timed_align(p)
        n = len(a.faces) if a else 0
        wild.append({"image": p.name, "faces": n, "face_index": a.face_index if a else None,
                     "box": list(a.box) if a else None, "error": error, "ms": ms})
        print(f"{p.name:18s} {n:5d}  {str(a.face_index) if a else '-':>6s}  {error or 'ok':12s} {ms:6.0f}")

    result = {"aligned": rows, "summary": summary, "wild": wild,
              "env": {"python": platform.python_version(), "machine": platform.machine(),
                      "mediapipe": __import__("mediapipe").__version__, "pillow": __import__("PIL").__version__}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
