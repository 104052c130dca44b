"""Meshes of the cached tri-planes: density on a grid (`generator.field`), marching cubes, vertex colours.

Density sigma (raw OSGDecoder output, as EG3D's `convert_sdf_samples_to_ply`, level 10) on a cube grid over
the tri-plane box [-box_warp/2, box_warp/2]^3, then marching cubes with PyMCubes (pinned 0.1.6: 0.3 MB
wheel, BSD-3, numpy + scipy only; scikit-image's `measure.marching_cubes` is the same algorithm but a
14 MB wheel / 30 MB installed with networkx, imageio, tifffile, lazy_loader...).
Vertices are in EG3D world coordinates: y up, the face looks towards +z, x to the face's left (right of
the frontal camera's image); this is also glTF's convention (+y up, front facing +z), so no axis change is
needed for viewers. Faces are wound counter-clockwise seen from outside. Vertex colours are the decoder's
first 3 feature channels (the colour of `image_raw`) at the vertices. Writers: `goae.export.mesh_files`.
"""
from __future__ import annotations

import numpy as np
import torch

from goae.export.errors import ExportError, finite, whole
from goae.models.renderer_fused import chunk_points_for

EG3D_MESH_LEVEL = 10.0
# EG3D's shape extraction uses 512^3. The grid is float32 on the device, copied to the host, and PyMCubes
# takes a float64 copy: 512^3 is 0.5 + 0.5 + 1.1 GB; 1024^3 would be 4.3 GB on a GPU and 8.6 GB more on the host.
MAX_MESH_RESOLUTION = 512


def _field(generator, planes: torch.Tensor):
    """The decoded density/colour field of one tri-plane set [1,96,H,W] or [1,3,32,H,W]."""
    if planes.ndim not in (4, 5) or planes.shape[0] != 1 or (planes.ndim == 5 and planes.shape[1] != 3):
        raise ExportError(f"planes must be one tri-plane set [1,96,H,W] or [1,3,32,H,W], got {tuple(planes.shape)}")
    return generator.field(planes)


@torch.no_grad()
def density_grid(generator, planes: torch.Tensor, resolution: int = 128, bounds: float | None = None,
                 chunk: int | None = None) -> np.ndarray:
    """Raw sigma float32 [R,R,R] on the grid linspace(-bounds, bounds, R)^3, indexed [x, y, z].
    Only the density is decoded, in chunks sized for the device (None), into one buffer on the device
    that is copied to the host once."""
    r = whole(resolution, "mesh resolution", low=2, high=MAX_MESH_RESOLUTION)
    bounds = generator.box_warp / 2 if bounds is None else finite(bounds, "bounds", low=1e-6)
    field = _field(generator, planes)
    dev = planes.device
    chunk = chunk_points_for(dev) if chunk is None else whole(chunk, "chunk", low=1)
    axis = torch.linspace(-bounds, bounds, r, device=dev)
    sigma = torch.empty(r ** 3, dtype=torch.float32, device=dev)
    for s in range(0, r ** 3, chunk):
        idx = torch.arange(s, min(s + chunk, r ** 3), device=dev)
        pts = torch.stack([axis[idx // r ** 2], axis[(idx // r) % r], axis[idx % r]], dim=-1)[None]
        sigma[s:s + idx.numel()] = field.density(pts)[0]
    return sigma.reshape(r, r, r).cpu().numpy()


def marching_cubes(volume: np.ndarray, level: float, bounds: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of volume[x,y,z] sampled on linspace(-bounds, bounds, R) per axis -> (v [V,3] f32, f [F,3] i32).
    The inside is where volume > level; faces are counter-clockwise seen from outside."""
    import mcubes  # deferred: only mesh export needs it

    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise ExportError(f"volume must be [R,R,R] with R >= 2, got {volume.shape}")
    v, f = mcubes.marching_cubes(np.ascontiguousarray(volume, dtype=np.float64), finite(level, "mesh level"))
    step = 2 * bounds / (np.array(volume.shape, dtype=np.float64) - 1)
    return (v * step - bounds).astype(np.float32), f.astype(np.int32)


def resolve_mesh_level(sigma: np.ndarray, level: float | str = EG3D_MESH_LEVEL, quantile: float = 0.9) -> float:
    """The iso-level to mesh `sigma` at. A number is used as is; "auto" is EG3D's level 10 when the
    density crosses it (always, for trained weights) and otherwise the level that keeps the densest
    10% of the grid, so random or badly fitted tri-planes still give a shape to look at."""
    if isinstance(level, str) and level == "auto":
        if not np.isfinite(sigma).all():
            raise ExportError("the density contains NaN or inf (damaged weights?); no mesh level can be chosen")
        lo, hi = float(np.min(sigma)), float(np.max(sigma))
        return EG3D_MESH_LEVEL if lo < EG3D_MESH_LEVEL < hi else float(np.quantile(sigma, quantile))
    if isinstance(level, str):
        try:
            float(level)
        except ValueError:
            raise ExportError(f"mesh level must be a number or 'auto', got {level!r}") from None
    return finite(level, "mesh level")


@torch.no_grad()
def extract_mesh(generator, planes: torch.Tensor, ws: torch.Tensor | None = None, resolution: int = 128,
                 level: float | str = EG3D_MESH_LEVEL, chunk: int | None = None, bounds: float | None = None,
                 border: float = 30 / 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh of one tri-plane set [1,96,256,256]: (vertices [V,3] float32, faces [F,3] int32, colors [V,3] uint8).

    `level`: density iso-level (EG3D: 10) or "auto" (see `resolve_mesh_level`).
    `border`: fraction of the grid on every face forced empty (EG3D/GOAE shape scripts: 30/256), which
    removes the box-edge floaters and closes the surface. `ws` is accepted for symmetry with rendering;
    EG3D's decoder is not style-modulated, so the shape does not depend on it."""
    del ws
    if not isinstance(level, str):
        level = finite(level, "mesh level")  # before the slow grid
    resolution = whole(resolution, "mesh resolution", low=2, high=MAX_MESH_RESOLUTION)
    bounds = generator.box_warp / 2 if bounds is None else finite(bounds, "bounds", low=1e-6)
    sigma = density_grid(generator, planes, resolution, bounds, chunk)
    if not np.isfinite(sigma).all():
        raise ExportError("the density contains NaN or inf (damaged weights?); cannot mesh it")
    pad = int(round(finite(border, "border", 0, 0.5) * resolution))
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
    step = chunk or chunk_points_for(planes.device)
    for s in range(0, len(vertices), step):
        pts = torch.from_numpy(vertices[s:s + step]).to(planes.device)[None]
        rgb = field(pts)[1][0, :, :3].clamp(0, 1)
        colors.append((rgb * 255).round().to(torch.uint8).cpu().numpy())
    return vertices, faces, np.concatenate(colors)
