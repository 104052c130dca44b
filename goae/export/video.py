"""Turntable videos: uint8 frames -> a browser-playable H.264 MP4.

PyAV (`av`, pinned 18.1.0) rather than imageio-ffmpeg. Both ship their own FFmpeg with libx264
(which makes those binaries GPL; goae's code stays Apache-2.0 and links nothing at build time).
PyAV: 36 MB wheel / 106 MB installed, BSD-3 bindings, in-process libav API, so we control pixel
format, colour tags and mp4 flags directly and can decode the file back in tests with the same
library. imageio-ffmpeg 0.8.1: 68 MB wheel / 173 MB installed (a static ffmpeg executable), driven
through a subprocess pipe; older releases are smaller but ship an older FFmpeg.
Files are H.264 High, yuv420p (even width/height; odd sizes are edge-padded), BT.709 tags, and
`+faststart` (index at the front) so browsers can start playing before the download ends.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from goae.export.errors import ExportError, finite, whole
from goae.export.views import iter_views
from goae.io import atomic_path


def _frame_batches(frames) -> Iterator[np.ndarray]:
    """Accept [T,H,W,3] arrays/tensors, or an iterable of [H,W,3] frames / [b,H,W,3] batches."""
    if isinstance(frames, (np.ndarray, torch.Tensor)):
        frames = [frames]
    for f in frames:
        f = f.cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
        if f.ndim == 3:
            f = f[None]
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ExportError(f"video frames must be uint8 [T,H,W,3] or [H,W,3], got {f.dtype} {f.shape}")
        yield f


def write_video(frames: np.ndarray | torch.Tensor | Iterable[np.ndarray], path: str | os.PathLike,
                fps: float = 30, crf: int = 18, preset: str = "medium") -> Path:
    """Encode uint8 RGB frames as a browser-playable H.264 MP4 (see module docstring), atomically."""
    import av  # deferred: only video export needs FFmpeg

    fps = finite(fps, "fps", low=1e-3, high=1000)
    path = Path(path)
    n, size = 0, None
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1  # BT.709, tv range
            for batch in _frame_batches(frames):
                if size is None:
                    size = batch.shape[1:3]
                    stream.height, stream.width = (s + s % 2 for s in size)
                elif batch.shape[1:3] != size:
                    raise ExportError(f"all frames must have one size: {tuple(size)} then {batch.shape[1:3]}")
                if size[0] % 2 or size[1] % 2:  # yuv420p needs even sizes: repeat the last row/column
                    batch = np.pad(batch, ((0, 0), (0, size[0] % 2), (0, size[1] % 2), (0, 0)), mode="edge")
                for f in batch:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                    vf = vf.reformat(format="yuv420p", dst_colorspace="itu709")
                    container.mux(stream.encode(vf))
                    n += 1
            if n == 0:
                raise ExportError("no frames to write")
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


def write_turntable(pipe, result, path: str | os.PathLike, frames: int, fps: float = 30,
                    neural_rendering_resolution: int | None = None, batch_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """The turntable MP4 of one inversion: `frames` views on the pipeline's orbit, rendered in batches
    (goae.export.iter_views: one render call and one host copy per batch, sized by device) and encoded
    as they come. progress(done, total) after each batch."""
    frames = whole(frames, "frames", low=1)
    fps = finite(fps, "fps", low=1e-3, high=1000)  # checked before any rendering
    views = iter_views(pipe, result, pipe.orbit_cameras(frames), batch_size, progress, neural_rendering_resolution)
    return write_video(views, path, fps=fps)
