"""Rendered views of one inversion's cached tri-planes, as uint8 pictures and PNG files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from goae.export.errors import ExportError, whole
from goae.io import atomic_path
from goae.models.goae import GOAE

CPU_VIEW_BATCH = 4  # views per render call on a CPU (the method renders them one by one; one host copy per batch)


def view_batch_size(device: torch.device | str) -> int:
    """Views per render call by default: CPU_VIEW_BATCH on a CPU, the method's GPU_RENDER_BATCH elsewhere
    (what GOAE.render takes in one call on a GPU)."""
    return CPU_VIEW_BATCH if torch.device(device).type == "cpu" else GOAE.GPU_RENDER_BATCH


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1, 1] -> uint8 [B,H,W,3], with the official rounding (x * 127.5 + 128, clamped)."""
    return (image * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """One picture (a [3,H,W] or [1,3,H,W] tensor in [-1, 1], uint8 [H,W,3], or PIL image) -> PNG, atomically."""
    if isinstance(image, torch.Tensor):
        image = to_uint8(image.reshape(-1, *image.shape[-3:])[:1])[0]
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


def iter_views(pipe, result, cameras: torch.Tensor, batch_size: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               neural_rendering_resolution: int | None = None) -> Iterator[np.ndarray]:
    """Render one inversion's cached tri-planes at cameras [V,25]; yields uint8 [b,H,W,3] batches, each
    one render call and one host copy. batch_size None = by device (`view_batch_size`).
    neural_rendering_resolution: None = the model's own; lower is render_view's preview mode."""
    if result.planes.shape[0] != 1:
        raise ExportError(f"render one inversion at a time (got a batch of {result.planes.shape[0]}); "
                          "index the result first")
    cameras = torch.as_tensor(cameras, dtype=torch.float32).reshape(-1, 25)
    batch_size = view_batch_size(result.planes.device) if batch_size is None else whole(batch_size, "batch_size", low=1)
    total = cameras.shape[0]
    for start in range(0, total, batch_size):
        out = pipe.render_view(result, cameras[start:start + batch_size], output_type=None,
                               neural_rendering_resolution=neural_rendering_resolution)
        yield to_uint8(out["image"])
        if progress is not None:
            progress(min(start + batch_size, total), total)


def render_views(pipe, result, cameras: torch.Tensor, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 neural_rendering_resolution: int | None = None) -> np.ndarray:
    """uint8 frames [V,512,512,3] of `result` at cameras [V,25], rendered `batch_size` at a time (None =
    by device, see `view_batch_size`)."""
    return np.concatenate(list(iter_views(pipe, result, cameras, batch_size, progress, neural_rendering_resolution)),
                          axis=0)
