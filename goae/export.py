"""What a person takes home from an inversion: novel views, a turntable video, depth maps and a mesh.

Cameras. `orbit_cameras` follows the official GOAE/EG3D video path (`gen_video`): yaw = 0.35 sin(2 pi t),
pitch = -0.05 + 0.25 cos(2 pi t) around the frontal view, radius 2.7, focal 4.2647. Two deliberate
differences: we use the real pi (the official script writes 3.14, so its loop does not quite close),
and the camera looks at EG3D's pivot (0, 0, 0.2) like GOAE's `--multi_view` and EG3D's own video script
(GOAE's `gen_video` looks at the world origin). The camera still orbits the world origin at radius 2.7
(`look_at_pose(official=True)`), which is where every training label sits (||t|| = 2.7).

Video: PyAV (`av`, pinned 18.1.0) rather than imageio-ffmpeg. Both ship their own FFmpeg with libx264
(which makes those binaries GPL; goae's code stays Apache-2.0 and links nothing at build time).
PyAV: 36 MB wheel / 106 MB installed, BSD-3 bindings, in-process libav API, so we control pixel
format, colour tags and mp4 flags directly and can decode the file back in tests with the same
library. imageio-ffmpeg 0.8.1: 68 MB wheel / 173 MB installed (a static ffmpeg executable), driven
through a subprocess pipe; older releases are smaller but ship an older FFmpeg.
Files are H.264 High, yuv420p (even width/height; odd sizes are edge-padded), BT.709 tags, and
`+faststart` (index at the front) so browsers can start playing before the download ends.

Depth: a 16-bit grey PNG. Value q in 0..65535 encodes the ray depth d (distance from the camera centre
along the ray, EG3D world units, NOT z-depth) linearly between `near` and `far` (default the renderer's
ray_start 2.25 and ray_end 3.3, which bound every depth it returns): d = near + q / 65535 * (far - near).
The numbers are stored in PNG tEXt chunks (goae:near, goae:far, goae:units, goae:convention) and read
back by `load_depth`. Quantisation step: 1.05 / 65535 = 1.6e-5 world units (about 6 micrometres on a
real head, the box being ~0.3 m wide). The preview PNG is colourised with a small built-in ramp (near =
bright), contrast-stretched to the image's own depth range.

Mesh: density sigma (raw OSGDecoder output, as EG3D's `convert_sdf_samples_to_ply`, level 10) on a cube
grid over the tri-plane box [-box_warp/2, box_warp/2]^3, then marching cubes with PyMCubes (pinned
0.1.6: 0.3 MB wheel, BSD-3, numpy + scipy only; scikit-image's `measure.marching_cubes` is the same
algorithm but a 14 MB wheel / 30 MB installed with networkx, imageio, tifffile, lazy_loader...).
Vertices are in EG3D world coordinates: y up, the face looks towards +z, x to the face's left
(right of the frontal camera's image); this is also glTF's convention (+y up, front facing +z), so
no axis change is needed for viewers. Faces are wound counter-clockwise seen from outside.
Vertex colours are the decoder's first 3 feature channels (the colour of `image_raw`) at the vertices.

GLB is written here (about 60 lines of glTF 2.0: one mesh, POSITION/NORMAL/COLOR_0 + uint32 indices,
KHR_materials_unlit because the colours already contain the shading) rather than adding trimesh or
pygltflib for one function. COLOR_0 is float32 *linear* RGB as the glTF spec requires (viewers convert
back to sRGB on display); PLY keeps the sRGB uint8 colours.
"""
from __future__ import annotations

import json
import math
import os
import struct
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from goae.camera import DEFAULT_FOCAL, intrinsics_from_focal, look_at_pose, make_label
from goae.io import atomic_path, atomic_write_bytes
from goae.models.renderer_fused import TriplaneField  # noqa: F401  (the type `_field` returns)

__all__ = ["ExportError", "orbit_cameras", "view_grid_cameras", "iter_views", "render_views", "to_uint8",
           "write_video", "save_depth", "load_depth", "colorize_depth", "density_grid", "marching_cubes",
           "extract_mesh", "resolve_mesh_level", "save_ply", "save_glb"]

DEPTH_NEAR, DEPTH_FAR = 2.25, 3.3  # EG3D ffhq ray_start / ray_end
EG3D_MESH_LEVEL = 10.0


class ExportError(ValueError):
    """Bad input to an export function (shapes, empty meshes, unreadable files)."""


# ------------------------------------------------------------------------------------------------
# Cameras


def orbit_cameras(n_frames: int, yaw_range: float = 0.35, pitch_range: float = 0.25, pitch_offset: float = -0.05,
                  radius: float = 2.7, lookat: Sequence[float] = (0.0, 0.0, 0.2), focal: float = DEFAULT_FOCAL,
                  device=None) -> torch.Tensor:
    """Labels [n_frames, 25] of one closed elliptic orbit (frame t at phase 2 pi t / n_frames).
    The official video is 240 frames at 60 fps."""
    if n_frames < 1:
        raise ExportError(f"n_frames must be >= 1, got {n_frames}")
    t = torch.arange(n_frames, dtype=torch.float64) / n_frames
    yaw = yaw_range * torch.sin(2 * math.pi * t)
    pitch = pitch_offset + pitch_range * torch.cos(2 * math.pi * t)
    return _labels(yaw, pitch, radius, lookat, focal, device)


def view_grid_cameras(yaws: Sequence[float], pitches: Sequence[float] = (0.0,), radius: float = 2.7,
                      lookat: Sequence[float] = (0.0, 0.0, 0.2), focal: float = DEFAULT_FOCAL,
                      device=None) -> torch.Tensor:
    """Labels [len(pitches) * len(yaws), 25], row-major: all yaws of pitches[0], then of pitches[1], ...

    GOAE's `--multi_view` is `view_grid_cameras([a, 0, -a])` with a = pi * 25 / 360."""
    y = torch.as_tensor(yaws, dtype=torch.float64).reshape(-1)
    p = torch.as_tensor(pitches, dtype=torch.float64).reshape(-1)
    if y.numel() == 0 or p.numel() == 0:
        raise ExportError("view_grid_cameras needs at least one yaw and one pitch")
    pp, yy = torch.meshgrid(p, y, indexing="ij")
    return _labels(yy.reshape(-1), pp.reshape(-1), radius, lookat, focal, device)


def _labels(yaw, pitch, radius, lookat, focal, device) -> torch.Tensor:
    pose = look_at_pose(yaw, pitch, radius=radius, lookat=lookat, official=True)
    c = make_label(pose, intrinsics_from_focal(focal))
    return c if device is None else c.to(device)


# ------------------------------------------------------------------------------------------------
# Rendering views


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] in [-1, 1] -> uint8 [B,H,W,3], with the official rounding (x * 127.5 + 128, clamped)."""
    return (image * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def iter_views(pipe, result, cameras: torch.Tensor, batch_size: int = 4,
               progress: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
    """Render one inversion's cached tri-planes at cameras [V,25]; yields uint8 [b,H,W,3] batches."""
    if result.planes.shape[0] != 1:
        raise ExportError(f"render one inversion at a time (got a batch of {result.planes.shape[0]}); "
                          "index the result first")
    cameras = torch.as_tensor(cameras, dtype=torch.float32).reshape(-1, 25)
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    total = cameras.shape[0]
    for start in range(0, total, batch_size):
        out = pipe.render_view(result, cameras[start:start + batch_size])
        yield to_uint8(out["image"])
        if progress is not None:
            progress(min(start + batch_size, total), total)


def render_views(pipe, result, cameras: torch.Tensor, batch_size: int = 4,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """uint8 frames [V,512,512,3] of `result` at cameras [V,25], rendered `batch_size` at a time."""
    return np.concatenate(list(iter_views(pipe, result, cameras, batch_size, progress)), axis=0)


# ------------------------------------------------------------------------------------------------
# Video


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

    if not fps > 0:
        raise ExportError(f"fps must be positive, got {fps}")
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


# ------------------------------------------------------------------------------------------------
# Depth

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
               path_preview: str | os.PathLike | None = None, near: float = DEPTH_NEAR,
               far: float = DEPTH_FAR) -> Path:
    """16-bit PNG of a ray-depth map (encoding in the module docstring) + optional colour preview PNG."""
    if not far > near:
        raise ExportError(f"far ({far}) must be larger than near ({near})")
    d = _depth_2d(depth)
    q = np.round(np.clip((d.astype(np.float64) - near) / (far - near), 0, 1) * 65535).astype(np.uint16)
    info = PngInfo()
    info.add_text("goae:near", repr(float(near)))
    info.add_text("goae:far", repr(float(far)))
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
    return (near + q / 65535 * (far - near)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Mesh


@torch.no_grad()
def density_grid(generator, planes: torch.Tensor, resolution: int = 128, bounds: float | None = None,
                 chunk: int = 2 ** 15) -> np.ndarray:
    """Raw sigma float32 [R,R,R] on the grid linspace(-bounds, bounds, R)^3, indexed [x, y, z]."""
    if resolution < 2:
        raise ExportError(f"resolution must be >= 2, got {resolution}")
    bounds = generator.box_warp / 2 if bounds is None else float(bounds)
    field = _field(generator, planes)
    dev = field.planes.device
    axis = torch.linspace(-bounds, bounds, resolution, device=dev)
    sigma = torch.empty(resolution ** 3, dtype=torch.float32)
    for s in range(0, resolution ** 3, chunk):
        idx = torch.arange(s, min(s + chunk, resolution ** 3), device=dev)
        pts = torch.stack([axis[idx // resolution ** 2], axis[(idx // resolution) % resolution],
                           axis[idx % resolution]], dim=-1)[None]
        sigma[s:s + idx.numel()] = field(pts)[0][0].cpu()
    return sigma.reshape(resolution, resolution, resolution).numpy()


def marching_cubes(volume: np.ndarray, level: float, bounds: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of volume[x,y,z] sampled on linspace(-bounds, bounds, R) per axis -> (v [V,3] f32, f [F,3] i32).
    The inside is where volume > level; faces are counter-clockwise seen from outside."""
    import mcubes  # deferred: only mesh export needs it

    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise ExportError(f"volume must be [R,R,R] with R >= 2, got {volume.shape}")
    v, f = mcubes.marching_cubes(np.ascontiguousarray(volume, dtype=np.float64), float(level))
    step = 2 * bounds / (np.array(volume.shape, dtype=np.float64) - 1)
    return (v * step - bounds).astype(np.float32), f.astype(np.int32)


def resolve_mesh_level(sigma: np.ndarray, level: float | str = EG3D_MESH_LEVEL, quantile: float = 0.9) -> float:
    """The iso-level to mesh `sigma` at. A number is used as is; "auto" is EG3D's level 10 when the
    density crosses it (always, for trained weights) and otherwise the level that keeps the densest
    10% of the grid, so random or badly fitted tri-planes still give a shape to look at."""
    if isinstance(level, str):
        if level != "auto":
            raise ExportError(f"mesh level must be a number or 'auto', got {level!r}")
        lo, hi = float(np.min(sigma)), float(np.max(sigma))
        return EG3D_MESH_LEVEL if lo < EG3D_MESH_LEVEL < hi else float(np.quantile(sigma, quantile))
    level = float(level)
    if not np.isfinite(level):
        raise ExportError(f"mesh level must be finite, got {level}")
    return level


@torch.no_grad()
def extract_mesh(generator, planes: torch.Tensor, ws: torch.Tensor | None = None, resolution: int = 128,
                 level: float | str = EG3D_MESH_LEVEL, chunk: int = 2 ** 15, bounds: float | None = None,
                 border: float = 30 / 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh of one tri-plane set [1,96,256,256]: (vertices [V,3] float32, faces [F,3] int32, colors [V,3] uint8).

    `level`: density iso-level (EG3D: 10) or "auto" (see `resolve_mesh_level`).
    `border`: fraction of the grid on every face forced empty (EG3D/GOAE shape scripts: 30/256), which
    removes the box-edge floaters and closes the surface. `ws` is accepted for symmetry with rendering;
    EG3D's decoder is not style-modulated, so the shape does not depend on it."""
    del ws
    bounds = generator.box_warp / 2 if bounds is None else float(bounds)
    sigma = density_grid(generator, planes, resolution, bounds, chunk)
    pad = int(round(border * resolution))
    # "auto" looks only at the interior, which is what gets meshed.
    inner = sigma[pad:resolution - pad, pad:resolution - pad, pad:resolution - pad] if 0 < pad < resolution // 2 else sigma
    level = resolve_mesh_level(inner, level)
    if pad > 0:
        fill = min(-1000.0, level - 1000.0)
        for ax in range(3):
            sl = [slice(None)] * 3
            sl[ax] = slice(0, pad)
            sigma[tuple(sl)] = fill
            sl[ax] = slice(resolution - pad, resolution)
            sigma[tuple(sl)] = fill
    vertices, faces = marching_cubes(sigma, level, bounds)
    if len(faces) == 0:
        raise ExportError(f"no surface at density level {level}: sigma ranges over [{sigma.min():.3g}, "
                          f"{sigma.max():.3g}] inside the box; choose a level in that range")
    field = _field(generator, planes)
    colors = []
    for s in range(0, len(vertices), chunk):
        pts = torch.from_numpy(vertices[s:s + chunk]).to(field.planes.device)[None]
        rgb = field(pts)[1][0, :, :3].clamp(0, 1)
        colors.append((rgb * 255).round().to(torch.uint8).cpu().numpy())
    return vertices, faces, np.concatenate(colors)


def _planes5(planes: torch.Tensor) -> torch.Tensor:
    if planes.ndim == 4:
        planes = planes.reshape(planes.shape[0], 3, -1, *planes.shape[-2:])
    if planes.ndim != 5 or planes.shape[0] != 1 or planes.shape[1] != 3:
        raise ExportError(f"planes must be one tri-plane set [1,96,H,W] or [1,3,32,H,W], got {tuple(planes.shape)}")
    return planes


def _field(generator, planes: torch.Tensor) -> TriplaneField:
    """The decoded density/colour field of one tri-plane set (the renderer's fast sampling + decoder)."""
    return generator.field(_planes5(planes))


def _check_mesh(v, f, colors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(v, dtype=np.float32)
    f = np.asarray(f)
    c = np.asarray(colors)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ExportError(f"vertices must be [V>0, 3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.dtype.kind not in "iu":
        raise ExportError(f"faces must be integer [F>0, 3], got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ExportError(f"face indices must lie in [0, {len(v) - 1}], got [{f.min()}, {f.max()}]")
    if c.shape != (len(v), 3) or c.dtype != np.uint8:
        raise ExportError(f"colors must be uint8 [{len(v)}, 3], got {c.dtype} {c.shape}")
    if not np.isfinite(v).all():
        raise ExportError("vertices contain NaN or inf")
    return v, f.astype(np.uint32), np.ascontiguousarray(c)


def save_ply(path: str | os.PathLike, v: np.ndarray, f: np.ndarray, colors: np.ndarray) -> Path:
    """Binary little-endian PLY: float x,y,z + uchar red,green,blue per vertex; int triangles."""
    v, f, c = _check_mesh(v, f, colors)
    header = ("ply\nformat binary_little_endian 1.0\n"
              "comment goae mesh, EG3D world coordinates: y up, face towards +z\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    vert = np.empty(len(v), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vert["xyz"], vert["rgb"] = v, c
    face = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    face["n"], face["idx"] = 3, f
    return atomic_write_bytes(path, header.encode("ascii") + vert.tobytes() + face.tobytes())


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted face normals
    n = np.zeros_like(v, dtype=np.float64)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 0, n / np.maximum(norm, 1e-30), [0.0, 0.0, 1.0]).astype(np.float32)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def save_glb(path: str | os.PathLike, v: np.ndarray, f: np.ndarray, colors: np.ndarray) -> Path:
    """glTF 2.0 binary (.glb) with one unlit vertex-coloured triangle mesh (see module docstring)."""
    v, f, c = _check_mesh(v, f, colors)
    blobs = [v.tobytes(), _vertex_normals(v, f).tobytes(), _srgb_to_linear(c).tobytes(), f.reshape(-1).tobytes()]
    views, offset = [], 0
    for blob, target in zip(blobs, (34962, 34962, 34962, 34963)):  # ARRAY_BUFFER x3, ELEMENT_ARRAY_BUFFER
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        offset += len(blob)  # every blob is a multiple of 4 bytes: 4-byte alignment holds
    n = len(v)
    gltf = {
        "asset": {"version": "2.0", "generator": "goae"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "goae_mesh"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2},
                                    "indices": 3, "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0},
                       "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
             "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": n, "type": "VEC3"},
            {"bufferView": 2, "componentType": 5126, "count": n, "type": "VEC3"},
            {"bufferView": 3, "componentType": 5125, "count": f.size, "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binary), 0x004E4942) + binary
    return atomic_write_bytes(path, struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks)
