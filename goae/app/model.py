"""The app's model steps: pure functions of CPU data (a face, a tri-plane cache entry) that return CPU data and
files, each run through `gpu` (on ZeroGPU a worker process that has the GPU for that call only; elsewhere
in-process). The device is chosen inside each call. No Gradio and no session state here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from goae import export
from goae.app.gpu import call_device, gpu, gpu_duration, gpu_seconds, on_zero_gpu
from goae.pipeline import GOAEOutput

Progress = Callable[..., None]  # gr.Progress, or any callable (fraction | (done, total), desc=..., unit=...)


@dataclass
class ViewFiles:
    """One rendered view: the picture, its PNG, and its depth (a coloured preview PNG and a 16-bit PNG)."""
    image: np.ndarray
    path: str
    depth_preview: str
    depth16: str


@dataclass
class InvertedFiles:
    entry: dict[str, torch.Tensor]  # the tri-plane cache entry (GOAEOutput.to_cache)
    reconstruction: np.ndarray      # at the photo's camera
    bundle: Path                    # the library's inversion folder (reconstruction.png, ws.safetensors, ...)
    view: ViewFiles
    device: str


@dataclass
class EditedFiles:
    entry: dict[str, torch.Tensor]
    image: np.ndarray  # at the photo's camera
    path: str
    view: ViewFiles


@dataclass
class MeshFiles:
    glb: str
    ply: str
    vertices: int
    faces: int


def _frames_done(progress: Progress, done: int, total: int) -> None:
    progress((done, total), desc="Rendering turntable frames", unit="frames")


class ModelSteps:
    """The steps of one pipeline that run the networks. Each ZeroGPU call asks for a duration sized from its
    work (goae.app.gpu)."""

    def __init__(self, pipe, directions: dict | None = None):
        self.pipe, self.directions = pipe, directions or {}
        native = int(pipe.generator.neural_rendering_resolution)
        self.preview_resolution = max(16, native // 2)  # slider drags: half the rays, no super-resolution
        ray_near, ray_far = pipe.generator.ray_range
        self.depth_range = dict(near=ray_near, far=ray_far)
        s = gpu_seconds()
        self.invert = gpu(gpu_duration(s["invert"]))(self.invert)
        self.entry = gpu(gpu_duration(s["invert"]))(self.entry)
        self.view = gpu(gpu_duration(s["view"]))(self.view)
        self.preview = gpu(gpu_duration(s["preview"]))(self.preview)
        self.edit = gpu(gpu_duration(s["edit"]))(self.edit)
        self.video_frames = gpu(lambda entry, frames, *a, **k: gpu_duration(
            s["video_frame"] * frames))(self.video_frames)
        self.mesh = gpu(lambda entry, res, *a, **k: gpu_duration(s["mesh_256"] * (res / 256) ** 3))(self.mesh)
        self.api = gpu(lambda face, folder, options, *a, **k: gpu_duration(
            s["invert"] + s["view"] * len(options.views) / 4 + s["video_frame"] * options.video_frames
            + s["mesh_256"] * (options.mesh_resolution / 256) ** 3 + (s["edit"] if options.edits else 0)))(self.api)

    def invert(self, face, folder: Path, yaw: float, pitch: float, resolution, progress: Progress) -> InvertedFiles:
        """One pipe() call (encoder, AFA, occlusion-aware mix; its stages reported to `progress`), the
        library's inversion bundle, and the view at yaw/pitch."""
        device = call_device(self.pipe)
        result = self.pipe(face.image, face.camera, output_type=None, progress=progress)
        progress(0.95, desc="Writing the files")
        # The library's bundle writer (as `goae invert`): reconstruction, depth, W+ code, result.json.
        bundle = export.save_inversion(self.pipe, face, folder / "inversion", result=result, overwrite=True)
        view = self._render_files(result, yaw, pitch, resolution, folder)
        return InvertedFiles(result.to_cache(), export.to_uint8(result.image[:1])[0], bundle, view, device.type)

    def entry(self, face, progress: Progress) -> dict[str, torch.Tensor]:
        """The inversion as a cache entry only (the stateless calls)."""
        call_device(self.pipe)
        return self.pipe(face.image, face.camera, output_type=None, progress=progress).to_cache()

    def view(self, entry, yaw: float, pitch: float, resolution, folder: Path) -> ViewFiles:
        return self._render_files(GOAEOutput.from_cache(entry, call_device(self.pipe)), yaw, pitch, resolution, folder)

    def preview(self, entry, yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray]:
        """Neural rendering only, upsampled: the picture and its depth while a slider moves."""
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        out = self.pipe.preview_view(result, self.pipe.view_camera(yaw, pitch), resolution=self.preview_resolution,
                                     output_type=None)
        depth = out["image_depth"][0, 0].float().cpu().numpy()
        return export.to_uint8(out["image"])[0], export.colorize_depth(depth)

    def edit(self, entry, offset: torch.Tensor, yaw: float, pitch: float, resolution, folder: Path,
             name: str) -> EditedFiles:
        device = call_device(self.pipe)
        edited = self.pipe.edit(GOAEOutput.from_cache(entry, device), offset.to(device), output_type=None)
        image = export.to_uint8(edited.image[:1])[0]
        path = export.save_png(image, folder / name)
        entry = edited.to_cache()
        return EditedFiles({k: entry[k] for k in ("ws", "planes", "camera")}, image, str(path),
                           self._render_files(edited, yaw, pitch, resolution, folder))

    def video(self, entry, frames: int, fps: float, resolution, path: Path, progress: Progress) -> str:
        """The turntable MP4. Off ZeroGPU the frames are encoded as they are rendered (a few in memory at a
        time); on ZeroGPU the GPU call only renders them and the encoder runs here, off the GPU's time."""
        progress((0, frames), desc="Rendering turntable frames", unit="frames")
        if on_zero_gpu():
            batch = self.video_frames(entry, frames, resolution, progress)
            progress(0.99, desc="Encoding the video")
            return str(export.write_video([batch], path, fps=fps))
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        return str(export.write_turntable(self.pipe, result, path, frames, fps=fps, neural_rendering_resolution=resolution,
                                          progress=lambda done, total: _frames_done(progress, done, total)))

    def video_frames(self, entry, frames: int, resolution, progress: Progress) -> np.ndarray:
        """The turntable's frames, uint8 [F,H,W,3] on the CPU (each batch is one render call)."""
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        cameras = self.pipe.orbit_cameras(frames)
        return export.render_views(self.pipe, result, cameras, None,
                                   lambda done, total: _frames_done(progress, done, total), resolution)

    def mesh(self, entry, resolution: int, folder: Path) -> MeshFiles:
        # "auto": EG3D's density level 10, or the densest 10% where the density never reaches it (random weights).
        planes = entry["planes"].to(call_device(self.pipe))
        v, f, c = export.extract_mesh(self.pipe.generator, planes, resolution=resolution, level="auto")
        glb = export.save_glb(folder / "mesh.glb", v, f, c)
        ply = export.save_ply(folder / "mesh.ply", v, f, c)
        return MeshFiles(str(glb), str(ply), len(v), len(f))

    def api(self, face, folder: Path, options: export.ExportOptions, progress: Progress) -> np.ndarray:
        """The stateless /invert: every file of `goae invert` into `folder` -> the reconstruction."""
        call_device(self.pipe)
        result = self.pipe(face.image, face.camera, output_type=None, progress=progress)
        progress(0.9, desc="Rendering views, video, mesh, edits and writing the files")
        export.save_inversion(self.pipe, face, folder, options, directions=self.directions, result=result)
        return export.to_uint8(result.image[:1])[0]

    def _render_files(self, result, yaw: float, pitch: float, resolution, folder: Path) -> ViewFiles:
        """The view at yaw/pitch (cached tri-planes, no re-encoding) and its depth, as pictures and files."""
        # render_view honours the pipeline's fast path (if enabled); a lower resolution is its preview mode.
        out = self.pipe.render_view(result, self.pipe.view_camera(yaw, pitch), neural_rendering_resolution=resolution,
                                    output_type=None)
        image = export.to_uint8(out["image"])[0]
        view_path = export.save_png(image, folder / "view.png")
        depth16, preview = folder / "depth16.png", folder / "depth_preview.png"
        export.save_depth(out["image_depth"][0], depth16, preview, **self.depth_range)
        return ViewFiles(image, str(view_path), str(preview), str(depth16))
