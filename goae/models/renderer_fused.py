"""The fused EG3D volume renderer: the same maths as `renderer.ImportanceRenderer`, much faster.

The three planes are read with one `embedding_bag` per chunk of points (`TriplaneTaps`), which also
sums them; the decoder MLP runs point-major on chunks sized for the device (CPU caches; GPU memory);
only depths and densities (one channel) are merged, sorted and marched. The colour composite
sum_i w_i (c_i + c_i+1)/2 is rewritten as sum_k a_k c_k with a_k = (w_k-1 + w_k)/2 scattered back to
the coarse and fine samples, so the 32 feature channels are never gathered, concatenated or averaged
pairwise. On a CPU in fp32 inference the per-point work runs in a fused C++ kernel (goae/models/kernels.py).
Differentiable (plain torch ops elsewhere). Agrees with the reference to float rounding
(tests/test_renderer_fast.py). `TriplaneField` serves density/colour queries (meshes) the same way.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import kernels
from .renderer import (ImportanceRenderer, RenderingError, generate_planes, march_weights, sample_from_planes,
                       sample_importance)

__all__ = ["FusedImportanceRenderer", "TriplaneTaps", "TriplaneField", "chunk_points_for", "tap_constants"]

# Points decoded per chunk: a CPU keeps a chunk's intermediates in cache; a GPU wants few, large launches
# (~0.7 KB of intermediates per point: 4M points is ~3 GB).
CPU_CHUNK_POINTS = 1 << 15
CUDA_CHUNK_POINTS = 1 << 22


def plane_axes_key() -> tuple:
    """EG3D's plane axes as a tuple of floats: TriplaneTaps' cache key."""
    return tuple(generate_planes("cpu").flatten().tolist())


def chunk_points_for(device: torch.device) -> int:
    return CUDA_CHUNK_POINTS if device.type == "cuda" else CPU_CHUNK_POINTS


class FusedImportanceRenderer(ImportanceRenderer):
    """`ImportanceRenderer` with the fused implementation, used when the decoder has `decode_plane_sum`
    (OSGDecoder does) and the planes fit TriplaneTaps' float32 indices; else the reference runs.

    fused: False runs the reference (the official op order). chunk_points: points per chunk, None =
    sized for the device. kernels: use the fused C++ CPU kernel where it applies."""

    def __init__(self, fused: bool = True, chunk_points: int | None = None, kernels: bool = True) -> None:
        super().__init__()
        self.fused, self.chunk_points, self.kernels = fused, chunk_points, kernels
        self.plane_axes_key = plane_axes_key()  # TriplaneTaps' constants are cached per device

    def chunk_size(self, device: torch.device) -> int:
        return self.chunk_points or chunk_points_for(device)

    def tap_constants_for(self, planes: torch.Tensor, box_warp: float) -> tuple | None:
        """TriplaneTaps' constants for planes [N, P, C, H, W] (`tap_constants`, cached per device and
        shape), None where the fused path cannot run. Callers compute them outside the renderer and pass
        them in: under torch.compile the renderer is one compiled region, and constants built inside it
        (host tensors, linalg.inv, copies to the device) would be traced into every compiled render."""
        if planes.ndim != 5 or not self.fused or not _fits(planes):
            return None
        _, P, _, H, W = planes.shape
        return tap_constants(planes.device, self.plane_axes_key, P, H, W, float(box_warp))

    def forward(self, planes: torch.Tensor, decoder, ray_origins: torch.Tensor, ray_directions: torch.Tensor,
                rendering_options: dict, deterministic: bool = False, trace: dict | None = None,
                features: bool = True, tap_constants: tuple | None = None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """As ImportanceRenderer.forward; tap_constants: `tap_constants_for(planes, box_warp)`, computed
        here when not given."""
        opts, trace = self.check_inputs(planes, ray_origins, ray_directions, rendering_options, trace)
        depths_coarse = self.coarse_depths(ray_origins, ray_directions, opts, deterministic)
        if self.fused and hasattr(decoder, "decode_plane_sum") and _fits(planes):
            return self.render_fused(planes, decoder, ray_origins, ray_directions, depths_coarse, opts, deterministic,
                                     trace, features, tap_constants)
        return self.render_reference(planes, decoder, ray_origins, ray_directions, depths_coarse, opts,
                                     deterministic, trace, features)

    def render_fused(self, planes, decoder, ray_origins, ray_directions, depths_coarse, opts, deterministic, trace,
                     features=True, tap_constants=None):
        N = planes.shape[0]
        D, N_importance = depths_coarse.shape[2], opts["depth_resolution_importance"]
        sampler = TriplaneTaps(planes, self.plane_axes_key, opts["box_warp"], constants=tap_constants)
        depths_c = depths_coarse.squeeze(-1)
        sigma_c, colors_c = self._decode(sampler, decoder, ray_origins, ray_directions, depths_c, opts,
                                              deterministic, features)
        if N_importance > 0:
            weights_c = march_weights(sigma_c, depths_c)
            depths_fine = sample_importance(depths_coarse, weights_c.unsqueeze(-1), N_importance, det=deterministic)
            depths_f = depths_fine.squeeze(-1)
            sigma_f, colors_f = self._decode(sampler, decoder, ray_origins, ray_directions, depths_f, opts,
                                                  deterministic, features)
            all_depths, order = torch.sort(torch.cat([depths_c, depths_f], -1), dim=-1)
            all_sigma = torch.cat([sigma_c, sigma_f], -1).gather(-1, order)
        else:
            all_depths, all_sigma, order = depths_c, sigma_c, None
        weights = march_weights(all_sigma, all_depths)  # [N, R, K-1]
        weight_total = weights.sum(-1, keepdim=True)
        depth = torch.sum(weights * ((all_depths[..., :-1] + all_depths[..., 1:]) / 2), -1, keepdim=True) / weight_total
        depth = torch.clamp(torch.nan_to_num(depth, float("inf")), torch.min(all_depths), torch.max(all_depths))
        rgb = self._colors(weights, weight_total, order, colors_c, colors_f if N_importance > 0 else None,
                                D, opts) if features else None

        if trace is not None:
            trace.update(depths_coarse=depths_coarse, sigma_coarse=sigma_c.reshape(N, -1, 1),
                         weights_coarse=(weights_c if N_importance > 0 else weights).unsqueeze(-1),
                         weights_final=weights.unsqueeze(-1))
            if N_importance > 0:
                trace.update(depths_fine=depths_fine, sigma_fine=sigma_f.reshape(N, -1, 1),
                             all_depths=all_depths.unsqueeze(-1))
        return rgb, depth, weight_total

    @staticmethod
    def _colors(weights, weight_total, order, colors_c, colors_f, D, opts):
        """Composite colours of the coarse (and fine) samples with the sorted interval weights."""
        # Colour weight of each sample: half of each interval it bounds, then back to the unsorted samples.
        a = (F.pad(weights, (0, 1)) + F.pad(weights, (1, 0))) / 2  # [N, R, K]
        if order is not None:
            a = torch.zeros_like(a).scatter(-1, order, a)
        rgb = _composite(colors_c, a[..., :D])
        if colors_f is not None:
            rgb = rgb + _composite(colors_f, a[..., D:])
        if opts.get("white_back", False):
            rgb = rgb + 1 - weight_total
        return rgb * 2 - 1

    def _decode(self, sampler, decoder, ray_origins, ray_directions, depths, opts, deterministic,
                     features=True):
        """Decode the points o + t*d for depths [N, R, S] in chunks of rays ->
        densities [N, R, S] and colours [N, R, S, C'] (float32; None if not features)."""
        N, R, S = depths.shape
        if self.kernels and kernels.applicable(sampler, decoder):  # fused C++ (CPU fp32 inference)
            sigma, colors = kernels.decode_rays(sampler, decoder, ray_origins, ray_directions, depths, features)
            if opts.get("density_noise", 0) > 0 and not deterministic:
                sigma = sigma + torch.randn_like(sigma) * opts["density_noise"]
            return sigma, colors
        step = max(1, self.chunk_size(depths.device) // (N * S))
        inference = not torch.is_grad_enabled()
        sigmas, colors = [], []
        for r0 in range(0, R, step):
            t = depths[:, r0:r0 + step]
            coordinates = (ray_origins[:, r0:r0 + step].unsqueeze(-2)
                           + t.unsqueeze(-1) * ray_directions[:, r0:r0 + step].unsqueeze(-2))
            taps = sampler(coordinates.reshape(N, -1, 3))
            sigma, rgb = decoder.decode_plane_sum(taps, sampler.n_planes, features=features)
            sigma = sigma.reshape(N, -1, S)
            rgb = rgb.reshape(N, -1, S, rgb.shape[-1]) if features else None
            if not inference:  # autograd: collect and concatenate
                sigmas.append(sigma.float())
                colors.append(rgb.float() if features else None)
                continue
            if r0 == 0:  # inference: write into one buffer (no list + cat copy of ~100 MB at 128^2 rays)
                sigmas = torch.empty(N, R, S, device=depths.device)
                colors = torch.empty(N, R, S, rgb.shape[-1], device=depths.device) if features else None
            sigmas[:, r0:r0 + step] = sigma
            if features:
                colors[:, r0:r0 + step] = rgb
        if not inference:
            sigmas, colors = torch.cat(sigmas, 1), (torch.cat(colors, 1) if features else None)
        sigma = sigmas
        if opts.get("density_noise", 0) > 0 and not deterministic:
            sigma = sigma + torch.randn_like(sigma) * opts["density_noise"]
        return sigma, colors


def _fits(planes: torch.Tensor) -> bool:
    """Whether TriplaneTaps' float32 row indices are exact for planes [N, P, C, H, W]."""
    return planes.shape[1] * (planes.shape[3] + 2) * (planes.shape[4] + 2) < 2 ** 24


@functools.lru_cache(maxsize=64)
def tap_constants(device: torch.device, axes: tuple, P: int, H: int, W: int, box_warp: float) -> tuple:
    """TriplaneTaps' constants: the affine map points -> pixel (x, y) of every plane, and the padded-table
    row arithmetic, on `device` (axes: the plane axes as a flat tuple of floats). Cached; call it outside
    compiled code (FusedImportanceRenderer.tap_constants_for)."""
    plane_axes = torch.tensor(axes, dtype=torch.float32).reshape(P, 3, 3)
    # Pixel coordinates (x, y) of every plane as one affine map of the points: grid_sample's
    # ((g + 1) * size - 1) / 2 with g = (2 / box_warp) * points @ inverse axes.
    inv = torch.linalg.inv(plane_axes)[..., :2]  # [P, 3, 2]
    size = torch.tensor([W, H], dtype=torch.float32)
    A = (inv * (size / box_warp)).permute(1, 0, 2).reshape(3, P * 2)
    b = ((size - 1) / 2).repeat(P)
    stride = torch.tensor([1, W + 2], dtype=torch.float32).repeat(P)
    base = (torch.arange(P, dtype=torch.float32) * ((H + 2) * (W + 2))).repeat_interleave(2)
    base = base * torch.tensor([0, 1], dtype=torch.float32).repeat(P)  # on y only
    # Padded-table row of a tap at integer pixel (x, y) of plane p: (x + 1) + (y + 1) * (W + 2) + p * rows,
    # with x, y clamped to [-1, size] (the border). x0 = floor(u) and x1 = x0 + 1 (= clamp(x0, -2, size-1) + 1).
    # Computed in float32, exact while P * (H+2) * (W+2) < 2^24 (planes up to ~2300^2); batch offsets are int64.
    stride, offset0, offset1 = stride.view(1, -1), (stride + base).view(1, -1), (2 * stride + base).view(1, -1)
    lo0, hi0 = torch.full_like(stride, -1), size.repeat(P).view(1, -1)
    return tuple(t.to(device) for t in (A, b, stride, offset0, offset1, lo0, hi0, lo0 - 1, hi0 - 1))


class TriplaneTaps:
    """Tri-plane sampling as one `embedding_bag`: bilinear (align_corners=False, zero padding) reads of
    the P planes, summed over the planes, for points [N, M, 3] -> [N*M, C].

    Same result as grid_sample on each plane + sum, up to rounding, but the planes are a channels-last
    table ([N*P*(H+2)*(W+2), C] with a zero border, so out-of-range taps need no mask) and the 4P taps
    of a point are a weighted bag of rows: contiguous C-float reads, no per-channel gathers, and no
    [P, C, M] intermediate. Differentiable w.r.t. the planes."""

    def __init__(self, planes: torch.Tensor, plane_axes: torch.Tensor | tuple, box_warp: float,
                 constants: tuple | None = None):
        N, P, C, H, W = planes.shape
        self.n_planes, self.plane_size = P, (H, W)
        self.table = F.pad(planes.permute(0, 1, 3, 4, 2), (0, 0, 1, 1, 1, 1)).reshape(-1, C)
        # The constants are computed once per device and shape and cached: no host-device round trip
        # per render, nothing that stops a CUDA graph capture. A compiled renderer gets them as an
        # argument (`constants`, from tap_constants outside the compiled region).
        if constants is None:
            axes = plane_axes if isinstance(plane_axes, tuple) else tuple(plane_axes.detach().cpu().flatten().tolist())
            constants = tap_constants(planes.device, axes, P, H, W, float(box_warp))
        (self.A, self.b, self.stride, self.offset0, self.offset1, self.lo0, self.hi0, self.lo1, self.hi1) = constants
        self.batch_stride = P * (H + 2) * (W + 2)

    def __call__(self, coordinates: torch.Tensor) -> torch.Tensor:
        N, M, _ = coordinates.shape
        P = self.n_planes
        with torch.autocast(coordinates.device.type, enabled=False):  # pixel positions need float32
            uv = torch.addmm(self.b, coordinates.reshape(N * M, 3).float(), self.A)
        f = torch.floor(uv)  # [B, P*2]: (x, y) of every plane
        t1 = uv - f
        w = torch.stack([1 - t1, t1], -1).view(-1, P, 2, 2)  # [B, P, (x, y), (tap 0, tap 1)]
        i = torch.stack([torch.addcmul(self.offset0, torch.clamp(f, self.lo0, self.hi0), self.stride),
                         torch.addcmul(self.offset1, torch.clamp(f, self.lo1, self.hi1), self.stride)], -1).view(-1, P, 2, 2)
        weights = (w[:, :, 1, :, None] * w[:, :, 0, None, :]).view(N * M, P * 4)  # (y tap, x tap)
        index = (i[:, :, 1, :, None] + i[:, :, 0, None, :]).view(N, M * P * 4).long()
        if N > 1:
            index = index + torch.arange(N, device=index.device).unsqueeze(1) * self.batch_stride
        return F.embedding_bag(index.view(N * M, P * 4), self.table, per_sample_weights=weights.to(self.table.dtype),
                               mode="sum")


class TriplaneField:
    """The decoded tri-plane field at arbitrary points (mesh export, density queries), through the
    renderer's fast tri-plane taps and fused decoder when the decoder has `decode_plane_sum`
    (OSGDecoder), else through `sample_from_planes` + `decoder(...)`. Build once per tri-plane set."""

    def __init__(self, planes: torch.Tensor, decoder, plane_axes: torch.Tensor | tuple, box_warp: float) -> None:
        if planes.ndim != 5:
            raise RenderingError(f"planes must be [N, 3, C, H, W], got shape {tuple(planes.shape)}")
        if isinstance(plane_axes, tuple):
            plane_axes = torch.tensor(plane_axes, dtype=torch.float32).reshape(-1, 3, 3)
        self.planes, self.decoder, self.plane_axes, self.box_warp = planes, decoder, plane_axes, float(box_warp)
        self.taps = TriplaneTaps(planes, plane_axes, box_warp) if hasattr(decoder, "decode_plane_sum") and _fits(planes) else None

    def density(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Points [N, M, 3] -> raw density sigma [N, M] only (the decoder's colour rows are skipped)."""
        N, M, _ = coordinates.shape
        if self.taps is not None:
            return self.decoder.decode_plane_sum(self.taps(coordinates), self.taps.n_planes, features=False)[0] \
                .reshape(N, M).float()
        return self(coordinates)[0]

    def __call__(self, coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points [N, M, 3] -> (raw density sigma [N, M], features [N, M, C'] in (-0.001, 1.001))."""
        N, M, _ = coordinates.shape
        if self.taps is not None:
            sigma, rgb = self.decoder.decode_plane_sum(self.taps(coordinates), self.taps.n_planes)
            return sigma.reshape(N, M).float(), rgb.reshape(N, M, -1).float()
        feats = sample_from_planes(self.plane_axes.to(coordinates.device), self.planes,
                                   coordinates.to(self.planes.dtype), self.box_warp)
        directions = torch.zeros_like(coordinates)
        directions[..., 2] = -1  # the official shape script's dummy direction (the OSGDecoder ignores it)
        out = self.decoder(feats, directions)
        return out["sigma"][..., 0].float(), out["rgb"].float()


def _composite(colors: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_s a[n, r, s] * colors[n, r, s, :]: colours [N, R, S, C], weights [N, R, S] -> [N, R, C]."""
    N, R, S, C = colors.shape
    with torch.autocast(colors.device.type, enabled=False):  # the composite stays float32 under autocast
        return torch.bmm(a.reshape(N * R, 1, S).float(), colors.reshape(N * R, S, C).float()).view(N, R, C)
