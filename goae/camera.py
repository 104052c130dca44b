"""EG3D cameras: look-at poses, FOV -> intrinsics and the 25-number camera label.

Label c = [cam2world (4x4 row-major, 16), intrinsics (3x3 row-major, 9)].
* cam2world maps camera to world coordinates with OpenCV camera axes (x right, y down, z forward).
  World y is up; the face looks towards +z, so the frontal camera sits at (0, 0, 2.7).
* Intrinsics are normalised by the image size: [[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]].
* yaw/pitch are offsets from the frontal view in radians (EG3D samples pi/2 + yaw, pi/2 + pitch).
  Positive yaw moves the camera towards +x; positive pitch moves it down (towards -y).
  Pitch follows EG3D's polar convention: the polar angle is arccos(1 - 2 (pi/2 + pitch) / pi).

Orbits. `orbit_cameras` follows the official GOAE/EG3D video path (`gen_video`): yaw = 0.35 sin(2 pi t),
pitch = -0.05 + 0.25 cos(2 pi t) around the frontal view, radius 2.7, focal 4.2647. Two deliberate
differences: we use the real pi (the official script writes 3.14, so its loop does not quite close),
and the camera looks at EG3D's pivot (0, 0, 0.2) like GOAE's `--multi_view` and EG3D's own video script
(GOAE's `gen_video` looks at the world origin). The camera still orbits the world origin at radius 2.7
(`look_at_pose(official=True)`), which is where every training label sits (||t|| = 2.7).
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

DEFAULT_FOCAL = 4.2647  # normalised focal length of the official FFHQ labels (fov ~18.837 deg)
CANONICAL_RADIUS = 2.7
LOOKAT = (0.0, 0.0, 0.2)

Angles = float | Sequence[float] | torch.Tensor


class CameraError(ValueError):
    """Bad camera input (shapes of labels, poses or intrinsics)."""


def fov_to_intrinsics(fov_degrees: float, official: bool = True, device=None) -> torch.Tensor:
    """Normalised intrinsics [3, 3] for a vertical/horizontal field of view in degrees.

    official=True uses EG3D's constants 3.14159 and 1.414 (18.837 deg -> 4.2634); False is exact."""
    if not 0 < fov_degrees < 180:
        raise CameraError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    if official:
        focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    else:
        focal = 1 / (2 * math.tan(math.radians(fov_degrees) / 2))
    return intrinsics_from_focal(focal, device=device)


def intrinsics_from_focal(focal: float, device=None) -> torch.Tensor:
    """[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]] (principal point at the image centre)."""
    return torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]], dtype=torch.float32, device=device)


def _angles(yaw: Angles, pitch: Angles) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast yaw and pitch to 1-D float64 tensors of one length N (on CPU)."""
    y = torch.as_tensor(yaw, dtype=torch.float64).detach().cpu().reshape(-1)
    p = torch.as_tensor(pitch, dtype=torch.float64).detach().cpu().reshape(-1)
    if not (torch.isfinite(y).all() and torch.isfinite(p).all()):
        shown = f"{y.tolist()} and {p.tolist()}" if y.numel() + p.numel() <= 8 else "NaN or inf values"
        raise CameraError(f"yaw and pitch must be finite numbers, got {shown}")
    if y.numel() != p.numel():
        if y.numel() == 1:
            y = y.expand_as(p)
        elif p.numel() == 1:
            p = p.expand_as(y)
        else:
            raise CameraError(f"yaw ({y.numel()}) and pitch ({p.numel()}) must have the same length")
    return y, p


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def _cam2world(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Rotation with columns (right, up, forward) built from world up (0, 1, 0), plus translation.
    The resulting camera y axis points to world -y (OpenCV: y down)."""
    forward = _normalize(forward)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    right = -_normalize(torch.cross(world_up, forward, dim=-1))
    up = _normalize(torch.cross(forward, right, dim=-1))
    pose = torch.eye(4, dtype=forward.dtype, device=forward.device).repeat(forward.shape[0], 1, 1)
    pose[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    pose[:, :3, 3] = origin
    return pose


def look_at_pose(yaw: Angles, pitch: Angles, radius: float = CANONICAL_RADIUS, lookat: Sequence[float] = LOOKAT,
                 official: bool = False, device=None) -> torch.Tensor:
    """cam2world [N, 4, 4] of a camera at (yaw, pitch) offsets from frontal, looking at `lookat`.

    official=False: the camera orbits `lookat` at distance `radius` (computed in float64).
    official=True: exactly EG3D's LookAtPoseSampler (float32 ops in the same order): the orbit is
    centred on the world origin and the camera is then turned towards `lookat`."""
    y, p = _angles(yaw, pitch)
    h = (math.pi / 2 + y).reshape(-1, 1)
    v = (math.pi / 2 + p).reshape(-1, 1)
    target = torch.as_tensor(lookat, dtype=torch.float32).reshape(1, 3)
    if official:
        h, v = h.float(), v.float()
        v = torch.clamp(v, 1e-5, math.pi - 1e-5) / math.pi
        phi = torch.arccos(1 - 2 * v)
        origin = torch.zeros(h.shape[0], 3)
        origin[:, 0:1] = radius * torch.sin(phi) * torch.cos(math.pi - h)
        origin[:, 2:3] = radius * torch.sin(phi) * torch.sin(math.pi - h)
        origin[:, 1:2] = radius * torch.cos(phi)
        pose = _cam2world(_normalize(target - origin), origin)
    else:
        v = torch.clamp(v, 1e-5, math.pi - 1e-5) / math.pi
        phi = torch.arccos(1 - 2 * v)
        yaw_ = y.reshape(-1, 1)  # cos(pi - h) = sin(yaw), sin(pi - h) = cos(yaw)
        offset = radius * torch.cat([torch.sin(phi) * torch.sin(yaw_), torch.cos(phi),
                                     torch.sin(phi) * torch.cos(yaw_)], dim=1)
        pose = _cam2world(-offset, target.double() + offset).float()
    return pose.to(device) if device is not None else pose


def make_label(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """cam2world [N, 4, 4] + intrinsics [N, 3, 3] or [3, 3] -> labels [N, 25] (float32)."""
    if cam2world.ndim == 2:
        cam2world = cam2world[None]
    if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4):
        raise CameraError(f"cam2world must be [N, 4, 4], got {tuple(cam2world.shape)}")
    n = cam2world.shape[0]
    intrinsics = intrinsics.to(cam2world.device)
    if intrinsics.shape == (3, 3):
        intrinsics = intrinsics.expand(n, 3, 3)
    if intrinsics.shape != (n, 3, 3):
        raise CameraError(f"intrinsics must be [3, 3] or [{n}, 3, 3], got {tuple(intrinsics.shape)}")
    return torch.cat([cam2world.reshape(n, 16), intrinsics.reshape(n, 9)], dim=1).float()


def parse_label(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [N, 25] (or [25]) -> (cam2world [N, 4, 4], intrinsics [N, 3, 3])."""
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != 25:
        raise CameraError(f"camera labels must be [N, 25], got {tuple(c.shape)}")
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:25].reshape(-1, 3, 3)


def camera_label(yaw: Angles = 0.0, pitch: Angles = 0.0, radius: float = CANONICAL_RADIUS,
                 focal: float = DEFAULT_FOCAL, lookat: Sequence[float] = LOOKAT, official: bool = False,
                 device=None) -> torch.Tensor:
    """Labels [N, 25] of look-at cameras with focal `focal` (see look_at_pose)."""
    c = make_label(look_at_pose(yaw, pitch, radius=radius, lookat=lookat, official=official),
                   intrinsics_from_focal(focal))
    return c if device is None else c.to(device)


def yaw_pitch_from_label(c: torch.Tensor, lookat: Sequence[float] = LOOKAT) -> tuple[torch.Tensor, torch.Tensor]:
    """(yaw [N], pitch [N]) offsets from frontal of the camera position relative to `lookat`.

    Inverse of look_at_pose(official=False). For official poses pass lookat=(0, 0, 0), their orbit centre."""
    cam2world, _ = parse_label(c)
    d = cam2world[:, :3, 3].double() - torch.as_tensor(lookat, dtype=torch.float64, device=c.device)
    r = d.norm(dim=-1)
    yaw = torch.atan2(d[:, 0], d[:, 2])
    pitch = -(math.pi / 2) * d[:, 1] / r  # v = pi (1 - cos phi) / 2, pitch = v - pi/2
    return yaw.to(c.dtype), pitch.to(c.dtype)


def camera_label_degrees(yaw: float, pitch: float = 0.0, **kwargs) -> torch.Tensor:
    """camera_label [1, 25] with yaw/pitch in degrees (what people type and sliders show)."""
    yaw, pitch = _angles(yaw, pitch)
    return camera_label(torch.deg2rad(yaw), torch.deg2rad(pitch), **kwargs)


def orbit_cameras(n_frames: int, yaw_range: float = 0.35, pitch_range: float = 0.25, pitch_offset: float = -0.05,
                  radius: float = CANONICAL_RADIUS, lookat: Sequence[float] = LOOKAT, focal: float = DEFAULT_FOCAL,
                  device=None) -> torch.Tensor:
    """Labels [n_frames, 25] of one closed elliptic orbit (frame t at phase 2 pi t / n_frames; see the
    module docstring). The official video is 240 frames at 60 fps."""
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise CameraError(f"n_frames must be a whole number >= 1, got {n_frames!r}")
    t = torch.arange(int(n_frames), dtype=torch.float64) / n_frames
    yaw = yaw_range * torch.sin(2 * math.pi * t)
    pitch = pitch_offset + pitch_range * torch.cos(2 * math.pi * t)
    return camera_label(yaw, pitch, radius, focal, lookat, official=True, device=device)


def view_grid_cameras(yaws: Sequence[float], pitches: Sequence[float] = (0.0,), radius: float = CANONICAL_RADIUS,
                      lookat: Sequence[float] = LOOKAT, focal: float = DEFAULT_FOCAL, device=None) -> torch.Tensor:
    """Labels [len(pitches) * len(yaws), 25], row-major: all yaws of pitches[0], then of pitches[1], ...
    (official orbit convention, like `orbit_cameras`). GOAE's `--multi_view` is
    `view_grid_cameras([a, 0, -a])` with a = pi * 25 / 360."""
    y = torch.as_tensor(yaws, dtype=torch.float64).reshape(-1)
    p = torch.as_tensor(pitches, dtype=torch.float64).reshape(-1)
    if y.numel() == 0 or p.numel() == 0:
        raise CameraError("view_grid_cameras needs at least one yaw and one pitch")
    pp, yy = torch.meshgrid(p, y, indexing="ij")
    return camera_label(yy.reshape(-1), pp.reshape(-1), radius, focal, lookat, official=True, device=device)
