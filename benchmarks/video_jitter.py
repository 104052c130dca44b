"""Video tracking: jitter with and without smoothing, the lag the filter adds, and clip inversion speed.

    python benchmarks/video_jitter.py                       # jitter + lag (a few minutes on a 2-core CPU)
    python benchmarks/video_jitter.py --speed               # + frames/s at the released size, fp32 and bf16
    python benchmarks/video_jitter.py --sweep               # + One-Euro settings one side at a time (the defaults)
    python benchmarks/video_jitter.py --speed --no-jitter   # only the speed rows (keeps the jitter of the last report)

The clip is synthetic (goae.video.synth): a real photo filmed by a simulated hand-held camera, so the face's
true place in every frame is known. Two conditions: the frames as rendered ("lossless"), and with sensor
noise (std 3 levels) and H.264 at CRF 28, decoded back ("noisy_h264"). Detection runs once per frame; every
filter setting replays the same detections (FaceTracker's `detect` hook).

* crop jitter: std of the frame-to-frame change of (crop box - true crop box), pixels of the frame, for the
  box centre (x and y pooled) and its size; the true box is the official crop of the photo's own 5 points
  moved by the frame's known transform. Frames next to a no-face frame are left out.
* camera jitter: std of the frame-to-frame change of yaw and of pitch, degrees. The head does not move, so
  the truth is a constant: every change is jitter.
* lag on a head turn: a turn cannot be filmed from a still photo, so the camera filter is run on a
  synthetic turn (yaw 0 -> 30 deg over 0.6 s, smoothstep; peak 75 deg/s) with the per-frame yaw/pitch noise
  measured on the clip added; lag = mean time by which the filtered yaw crosses the 10..90% levels after
  the true yaw. Crop lag: the same on a real clip with a deliberate pan (160 px in 0.5 s), crop centre vs truth.
* speed: `invert_video` on the clip (tracking, inversion, the orbit view, encoding; weights loaded before, one
  warm-up batch), released size, random weights, fp32 and bf16; `model_only_s_per_frame` is one batch of
  pipe() + render_view on the same crops in the same process, so the video path's own cost shows even on a
  busy machine (the 1-minute load average is recorded with each row).
Results go to benchmarks/results/video_jitter.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from goae.align import crop_params_from_lm5, detect_faces, load_image  # noqa: E402
from goae.camera import camera_label, yaw_pitch_from_label  # noqa: E402
from goae.video import CameraFilter, FaceTracker, SmoothingOptions  # noqa: E402
from goae.video.synth import handheld_clip  # noqa: E402

EXAMPLES = Path(os.environ.get("GOAE_EXAMPLES_DIR", ROOT.parent / "shared" / "examples"))


def make_clip(photo_path: Path, size: int, n_frames: int, fps: float, seed: int, pan=None, hidden=True):
    photo = load_image(photo_path)
    face = max(detect_faces(photo), key=lambda f: f.area)
    l, t, r, b = face.box
    kw = dict(covered=(int(n_frames * 0.4),), out_of_frame=(int(n_frames * 0.7), int(n_frames * 0.7) + 1)) \
        if hidden else {}
    clip = handheld_clip(photo, ((l + r) / 2, (t + b) / 2 + 0.1 * (b - t)), 3.2 * (r - l), size=(size, size),
                         n_frames=n_frames, fps=fps, seed=seed, pan=pan, face_box=face.box, **kw)
    return clip, face


def decoded_frames(clip, condition: dict) -> np.ndarray:
    """The clip as a tracker sees it: lossless, or with sensor noise and H.264 at a phone-like CRF (decoded)."""
    if not condition.get("noise") and condition.get("crf") is None:
        return clip.frames
    from goae.video import iter_frames
    from goae.video.synth import write_clip
    with tempfile.TemporaryDirectory() as tmp:
        path = write_clip(clip, Path(tmp) / "clip.mp4", audio_hz=None, crf=condition.get("crf", 18),
                          noise=condition.get("noise", 0.0))
        return np.stack([f for _, _, f in iter_frames(path)])


def detect_all(frames) -> list:
    from PIL import Image
    return [detect_faces(Image.fromarray(f)) for f in frames]


def replay(frames, times, detections, smoothing):
    from PIL import Image
    it = iter(detections)
    tracker = FaceTracker(smoothing=smoothing, detect=lambda im: next(it))
    return [tracker.update(Image.fromarray(f), t) for f, t in zip(frames, times)]


def _box_cs(box) -> np.ndarray:
    l, t, r, b = box
    return np.array([(l + r) / 2, (t + b) / 2, r - l])


def true_boxes(clip, face) -> np.ndarray:
    H, W = clip.frames.shape[1:3]
    lm = clip.map_points(face.lm5)
    return np.stack([_box_cs(crop_params_from_lm5(p.astype(np.float32), (W, H)).final_box_src) for p in lm])


def _pairs(frames) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a, b in zip(frames, frames[1:]) if a.face is not None and b.face is not None]


def yaw_pitch(camera) -> tuple[float, float]:
    y, p = yaw_pitch_from_label(torch.as_tensor(np.asarray(camera, np.float32))[None])
    return math.degrees(float(y[0])), math.degrees(float(p[0]))


def jitter(frames, truth, raw: bool) -> dict:
    pairs = _pairs(frames)
    by = {f.index: f for f in frames}
    box = lambda i: _box_cs(by[i].raw_box if raw else by[i].face.box)  # noqa: E731
    cam = lambda i: yaw_pitch(by[i].raw_camera if raw else by[i].face.camera)  # noqa: E731
    d_err = np.array([(box(j) - truth[j]) - (box(i) - truth[i]) for i, j in pairs])
    d_cam = np.array([np.subtract(cam(j), cam(i)) for i, j in pairs])
    err = np.array([box(i) - truth[i] for i, _ in pairs])
    return {"crop_centre_px": float(np.sqrt((d_err[:, :2] ** 2).mean() - d_err[:, :2].mean() ** 2)),
            "crop_size_px": float(d_err[:, 2].std()),
            "crop_centre_error_rms_px": float(np.sqrt(((err[:, :2] - err[:, :2].mean(0)) ** 2).mean())),
            "yaw_deg": float(d_cam[:, 0].std()), "pitch_deg": float(d_cam[:, 1].std()), "pairs": len(pairs)}


def _crossing_lag(t, truth, est, lo=0.1, hi=0.9, steps=9) -> float:
    """Mean over levels of (time est crosses it - time truth crosses it), linear interpolation."""
    a, b = truth[0], truth[-1]
    lags = []
    for q in np.linspace(lo, hi, steps):
        level = a + q * (b - a)

        def cross(x):
            s = np.sign(b - a)
            k = int(np.argmax(s * (x - level) >= 0))
            if k == 0:
                return t[0]
            x0, x1 = x[k - 1], x[k]
            return t[k - 1] + (level - x0) / (x1 - x0) * (t[k] - t[k - 1]) if x1 != x0 else t[k]
        lags.append(cross(est) - cross(truth))
    return float(np.mean(lags))


def head_turn_lag(smoothing: SmoothingOptions, fps: float, noise_deg: np.ndarray, seed: int = 0) -> dict:
    """Camera filter on a synthetic 30-degree turn (module docstring)."""
    n = int(2.0 * fps)
    t = np.arange(n) / fps
    x = np.clip((t - 0.4) / 0.6, 0, 1)
    yaw = 30 * x * x * (3 - 2 * x)
    out = {}
    measured = noise_deg[np.random.default_rng(seed).integers(0, len(noise_deg), n)]
    for name, noise in (("clean", np.zeros((n, 2))), ("with_measured_noise", measured)):
        y, p = yaw + noise[:, 0], noise[:, 1]
        labels = camera_label(torch.deg2rad(torch.as_tensor(y)), torch.deg2rad(torch.as_tensor(p))).numpy()
        f = CameraFilter(smoothing)
        est = np.array([yaw_pitch(f(c, ti))[0] for c, ti in zip(labels, t)])
        raw = np.array([yaw_pitch(c)[0] for c in labels])
        out[name] = {"lag_ms": 1000 * _crossing_lag(t, yaw, est), "raw_lag_ms": 1000 * _crossing_lag(t, yaw, raw),
                     "max_abs_error_deg": float(np.abs(est - yaw).max()),
                     "hold_std_deg": float(est[t > 1.3].std())}
    return out


def pan_lag(clip, frames, detections, truth, smoothing) -> dict:
    frames = replay(frames, clip.times, detections, smoothing)
    t = clip.times
    est = np.array([_box_cs(f.face.box)[0] for f in frames])
    raw = np.array([_box_cs(f.raw_box)[0] for f in frames])
    return {"lag_ms": 1000 * _crossing_lag(t, truth[:, 0], est),
            "raw_lag_ms": 1000 * _crossing_lag(t, truth[:, 0], raw),
            "max_abs_error_px": float(np.abs(est - truth[:, 0]).max()),
            "raw_max_abs_error_px": float(np.abs(raw - truth[:, 0]).max())}


def speed(photo_path: Path, frames: int, batch: int, size: int, presets=("random",), modes=("fp32", "bf16")) -> list:
    from goae.pipeline import load_pipeline
    from goae.runtime import setup_runtime
    from goae.video import VideoOptions, invert_video
    from goae.video.synth import write_clip

    setup_runtime("cpu")
    clip, _ = make_clip(photo_path, size, frames, 25.0, 0, hidden=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = write_clip(clip, Path(tmp) / "clip.mp4")
        for preset in presets:
            pipe = load_pipeline(preset)
            for mode in modes:
                if mode == "fp32":
                    pipe.disable_fast_path()
                else:
                    pipe.enable_fast_path(mode)
                # warm-up: one batch (first-call allocations, kernel build)
                invert_video(pipe, src, Path(tmp) / "warm", VideoOptions(batch_size=batch, max_frames=batch),
                             overwrite=True)
                t0 = time.perf_counter()
                folder = invert_video(pipe, src, Path(tmp) / f"{preset}-{mode}", VideoOptions(batch_size=batch))
                dt = time.perf_counter() - t0
                # the model alone on the same crops, same batch, same process: inversion + one view per frame
                meta = json.loads((folder / "result.json").read_text())
                crops = [f.face.image for f in replay(clip.frames[:batch], clip.times[:batch],
                                                      detect_all(clip.frames[:batch]), SmoothingOptions())]
                cams = np.stack([r["camera"] for r in meta["per_frame"][:batch]])
                t1 = time.perf_counter()
                out = pipe(crops, cams, output_type=None)
                pipe.render_view(out, torch.as_tensor(cams), output_type=None)
                bare = (time.perf_counter() - t1) / batch
                rows.append({"weights": preset, "precision": mode, "batch": batch, "frames": frames,
                             "seconds": round(dt, 2), "frames_per_s": round(frames / dt, 4),
                             "s_per_frame": round(dt / frames, 3), "model_only_s_per_frame": round(bare, 3),
                             "load_average_1min": round(os.getloadavg()[0], 2)})
                print(rows[-1], flush=True)
    return rows


CONDITIONS = {"lossless": {}, "noisy_h264": {"noise": 3.0, "crf": 28}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=EXAMPLES / "wild" / "obama.jpg")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--no-jitter", action="store_true", help="only the speed rows (with --speed)")
    ap.add_argument("--speed-frames", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video_jitter.json")
    args = ap.parse_args(argv)

    default = SmoothingOptions()
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "clip": {"photo": args.photo.name, "size": args.size, "frames": args.frames, "fps": args.fps,
                       "seeds": args.seeds, "conditions": CONDITIONS},
              "defaults": default.as_dict(), "jitter": {}, "head_turn": {}, "pan": {}, "sweep": {}}
    settings = {"off": None, "default": default}
    if args.sweep:   # landmark and camera settings vary one side at a time (they barely interact)
        d = default
        for lc in (1.0, 2.0, 4.0, 8.0):
            for lb in (1.0, 4.0, 16.0, 64.0):
                settings[f"landmarks {lc}/{lb}"] = SmoothingOptions(lc, lb, d.camera_min_cutoff, d.camera_beta)
        for cc in (0.25, 0.5, 1.0, 2.0):
            for cb in (0.0, 0.5, 1.0, 4.0):
                settings[f"camera {cc}/{cb}"] = SmoothingOptions(d.landmark_min_cutoff, d.landmark_beta, cc, cb)
    mean = lambda rows: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}  # noqa: E731
    for cname, condition in ({} if args.no_jitter else CONDITIONS).items():
        per_seed = {k: [] for k in settings}
        noise = []
        for seed in args.seeds:
            clip, face = make_clip(args.photo, args.size, args.frames, args.fps, seed)
            frames = decoded_frames(clip, condition)
            det = detect_all(frames)
            truth = true_boxes(clip, face)
            for name, sm in settings.items():
                tracked = replay(frames, clip.times, det, sm)
                per_seed[name].append(jitter(tracked, truth, raw=False))
                if name == "off":
                    hidden = [f.index for f in tracked if f.face is None]
                    assert sorted(hidden) == sorted(clip.hidden), (hidden, clip.hidden)
                    yp = np.array([yaw_pitch(f.face.camera) for f in tracked if f.face is not None])
                    noise.append(yp - yp.mean(0))
        noise = np.concatenate(noise)
        report["jitter"][cname] = {name: mean(per_seed[name]) for name in ("off", "default")}
        report["jitter"][cname]["raw_noise_std_deg"] = {"yaw": round(float(noise[:, 0].std()), 4),
                                                        "pitch": round(float(noise[:, 1].std()), 4)}
        report["head_turn"][cname] = head_turn_lag(default, args.fps, noise)
        # deliberate pan: 160 px (at 512) in 0.5 s
        pan_px = 160 * args.size / 512
        pclip, pface = make_clip(args.photo, args.size, args.frames, args.fps, 0,
                                 pan=(int(0.5 * args.fps), int(0.5 * args.fps), pan_px), hidden=False)
        pframes = decoded_frames(pclip, condition)
        pdet = detect_all(pframes)
        ptruth = true_boxes(pclip, pface)
        report["pan"][cname] = {"pixels": pan_px, "seconds": 0.5, **pan_lag(pclip, pframes, pdet, ptruth, default)}
        if args.sweep:
            rows = []
            for name, sm in settings.items():
                row = {"setting": name, **mean(per_seed[name])}
                if sm is not None and name.startswith("camera"):
                    row["turn_lag_ms"] = round(head_turn_lag(sm, args.fps, noise)["with_measured_noise"]["lag_ms"], 1)
                if sm is not None and name.startswith("landmarks"):
                    row["pan_lag_ms"] = round(pan_lag(pclip, pframes, pdet, ptruth, sm)["lag_ms"], 1)
                rows.append(row)
            report["sweep"][cname] = rows
    if args.no_jitter and args.out.is_file():   # keep the jitter part of an earlier report
        old = json.loads(args.out.read_text())
        report.update({k: old[k] for k in ("jitter", "head_turn", "pan", "sweep") if k in old})
    if args.speed:
        report["speed"] = speed(args.photo, args.speed_frames, args.batch, args.size)
    print(json.dumps({k: v for k, v in report.items() if k != "sweep"}, indent=1))
    for cname, rows in report["sweep"].items():
        print(f"--- sweep, {cname}")
        for row in rows:
            print(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from goae.io import atomic_write_bytes
    atomic_write_bytes(args.out, json.dumps(report, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
