"""EG3D tri-plane volume renderer, the reference: rays -> sample depths -> tri-plane features -> pixels.

Mirrors the official `training/volumetric_rendering` modules (names, shapes, op order) so that the fp32
results match the official goldens; see /work/shared/parity/eg3d/README.md §2 for the maths.
Shapes: N = batch, R = rays per image, D = samples per ray, M = points per image (R*D), C = channels.
`deterministic=True` is the golden convention (no stratified jitter, inverse-CDF with u = linspace(0, 1)).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "RenderingError", "generate_planes", "project_onto_planes", "inverse_plane_axes", "sample_from_planes",
    "get_ray_limits_box",
    "sample_stratified", "sample_pdf", "sample_importance", "unify_samples",
    "march_weights", "RaySampler", "MipRayMarcher2", "ImportanceRenderer",
]


class RenderingError(ValueError):
    """Bad input to the volume renderer (shapes or rendering options)."""


def generate_planes(device: torch.device | str | None = None) -> torch.Tensor:
    """Axes of the three tri-plane planes [3, 3, 3]: xy, xz and zx (the official EG3D layout)."""
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32, device=device)


def project_onto_planes(planes: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Project points [N, M, 3] on plane axes [P, 3, 3] -> 2-D plane coordinates [N*P, M, 2]."""
    # Only the first two columns of the inverse are needed; for EG3D's permutation axes this is exact.
    return _project(torch.linalg.inv(planes.float())[..., :2], coordinates)


def _project(inv_planes: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Points [N, M, 3] times the first two columns of the inverse plane axes [P, 3, 2] -> [N*P, M, 2]."""
    N, M, _ = coordinates.shape
    P = inv_planes.shape[0]
    with torch.autocast(coordinates.device.type, enabled=False):  # plane coordinates stay float32 under autocast
        return torch.matmul(coordinates.unsqueeze(1), inv_planes.to(coordinates.dtype).unsqueeze(0)).reshape(N * P, M, 2)


def sample_from_planes(plane_axes: torch.Tensor, plane_features: torch.Tensor, coordinates: torch.Tensor,
                       box_warp: float, inv_plane_axes: torch.Tensor | None = None) -> torch.Tensor:
    """Bilinearly read tri-plane features [N, P, C, H, W] at points [N, M, 3] -> [N, P, M, C].

    Points are scaled by 2/box_warp so that the box [-box_warp/2, box_warp/2]^3 maps onto [-1, 1];
    points outside read zeros (grid_sample zero padding, align_corners=False, as in the official code).
    The result is a strided view of grid_sample's output (no copy); reduce it (mean over planes) or
    use reshape, not view. inv_plane_axes: `inverse_plane_axes(plane_axes)` if the caller keeps it.
    """
    if plane_features.ndim != 5:
        raise RenderingError(f"plane_features must be [N, 3, C, H, W], got shape {tuple(plane_features.shape)}")
    N, P, C, H, W = plane_features.shape
    if coordinates.ndim != 3 or coordinates.shape[0] != N or coordinates.shape[-1] != 3:
        raise RenderingError(f"coordinates must be [N={N}, M, 3], got shape {tuple(coordinates.shape)}")
    M = coordinates.shape[1]
    inv_planes = inverse_plane_axes(plane_axes) if inv_plane_axes is None else inv_plane_axes
    out = _grid_sample_planes(inv_planes, plane_features.reshape(N * P, C, H, W), coordinates, box_warp)
    return out.permute(0, 3, 2, 1).reshape(N, P, M, C)


def inverse_plane_axes(plane_axes: torch.Tensor) -> torch.Tensor:
    """The first two columns of the inverse plane axes [P, 3, 2] (what points are projected with)."""
    return torch.linalg.inv(plane_axes.float())[..., :2]


def _grid_sample_planes(inv_planes: torch.Tensor, planes: torch.Tensor, coordinates: torch.Tensor,
                        box_warp: float) -> torch.Tensor:
    """planes [N*P, C, H, W] (any memory format), points [N, M, 3], inverse plane axes [P, 3, 2]
    -> channel-first samples [N*P, C, 1, M]."""
    coordinates = (2 / box_warp) * coordinates
    grid = _project(inv_planes, coordinates).unsqueeze(1)  # [N*P, 1, M, 2]
    return F.grid_sample(planes, grid.to(planes.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def get_ray_limits_box(ray_origins: torch.Tensor, ray_directions: torch.Tensor,
                       box_side_length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit depths [..., 1] of rays through the cube [-s/2, s/2]^3 (slab method); -1/-2 for misses."""
    o = ray_origins.detach()
    inv_d = 1 / ray_directions.detach()
    half = box_side_length / 2
    t0, t1 = (-half - o) * inv_d, (half - o) * inv_d
    t_near = torch.minimum(t0, t1).amax(-1, keepdim=True)
    t_far = torch.maximum(t0, t1).amin(-1, keepdim=True)
    hit = t_near <= t_far
    return torch.where(hit, t_near, -1.0), torch.where(hit, t_far, -2.0)


def sample_stratified(ray_origins: torch.Tensor, ray_start: float | torch.Tensor, ray_end: float | torch.Tensor,
                      depth_resolution: int, disparity_space_sampling: bool = False,
                      deterministic: bool = False) -> torch.Tensor:
    """Coarse depths [N, R, D, 1]: D evenly spaced depths from ray_start to ray_end (inclusive), each
    jittered forward by U[0,1) * spacing unless deterministic. ray_start/ray_end: floats or [N, R, 1]."""
    N, R, _ = ray_origins.shape
    device, dtype = ray_origins.device, ray_origins.dtype
    D = depth_resolution
    if disparity_space_sampling:  # uniform in inverse depth
        depths = torch.linspace(0, 1, D, device=device, dtype=dtype).reshape(1, 1, D, 1).expand(N, R, D, 1)
        if not deterministic:
            depths = depths + torch.rand((N, R, D, 1), device=device, dtype=dtype) * (1 / (D - 1))
        if isinstance(ray_start, torch.Tensor):
            ray_start, ray_end = ray_start.unsqueeze(-2), ray_end.unsqueeze(-2)
        return 1. / (1. / ray_start * (1. - depths) + 1. / ray_end * depths)
    if isinstance(ray_start, torch.Tensor):  # per-ray limits [N, R, 1]
        steps = (torch.arange(D, device=device, dtype=dtype) / (D - 1)).reshape(1, 1, D, 1)
        depths = ray_start.unsqueeze(-2) + steps * (ray_end - ray_start).unsqueeze(-2)
        delta = ((ray_end - ray_start) / (D - 1)).unsqueeze(-2)
    else:
        # torch.linspace itself for bit-exactness (it fills the second half backwards from the end).
        depths = torch.linspace(ray_start, ray_end, D, device=device, dtype=dtype).reshape(1, 1, D, 1)
        depths = depths.expand(N, R, D, 1)
        delta = (ray_end - ray_start) / (D - 1)
    if not deterministic:
        depths = depths + torch.rand((N, R, D, 1), device=device, dtype=dtype) * delta
    return depths


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, N_importance: int, det: bool = False,
               eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF sampling (NeRF): bins [B, K+1] (bin edges), weights [B, K] -> samples [B, N_importance].
    det=True uses u = linspace(0, 1, N_importance) (both ends included) instead of U[0,1)."""
    B, K = weights.shape
    weights = weights + eps
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [B, K+1], 0 .. ~1
    if det:
        u = torch.linspace(0, 1, N_importance, device=bins.device, dtype=cdf.dtype).expand(B, N_importance)
        u = u.contiguous()
    else:
        u = torch.rand(B, N_importance, device=bins.device, dtype=cdf.dtype)
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp_min(inds - 1, 0)
    above = torch.clamp_max(inds, K)
    cdf_below, cdf_above = cdf.gather(1, below), cdf.gather(1, above)
    bins_below, bins_above = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_above - cdf_below
    # A (near) zero-probability bin is never really sampled; any denominator works, 1 avoids 0/0.
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_below + (u - cdf_below) / denom * (bins_above - bins_below)


@torch.no_grad()
def sample_importance(z_vals: torch.Tensor, weights: torch.Tensor, N_importance: int,
                      det: bool = False) -> torch.Tensor:
    """Importance depths [N, R, N_importance, 1] from coarse depths [N, R, D, 1] and their march weights
    [N, R, D-1, 1]: weights are smoothed (max-pool 2 then avg-pool 2, + 0.01) and sampled between the
    midpoints of the coarse depths."""
    N, R, D, _ = z_vals.shape
    z_vals = z_vals.reshape(N * R, D)
    weights = weights.reshape(N * R, 1, -1).float()
    weights = F.max_pool1d(weights, 2, 1, padding=1)
    weights = F.avg_pool1d(weights, 2, 1).squeeze(1) + 0.01
    z_vals_mid = 0.5 * (z_vals[:, :-1] + z_vals[:, 1:])
    samples = sample_pdf(z_vals_mid, weights[:, 1:-1], N_importance, det=det)
    return samples.reshape(N, R, N_importance, 1)


def unify_samples(depths1: torch.Tensor, colors1: torch.Tensor, densities1: torch.Tensor,
                  depths2: torch.Tensor, colors2: torch.Tensor, densities2: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge two sample sets [N, R, D_i, *] along each ray and sort them by depth."""
    all_depths = torch.cat([depths1, depths2], dim=-2)
    _, indices = torch.sort(all_depths.squeeze(-1), dim=-1)  # ties are the same point: order is irrelevant
    indices = indices.unsqueeze(-1)
    all_depths = all_depths.gather(-2, indices)
    all_colors = torch.cat([colors1, colors2], dim=-2)
    all_colors = all_colors.gather(-2, indices.expand(-1, -1, -1, all_colors.shape[-1]))
    all_densities = torch.cat([densities1, densities2], dim=-2).gather(-2, indices)
    return all_depths, all_colors, all_densities


class RaySampler(nn.Module):
    """One ray per pixel centre, rows first (ray index = row * resolution + column), OpenCV camera axes."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor,
                resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cam2world [N, 4, 4], normalised intrinsics [N, 3, 3] -> origins, unit directions [N, res^2, 3]."""
        if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4):
            raise RenderingError(f"cam2world must be [N, 4, 4], got shape {tuple(cam2world.shape)}")
        if intrinsics.ndim != 3 or intrinsics.shape[1:] != (3, 3) or intrinsics.shape[0] != cam2world.shape[0]:
            raise RenderingError(f"intrinsics must be [N={cam2world.shape[0]}, 3, 3], got {tuple(intrinsics.shape)}")
        N, device, dtype = cam2world.shape[0], cam2world.device, cam2world.dtype
        cam_locs = cam2world[:, :3, 3]
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]

        ij = torch.arange(resolution, device=device, dtype=dtype) * (1. / resolution) + (0.5 / resolution)
        y_cam = ij.repeat_interleave(resolution).unsqueeze(0)  # v: row coordinate
        x_cam = ij.repeat(resolution).unsqueeze(0)  # u: column coordinate
        x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx
        y_lift = (y_cam - cy) / fy
        ones = torch.ones_like(x_lift)
        cam_rel_points = torch.stack((x_lift, y_lift, ones, ones), dim=1)  # [N, 4, R] homogeneous points
        world_rel_points = torch.bmm(cam2world, cam_rel_points).transpose(1, 2)[:, :, :3]
        ray_dirs = F.normalize(world_rel_points - cam_locs[:, None, :], dim=2)
        ray_origins = cam_locs.unsqueeze(1).expand(-1, ray_dirs.shape[1], -1).contiguous()
        return ray_origins, ray_dirs


def march_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """MipRayMarcher2's weights for one channel: raw densities / depths [..., S] sorted along the last
    dim -> interval weights [..., S-1] (same ops and order as the marcher, without the colours)."""
    deltas = depths[..., 1:] - depths[..., :-1]
    densities_mid = F.softplus((densities[..., :-1] + densities[..., 1:]) / 2 - 1)
    alpha = 1 - torch.exp(-(densities_mid * deltas))
    alpha_shifted = torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1)
    return alpha * torch.cumprod(alpha_shifted, -1)[..., :-1]


class MipRayMarcher2(nn.Module):
    """Volume rendering of depth-sorted samples on the intervals between them (Mip-NeRF style midpoints)."""

    def forward(self, colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor,
                rendering_options: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """colors [N, R, D, C], densities/depths [N, R, D, 1] -> rgb [N, R, C] in [-1, 1] scale,
        depth [N, R, 1], weights [N, R, D-1, 1]."""
        clamp_mode = rendering_options.get("clamp_mode", "softplus")
        if clamp_mode != "softplus":
            raise RenderingError(f"MipRayMarcher2 supports only clamp_mode='softplus', got {clamp_mode!r}")
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2

        densities_mid = F.softplus(densities_mid - 1)  # the -1 activation bias is part of the model
        alpha = 1 - torch.exp(-(densities_mid * deltas))
        # Exclusive cumulative product = transmittance before each interval (1e-10 keeps it non-zero).
        alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
        weights = alpha * torch.cumprod(alpha_shifted, -2)[:, :, :-1]

        composite_rgb = torch.sum(weights * colors_mid, -2)
        weight_total = weights.sum(2)
        composite_depth = torch.sum(weights * depths_mid, -2) / weight_total
        # Empty rays (0/0) go to the far end; the clamp range is global over the batch, as officially.
        composite_depth = torch.nan_to_num(composite_depth, float("inf"))
        composite_depth = torch.clamp(composite_depth, torch.min(depths), torch.max(depths))
        if rendering_options.get("white_back", False):
            composite_rgb = composite_rgb + 1 - weight_total
        return composite_rgb * 2 - 1, composite_depth, weights


class ImportanceRenderer(nn.Module):
    """Two-pass (coarse stratified + importance) tri-plane renderer of EG3D: the reference, in the
    official op order on [N, R, S, C] tensors, for any decoder that follows the protocol
    `decoder(features [N, 3, M, C], directions) -> {'rgb', 'sigma'}`. `renderer_fused.FusedImportanceRenderer`
    computes the same (up to rounding) much faster and is what EG3DGenerator uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        # A plain attribute, not a buffer: checkpoints hold no renderer state, and a module built on the
        # meta device (diffusers' low-memory loading) must not lose it. Moved lazily in run_model.
        self.plane_axes = generate_planes()

    def _axes(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The plane axes on `device` and their inverse, made once per device (not on every render)."""
        if self.plane_axes.device != device or getattr(self, "_inv_axes", None) is None:
            self.plane_axes = generate_planes(device)
            self._inv_axes = inverse_plane_axes(self.plane_axes)
        return self.plane_axes, self._inv_axes

    def run_model(self, planes: torch.Tensor, decoder, sample_coordinates: torch.Tensor,
                  sample_directions: torch.Tensor, options: dict, deterministic: bool = False) -> dict:
        """Decode the tri-plane field at points [N, M, 3] -> {'rgb': [N, M, C'], 'sigma': [N, M, 1]}."""
        axes, inv_axes = self._axes(sample_coordinates.device)
        sampled_features = sample_from_planes(axes, planes, sample_coordinates, box_warp=options["box_warp"],
                                              inv_plane_axes=inv_axes)
        out = decoder(sampled_features, sample_directions)
        if options.get("density_noise", 0) > 0 and not deterministic:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out

    def forward(self, planes: torch.Tensor, decoder, ray_origins: torch.Tensor, ray_directions: torch.Tensor,
                rendering_options: dict, deterministic: bool = False, trace: dict | None = None,
                features: bool = True, tap_constants: tuple | None = None) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """planes [N, 3, C, H, W], rays [N, R, 3] -> features [N, R, C'] (in [-1, 1] scale),
        depth [N, R, 1], accumulated opacity [N, R, 1]. `trace`, if a dict, receives the intermediates.
        `features=False`: depth-only render, features is None (here everything is computed and the
        features dropped; the fused renderer decodes only the density). tap_constants: the fused
        renderer's (unused here)."""
        opts, trace = self.check_inputs(planes, ray_origins, ray_directions, rendering_options, trace)
        depths_coarse = self.coarse_depths(ray_origins, ray_directions, opts, deterministic)
        return self.render_reference(planes, decoder, ray_origins, ray_directions, depths_coarse, opts,
                                     deterministic, trace, features)

    @staticmethod
    def check_inputs(planes, ray_origins, ray_directions, rendering_options, trace):
        if planes.ndim != 5 or planes.shape[1] != 3:
            raise RenderingError(f"planes must be [N, 3, C, H, W], got shape {tuple(planes.shape)}")
        if ray_origins.shape != ray_directions.shape or ray_origins.ndim != 3 or ray_origins.shape[0] != planes.shape[0]:
            raise RenderingError(f"ray_origins/ray_directions must both be [N={planes.shape[0]}, R, 3], got "
                                 f"{tuple(ray_origins.shape)} and {tuple(ray_directions.shape)}")
        opts = rendering_options
        missing = [k for k in ("ray_start", "ray_end", "box_warp", "depth_resolution", "depth_resolution_importance")
                   if k not in opts]
        if missing:
            raise RenderingError(f"rendering_options lacks {missing}")
        clamp_mode = opts.get("clamp_mode", "softplus")
        if clamp_mode != "softplus":
            raise RenderingError(f"MipRayMarcher2 supports only clamp_mode='softplus', got {clamp_mode!r}")
        return opts, (trace if isinstance(trace, dict) else None)

    @staticmethod
    def coarse_depths(ray_origins, ray_directions, opts, deterministic) -> torch.Tensor:
        """Stratified depths [N, R, D, 1] between the ray limits (per ray from the box for 'auto')."""
        ray_start, ray_end = opts["ray_start"], opts["ray_end"]
        if ray_start == ray_end == "auto":  # per-ray limits from the box; rays that miss it borrow limits
            ray_start, ray_end = get_ray_limits_box(ray_origins, ray_directions, opts["box_warp"])
            valid = ray_end > ray_start
            if valid.any():
                starts = ray_start[valid]
                ray_start = torch.where(valid, ray_start, starts.min())
                ray_end = torch.where(valid, ray_end, starts.max())  # official quirk: max of the *starts*
        return sample_stratified(ray_origins, ray_start, ray_end, opts["depth_resolution"],
                                 opts.get("disparity_space_sampling", False), deterministic)

    def render_reference(self, planes, decoder, ray_origins, ray_directions, depths_coarse, opts, deterministic,
                         trace, features):
        # Coarse pass
        colors_coarse, densities_coarse = self._decode_depths(planes, decoder, ray_origins, ray_directions,
                                                              depths_coarse, opts, deterministic, trace, "coarse")
        N_importance = opts["depth_resolution_importance"]
        if N_importance > 0:
            _, _, weights = self.ray_marcher(colors_coarse, densities_coarse, depths_coarse, opts)
            depths_fine = sample_importance(depths_coarse, weights, N_importance, det=deterministic)
            colors_fine, densities_fine = self._decode_depths(planes, decoder, ray_origins, ray_directions,
                                                              depths_fine, opts, deterministic, trace, "fine")
            all_depths, all_colors, all_densities = unify_samples(depths_coarse, colors_coarse, densities_coarse,
                                                                  depths_fine, colors_fine, densities_fine)
            rgb_final, depth_final, weights_final = self.ray_marcher(all_colors, all_densities, all_depths, opts)
            if trace is not None:
                trace.update(depths_coarse=depths_coarse, weights_coarse=weights, depths_fine=depths_fine,
                             all_depths=all_depths, weights_final=weights_final)
        else:
            rgb_final, depth_final, weights_final = self.ray_marcher(colors_coarse, densities_coarse,
                                                                     depths_coarse, opts)
            if trace is not None:
                trace.update(depths_coarse=depths_coarse, weights_coarse=weights_final, weights_final=weights_final)
        return rgb_final if features else None, depth_final, weights_final.sum(2)

    def _decode_depths(self, planes, decoder, ray_origins, ray_directions, depths, opts, deterministic, trace, name):
        """Decode the points o + t*d for depths [N, R, S, 1] -> colors [N, R, S, C'], densities [N, R, S, 1]."""
        N, R, S, _ = depths.shape
        coordinates = (ray_origins.unsqueeze(-2) + depths * ray_directions.unsqueeze(-2)).reshape(N, R * S, 3)
        directions = ray_directions.unsqueeze(-2).expand(-1, -1, S, -1).reshape(N, R * S, 3)
        out = self.run_model(planes, decoder, coordinates, directions, opts, deterministic)
        if trace is not None:
            trace[f"sigma_{name}"] = out["sigma"]
        return out["rgb"].reshape(N, R, S, -1), out["sigma"].reshape(N, R, S, 1)
