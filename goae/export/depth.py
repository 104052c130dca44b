"""Depth maps: a 16-bit grey PNG that records its own encoding, and a colour preview.

Value q in 0..65535 encodes the ray depth d (distance from the camera centre along the ray, EG3D world
units, NOT z-depth) linearly between `near` and `far`: d = near + q / 65535 * (far - near). Callers pass
the generator's `ray_range` (ray_start, ray_end; 2.25 and 3.3 for FFHQ), which bounds every depth a
render returns. near and far are stored in PNG tEXt chunks (goae:near, goae:far, goae:units,
goae:convention) and read back by `load_depth`, so a file decodes without knowing the model. For FFHQ the
quantisation step is 1.05 / 65535 = 1.6e-5 world units (about 6 micrometres on a real head, the box being
~0.3 m wide). The preview PNG is colourised with a small built-in ramp (near = bright), contrast-stretched
to the image's own depth range.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from goae.export.errors import ExportError, finite
from goae.io import atomic_path

# Anchors of the preview ramp (far -> near): dark violet, magenta, orange, pale yellow.
_RAMP = np.array([[12, 7, 40], [86, 20, 110], [176, 44, 110], [238, 104, 58], [252, 190, 70], [252, 250, 200]],
                 dtype=np.float64)


def colorize_depth(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """float depth [H,W] -> uint8 [H,W,3]; near (small depth) bright, far dark. Range defaults to min/max."""
    near = float(np.min(depth)) if near is None else near
    far = float(np.max(depth)) if far is None else far
    x = np.clip((far - depth) / max(far - near, 1e-12), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(np.int64), len(_RAMP) - 2)
    w = (x - i)[..., None]
    return np.round(_RAMP[i] * (1 - w) + _RAMP[i + 1] * w).astype(np.uint8)


def _depth_2d(depth) -> np.ndarray:
    d = depth.detach().float().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth, np.float32)
    while d.ndim > 2 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ExportError(f"depth must be one map [1,H,W] (or [H,W], [1,1,H,W]), got shape {tuple(np.shape(depth))}")
    if not np.isfinite(d).all():
        raise ExportError("depth contains NaN or inf")
    return d


def save_depth(depth: torch.Tensor | np.ndarray, path_png16: str | os.PathLike,
               path_preview: str | os.PathLike | None = None, *, near: float, far: float) -> Path:
    """16-bit PNG of a ray-depth map (encoding in the module docstring) + optional colour preview PNG.
    `near, far`: the range the 16 bits span, normally `*generator.ray_range`."""
    near, far = finite(near, "depth near"), finite(far, "depth far")
    if not far > near:
        raise ExportError(f"far ({far}) must be larger than near ({near})")
    d = _depth_2d(depth)
    q = np.round(np.clip((d.astype(np.float64) - near) / (far - near), 0, 1) * 65535).astype(np.uint16)
    info = PngInfo()
    info.add_text("goae:near", repr(near))
    info.add_text("goae:far", repr(far))
    info.add_text("goae:units", "EG3D world units (camera orbit radius 2.7)")
    info.add_text("goae:convention", "ray depth: distance from the camera centre along each pixel's ray "
                                     "(not z-depth); depth = near + value / 65535 * (far - near)")
    with atomic_path(path_png16) as tmp:
        Image.fromarray(q).save(tmp, format="PNG", pnginfo=info)
    if path_preview is not None:
        with atomic_path(path_preview) as tmp:
            Image.fromarray(colorize_depth(d)).save(tmp, format="PNG")
    return Path(path_png16)


def load_depth(path: str | os.PathLike) -> np.ndarray:
    """Inverse of `save_depth`: float32 [H,W] ray depths in world units."""
    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
        if im.mode not in ("I;16", "I;16B", "I") or im.format != "PNG":
            raise ExportError(f"{path}: not a 16-bit greyscale PNG (mode {im.mode}, format {im.format})")
        q = np.asarray(im).astype(np.float64)
    try:
        near, far = float(text["goae:near"]), float(text["goae:far"])
    except (KeyError, ValueError):
        raise ExportError(f"{path}: no goae:near/goae:far metadata; not a depth map written by goae") from None
    if not (np.isfinite(near) and np.isfinite(far) and far > near):
        raise ExportError(f"{path}: invalid goae:near/goae:far metadata ({near}, {far})")
    return (near + q / 65535 * (far - near)).astype(np.float32)
