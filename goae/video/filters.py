"""Temporal smoothing of the face track: a One-Euro filter on the 5 alignment landmarks and on the camera.

One-Euro (Casiez, Roussel & Vogel, CHI 2012) is an exponential moving average whose cut-off frequency
rises with the signal's speed: `cutoff = min_cutoff + beta * |speed|`. A still head is smoothed hard
(detection noise, a few pixels and a degree or two, is removed); a head that turns or a camera that
pans gets a high cut-off, so the filter follows it with little lag. It is causal (no look-ahead) and
uses the frames' time stamps, so variable frame rates and gaps (frames with no face) are handled: a
long gap gives alpha ~ 1, i.e. the first frame after it is taken nearly as measured.

Here one alpha is used for a whole vector (from its RMS speed), so the 5 points are smoothed together
and the face's shape is kept; the speed is divided by `scale` so that one setting fits every face size.

  landmarks : the 5 points, in units of the face size (RMS distance of the points from their centroid),
              speed in face sizes per second.
  camera    : the cam2world rotation as a unit quaternion (sign kept continuous) and the camera position
              (on the 2.7 sphere), speeds in rad/s (quaternion units) and world units/s. The filtered
              quaternion is renormalised and the position put back at its measured radius.
The defaults were chosen on the synthetic hand-held clip (benchmarks/video_jitter.py; README).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SmoothingOptions:
    """One-Euro settings (cut-offs in Hz). `None` in place of these options means no smoothing."""
    landmark_min_cutoff: float = 4.0
    landmark_beta: float = 64.0
    camera_min_cutoff: float = 0.25
    camera_beta: float = 2.0
    d_cutoff: float = 1.0

    def __post_init__(self):
        for k, v in asdict(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0) or (k.endswith("cutoff") and v <= 0):
                raise ValueError(f"smoothing {k} must be a finite number {'> 0' if k.endswith('cutoff') else '>= 0'}, "
                                 f"got {v!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter of a vector signal with one shared alpha (see module docstring)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self._t
        if dt <= 0:          # repeated time stamp: keep the previous estimate's state, take no new step
            dt = 1e-3
        dx = (x - self._x) / dt
        a_d = _alpha(self.d_cutoff, dt)
        dx_hat = a_d * dx + (1 - a_d) * self._dx
        speed = float(np.sqrt(np.mean(dx_hat ** 2))) / max(float(scale), 1e-12)
        a = _alpha(self.min_cutoff + self.beta * speed, dt)
        x_hat = a * x + (1 - a) * self._x
        self._x, self._dx, self._t = x_hat, dx_hat, float(t)
        return x_hat.copy()


def face_scale(lm5: np.ndarray) -> float:
    """RMS distance of the 5 points from their centroid (pixels): the unit of the landmark filter."""
    lm5 = np.asarray(lm5, dtype=np.float64).reshape(5, 2)
    return float(np.sqrt(((lm5 - lm5.mean(0)) ** 2).sum(1).mean()))


class LandmarkFilter:
    """The 5 alignment points, smoothed in units of the face size."""

    def __init__(self, options: SmoothingOptions):
        self.f = OneEuroFilter(options.landmark_min_cutoff, options.landmark_beta, options.d_cutoff)

    def reset(self) -> None:
        self.f.reset()

    def __call__(self, lm5: np.ndarray, t: float) -> np.ndarray:
        lm5 = np.asarray(lm5, dtype=np.float64).reshape(5, 2)
        return self.f(lm5.reshape(-1), t, scale=face_scale(lm5)).reshape(5, 2).astype(np.float32)


class CameraFilter:
    """An EG3D camera label [25] smoothed as rotation (quaternion) + position; intrinsics kept."""

    def __init__(self, options: SmoothingOptions):
        self.rot = OneEuroFilter(options.camera_min_cutoff, options.camera_beta, options.d_cutoff)
        self.pos = OneEuroFilter(options.camera_min_cutoff, options.camera_beta, options.d_cutoff)
        self._q = None

    def reset(self) -> None:
        self.rot.reset()
        self.pos.reset()
        self._q = None

    def __call__(self, camera: np.ndarray, t: float) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        c = np.asarray(camera, dtype=np.float64).reshape(25)
        pose = c[:16].reshape(4, 4)
        q = Rotation.from_matrix(pose[:3, :3]).as_quat()
        if self._q is not None and float(q @ self._q) < 0:   # q and -q are one rotation: stay on one side
            q = -q
        q_hat = self.rot(q, t)
        q_hat /= np.linalg.norm(q_hat)
        self._q = q_hat
        radius = np.linalg.norm(pose[:3, 3])
        p_hat = self.pos(pose[:3, 3], t)
        p_hat *= radius / max(np.linalg.norm(p_hat), 1e-12)
        out = pose.copy()
        out[:3, :3] = Rotation.from_quat(q_hat).as_matrix()
        out[:3, 3] = p_hat
        return np.concatenate([out.reshape(16), c[16:]]).astype(np.float32)
