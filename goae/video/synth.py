"""A synthetic hand-held portrait clip with a known camera motion, made from one photo (tests, benchmarks).

No licensed portrait clip ships with goae, so tests and benchmarks/video_jitter.py film a still photo with
a simulated hand-held camera: every frame is the photo under a known 2-D similarity (translation, in-plane
rotation, zoom), so where the face is in each frame is known exactly and the jitter a tracker adds can be
measured against the truth. The motion is a slow drift plus hand shake (three sines each at 2.7-8.7 Hz; on
a 384 px frame about +-3 px and +-0.6 degree), a slow zoom-in, an optional deliberate pan, and frames where
the face is covered (a grey patch over it) or out of the frame.

Because the head itself does not move, the true yaw and pitch are constant (the crop camera is estimated
from the face's appearance, which a 2-D motion does not change), and the true crop box of frame t is the
crop of the photo's own 5 points moved by frame t's transform.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COVERED, OUT_OF_FRAME = "covered", "out_of_frame"


@dataclass
class SyntheticClip:
    frames: np.ndarray                 # uint8 [T,H,W,3]
    fps: float
    transforms: np.ndarray             # [T,2,3]: source-photo pixel (x, y, 1) -> frame pixel
    hidden: dict[int, str] = field(default_factory=dict)   # frame -> COVERED / OUT_OF_FRAME

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Source-photo points [n,2] -> their position in every frame [T,n,2]."""
        p = np.concatenate([np.asarray(points, np.float64), np.ones((len(points), 1))], axis=1)
        return np.einsum("tij,nj->tni", self.transforms, p)

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.frames)) / self.fps


def _sines(t: np.ndarray, amps, freqs, phases) -> np.ndarray:
    return sum(a * np.sin(2 * math.pi * f * t + p) for a, f, p in zip(amps, freqs, phases))


def handheld_motion(n_frames: int, fps: float, seed: int = 0, shake: float = 1.0, drift: float = 1.0,
                    unit: float = 1.0) -> dict[str, np.ndarray]:
    """Per-frame tx, ty (px, times `unit`), rotation (degrees) and zoom (factor) of a hand-held camera."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames) / fps
    ph = lambda k: rng.uniform(0, 2 * math.pi, k)  # noqa: E731
    dur = max(n_frames / fps, 1e-9)
    return {
        "tx": unit * (drift * 10 * np.sin(2 * math.pi * 0.3 * t + ph(1)[0])
                      + shake * _sines(t, (2.0, 1.2, 0.6), (3.1, 5.3, 8.7), ph(3))),
        "ty": unit * (drift * 6 * np.sin(2 * math.pi * 0.2 * t + ph(1)[0])
                      + shake * _sines(t, (1.6, 1.0, 0.5), (2.9, 4.7, 7.9), ph(3))),
        "rot": drift * 2.0 * np.sin(2 * math.pi * 0.25 * t + ph(1)[0])
               + shake * _sines(t, (0.5, 0.3), (2.7, 4.9), ph(2)),
        "zoom": 1 + drift * 0.08 * t / dur + shake * _sines(t, (0.008,), (3.7,), ph(1)),
    }


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def handheld_clip(photo: Image.Image | np.ndarray, center: tuple[float, float], extent: float, *,
                  size: tuple[int, int] = (384, 384), n_frames: int = 25, fps: float = 25.0, seed: int = 0,
                  shake: float = 1.0, drift: float = 1.0, covered: tuple[int, ...] = (),
                  out_of_frame: tuple[int, ...] = (), pan: tuple[int, int, float] | None = None,
                  face_box: tuple[float, float, float, float] | None = None) -> SyntheticClip:
    """Film `photo` with a hand-held camera: frame size (W, H); the source square of side `extent` around
    `center` fills the frame's shorter side at zoom 1. `pan` = (first frame, frames, pixels): a deliberate
    smooth horizontal pan. `covered` frames get a grey patch over `face_box` (source px; needed then)."""
    im = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo))
    im = im.convert("RGB")
    W, H = size
    unit = min(W, H) / 384
    m = handheld_motion(n_frames, fps, seed, shake, drift, unit)
    t = np.arange(n_frames)
    if pan is not None:
        start, frames, pixels = pan
        m["tx"] = m["tx"] + pixels * smoothstep((t - start) / max(frames, 1))
    hidden = {int(i): COVERED for i in covered}
    for i in out_of_frame:
        m["tx"][i] += 1.2 * W          # the face leaves the frame to the right
        hidden[int(i)] = OUT_OF_FRAME
    base = min(W, H) / float(extent)
    frames, mats = [], []
    for i in range(n_frames):
        s, r = base * m["zoom"][i], math.radians(m["rot"][i])
        R = s * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
        off = np.array([W / 2 + m["tx"][i], H / 2 + m["ty"][i]]) - R @ np.asarray(center, np.float64)
        A = np.concatenate([R, off[:, None]], axis=1)              # source -> frame
        Ai = np.linalg.inv(np.concatenate([A, [[0, 0, 1]]]))[:2]   # frame -> source (what PIL wants)
        f = im.transform((W, H), Image.Transform.AFFINE, data=tuple(Ai.reshape(-1)),
                         resample=Image.Resampling.BICUBIC, fillcolor=(40, 40, 40))
        if i in hidden and hidden[i] == COVERED:
            if face_box is None:
                raise ValueError("covered frames need face_box")
            l, tp, rr, b = face_box
            cx, cy, w, h = (l + rr) / 2, (tp + b) / 2, (rr - l) * 1.5, (b - tp) * 1.5
            corners = np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2],
                                [cx - w / 2, cy + h / 2]]) @ A[:, :2].T + A[:, 2]
            ImageDraw.Draw(f).polygon([tuple(p) for p in corners], fill=(128, 120, 112))
        frames.append(np.asarray(f))
        mats.append(A)
    return SyntheticClip(np.stack(frames), float(fps), np.stack(mats), hidden)


def write_clip(clip: SyntheticClip, path: str | os.PathLike, audio_hz: float | None = 440.0,
               codec: str | None = None, audio_codec: str | None = None, crf: int = 18,
               noise: float = 0.0, seed: int = 0, times=None, audio_seconds: float | None = None) -> Path:
    """Encode the clip (with a sine tone as its audio when audio_hz is set). The container follows the suffix:
    .mp4/.mov (H.264 + AAC; audio_codec='pcm_s16le' for a MOV with PCM), .webm (VP9 + Opus). `noise` adds
    Gaussian sensor noise (std in 8-bit levels, fresh every frame) before encoding at `crf`. `times` (seconds,
    increasing) places each frame, for a variable frame rate; `audio_seconds`: the tone's length (default: the
    clip's length at its fps)."""
    import av

    path = Path(path)
    webm = path.suffix.lower() == ".webm"
    codec = codec or ("libvpx-vp9" if webm else "libx264")
    audio_codec = audio_codec or ("libopus" if webm else "aac")
    rate = Fraction(clip.fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as c:
        v = c.add_stream(codec, rate=rate)
        v.height, v.width = clip.frames.shape[1:3]
        v.pix_fmt = "yuv420p"
        v.options = {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf + 2), "b": "0",
                                                                  "deadline": "realtime", "cpu-used": "8"}
        if times is not None:       # own time stamps (90 kHz clock); no B-frames, whose decode times assume CFR
            v.codec_context.time_base = Fraction(1, 90000)
            v.options = {**v.options, "bf": "0"}
        a = None
        if audio_hz:
            sr = 48000
            a = c.add_stream(audio_codec, rate=sr)
            a.layout = "mono"
        rng = np.random.default_rng(seed)
        for i, f in enumerate(clip.frames):
            if noise:
                f = np.clip(f + rng.normal(0, noise, f.shape), 0, 255).round().astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if times is not None:
                vf.pts, vf.time_base = round(times[i] * 90000), Fraction(1, 90000)
            c.mux(v.encode(vf))
        c.mux(v.encode(None))
        if a is not None:
            n = int(round((audio_seconds if audio_seconds is not None else len(clip.frames) / clip.fps) * sr))
            tone = (0.3 * np.sin(2 * math.pi * audio_hz * np.arange(n) / sr)).astype(np.float32)
            fmt = a.codec_context.format.name if a.codec_context.format else "fltp"
            chunk = a.codec_context.frame_size or 1024
            for s0 in range(0, n, chunk):
                part = tone[s0:s0 + chunk]
                if fmt.startswith("s16"):
                    arr = (part * 32767).astype(np.int16)[None]
                    frame = av.AudioFrame.from_ndarray(arr, format="s16", layout="mono")
                else:
                    frame = av.AudioFrame.from_ndarray(part[None], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sr, s0
                c.mux(a.encode(frame))
            c.mux(a.encode(None))
    return path
