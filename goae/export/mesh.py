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
    return _densities(field, axis, 0, r, None, chunk).reshape(r, r, r).cpu().numpy()


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


def _densities(field, axis: torch.Tensor, offset: int, n: int, flat: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """Density at flat indices of the n^3 sub-grid whose first point is axis[offset] on every axis; flat None: at
    every point in order (each chunk's indices made as it goes: 512^3 of them would be 1 GB)."""
    total = n ** 3 if flat is None else flat.numel()
    out = torch.empty(total, dtype=torch.float32, device=axis.device)
    for s in range(0, total, chunk):
        idx = torch.arange(s, min(s + chunk, total), device=axis.device) if flat is None else flat[s:s + chunk]
        pts = torch.stack([axis[offset + idx // n ** 2], axis[offset + (idx // n) % n], axis[offset + idx % n]], dim=-1)
        out[s:s + idx.numel()] = field.density(pts[None])[0]
    return out


def _near_surface(coarse: np.ndarray, level: float, margin: int) -> np.ndarray:
    """Coarse cells [nc-1]^3 whose corners lie on both sides of `level`, grown by `margin` cells."""
    inside = torch.from_numpy(coarse > level)
    corners = [inside[i:inside.shape[0] - 1 + i, j:inside.shape[1] - 1 + j, k:inside.shape[2] - 1 + k]
               for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    stacked = torch.stack(corners)
    some, every = stacked.any(0), stacked.all(0)
    cells = (some & ~every).float()[None, None]
    if margin > 0:
        cells = torch.nn.functional.max_pool3d(cells, 2 * margin + 1, stride=1, padding=margin)
    return cells[0, 0].bool().numpy()


def _points_of_cells(cells: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine points [n]^3 that belong to a marked coarse cell (boundary points to every cell they touch),
    and each fine index's coarse cell (the coarse point at or before it) per axis."""
    # A doubled lattice: 2c+1 is the inside of cell c, 2c the coarse point c shared by cells c-1 and c.
    nc = len(starts)
    lattice = torch.zeros(1, 1, 2 * nc - 1, 2 * nc - 1, 2 * nc - 1)
    lattice[0, 0, 1::2, 1::2, 1::2] = torch.from_numpy(cells).float()
    lattice = torch.nn.functional.max_pool3d(lattice, 3, stride=1, padding=1)[0, 0].bool().numpy()
    cell = np.searchsorted(starts, np.arange(n), side="right") - 1
    on_point = starts[cell] == np.arange(n)
    doubled = np.where(on_point, 2 * cell, 2 * cell + 1)
    return lattice[np.ix_(doubled, doubled, doubled)], cell


@torch.no_grad()
def extract_mesh(generator, planes: torch.Tensor, ws: torch.Tensor | None = None, resolution: int = 128,
                 level: float | str = EG3D_MESH_LEVEL, chunk: int | None = None, bounds: float | None = None,
                 border: float = 30 / 256, coarse_step: int = 4, margin: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh of one tri-plane set [1,96,256,256]: (vertices [V,3] float32, faces [F,3] int32, colors [V,3] uint8).

    `level`: density iso-level (EG3D: 10) or "auto" (see `resolve_mesh_level`; its quantile, for fields
    that never reach 10, is taken on the coarse grid below).
    `border`: fraction of the grid on every face forced empty (EG3D/GOAE shape scripts: 30/256), which
    removes the box-edge floaters and closes the surface; it is never decoded.
    Coarse to fine: the density is decoded every `coarse_step` grid points first; only the coarse cells
    whose corners straddle the level, grown by `margin` cells on every side, are decoded at full
    resolution. Elsewhere the grid takes its coarse cell's corner value, which is on the same side of the
    level, so marching cubes sees the dense grid's values on every edge the surface crosses. What it can
    miss is a surface that fits between coarse samples more than `margin` cells from any detected one
    (a feature thinner than `coarse_step` grid steps); `coarse_step=1` decodes the full grid.
    `ws` is accepted for symmetry with rendering; EG3D's decoder is not style-modulated, so the shape does
    not depend on it."""
    del ws
    if not isinstance(level, str):
        level = finite(level, "mesh level")  # before the slow grid
    elif level != "auto":
        level = resolve_mesh_level(np.zeros(1), level)  # a number as a string, or one clear error
    r = whole(resolution, "mesh resolution", low=2, high=MAX_MESH_RESOLUTION)
    bounds = generator.box_warp / 2 if bounds is None else finite(bounds, "bounds", low=1e-6)
    step_c, margin = whole(coarse_step, "coarse_step", low=1), whole(margin, "margin", low=0)
    pad = int(round(finite(border, "border", 0, 0.5) * r))
    lo, n = pad, r - 2 * pad  # the interior, which is all that is decoded and meshed
    if n < 2:
        raise ExportError(f"border {border} leaves no interior of the {r}^3 grid to mesh")
    field = _field(generator, planes)
    dev = planes.device
    chunk = chunk_points_for(dev) if chunk is None else whole(chunk, "chunk", low=1)
    axis = torch.linspace(-bounds, bounds, r, device=dev)

    starts = np.unique(np.r_[np.arange(0, n, step_c), n - 1])  # coarse points, both ends included
    gx, gy, gz = np.ix_(starts, starts, starts)
    flat = torch.from_numpy((gx * n * n + gy * n + gz).reshape(-1)).to(dev)
    coarse = _densities(field, axis, lo, n, flat, chunk).cpu().numpy().reshape((len(starts),) * 3)
    if not np.isfinite(coarse).all():
        raise ExportError("the density contains NaN or inf (damaged weights?); cannot mesh it")
    level = resolve_mesh_level(coarse, level)
    if step_c == 1:
        sigma = coarse
    else:
        near, cell = _points_of_cells(_near_surface(coarse, level, margin), starts, n)
        sigma = coarse[np.ix_(cell, cell, cell)]  # the coarse corner at or before each point
        todo = np.flatnonzero(near)
        fine = _densities(field, axis, lo, n, torch.from_numpy(todo).to(dev), chunk).cpu().numpy()
        if not np.isfinite(fine).all():
            raise ExportError("the density contains NaN or inf (damaged weights?); cannot mesh it")
        sigma.reshape(-1)[todo] = fine
    # One layer of empty border around the interior closes the surface, as the full border would.
    fill = min(-1000.0, level - 1000.0) if pad > 0 else None
    volume = np.pad(sigma, 1, constant_values=fill) if fill is not None else sigma
    # The padded interior is centred in the box with the full grid's spacing: its half-width is (n+1)/2 steps.
    vertices, faces = marching_cubes(volume, level, bounds * (len(volume) - 1) / (r - 1))
    if len(faces) == 0:
        raise ExportError(f"no surface at density level {level}: sigma ranges over [{sigma.min():.3g}, "
                          f"{sigma.max():.3g}] inside the box; choose a level in that range")
    colors = []
    for s in range(0, len(vertices), chunk):
        pts = torch.from_numpy(vertices[s:s + chunk]).to(dev)[None]
        rgb = field(pts)[1][0, :, :3].clamp(0, 1)
        colors.append((rgb * 255).round().to(torch.uint8).cpu().numpy())
    return vertices, faces, np.concatenate(colors)
