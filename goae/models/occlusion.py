"""Occlusion-aware mix of GOAE (the official `Net.mix_fusion`).

The AFA-refined tri-plane (F) is only reliable where the input camera actually saw the surface.
We project the visible surface points (ray origin + depth * direction of the F render at the
input camera) onto the xy plane, dilate and smooth that hit map into a soft mask, and take F
features inside it and the W-space tri-plane features outside. Only plane 0 (xy, the plane
facing a frontal camera) is mixed; planes xz and zy are taken from F.

The official blur draws sigma ~ U(1, 2) on every call; here sigma is a fixed argument
(default 1.5, the value of the parity goldens) so results are reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class OcclusionInputError(ValueError):
    """Bad rays, depth, mask or tri-plane shapes for the occlusion-aware mix."""


def gaussian_kernel(kernel_size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """1-D gaussian weights on linspace(-(k-1)/2, (k-1)/2, k), normalised (torchvision's recipe)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=device, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(img: torch.Tensor, sigma: float, kernel_size: int = 9) -> torch.Tensor:
    """Depthwise 2-D gaussian blur of (B, C, H, W) with reflect padding (as torchvision GaussianBlur)."""
    k1 = gaussian_kernel(kernel_size, sigma, img.device, img.dtype)
    k2 = torch.mm(k1[:, None], k1[None, :])
    C = img.shape[1]
    pad = kernel_size // 2
    out = F.pad(img, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(out, k2.expand(C, 1, kernel_size, kernel_size), groups=C)


def visibility_mask(ray_origins: torch.Tensor, ray_directions: torch.Tensor, depth: torch.Tensor,
                    plane_resolution: int = 256, blur_sigma: float = 1.5, threshold: float = 0.35,
                    box_warp: float = 1.0, kernel_size: int = 9) -> dict[str, torch.Tensor]:
    """Soft mask of the xy-plane texels that the rendering camera sees.

    ray_origins (B, R, 3) or (B, 1, 3); ray_directions (B, R, 3); depth: the render's
    `image_depth` (B, 1, h, w) with h*w = R (row-major, as the rays) or (B, R, 1).
    The plane spans [-box_warp/2, box_warp/2]^2; texel (row v, column u) covers y and x.

    Returns float32 tensors (B, 1, P, P): `mask_hits` (1 where a surface point lands),
    `mask_thresh` (blur(hits) > threshold) and `mask` (blur(mask_thresh), values in [0, 1]).
    """
    B, R = ray_directions.shape[:2]
    if ray_directions.shape[-1] != 3 or ray_origins.shape[0] != B or ray_origins.shape[-1] != 3:
        raise OcclusionInputError(f"rays must be (B, R, 3); got origins {tuple(ray_origins.shape)}, "
                                  f"directions {tuple(ray_directions.shape)}")
    if depth.shape[0] != B or depth.numel() != B * R:
        raise OcclusionInputError(f"depth must have one value per ray (B={B}, R={R}); got {tuple(depth.shape)}")
    xyz = ray_origins + depth.reshape(B, R, 1) * ray_directions
    P = plane_resolution
    # .long() truncates toward zero; the clamp makes every index valid first.
    u = torch.clamp((xyz[..., 0] / box_warp + 0.5) * P, min=0, max=P - 1).long()
    v = torch.clamp((xyz[..., 1] / box_warp + 0.5) * P, min=0, max=P - 1).long()
    hits = torch.zeros(B, P * P, device=xyz.device, dtype=torch.float32)
    hits.scatter_(1, v * P + u, 1.0)
    hits = hits.view(B, 1, P, P)
    thresh = (gaussian_blur(hits, blur_sigma, kernel_size) > threshold).float()
    mask = gaussian_blur(thresh, blur_sigma, kernel_size)
    return {"mask_hits": hits, "mask_thresh": thresh, "mask": mask}


def occlusion_aware_mix(planes_w: torch.Tensor, planes_f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """planes_* (B, 3, C, H, W) (plane order xy, xz, zy), mask (B, 1, H, W) -> mixed planes.

    plane 0: mask * F + (1 - mask) * W; planes 1, 2: F.
    """
    if planes_w.shape != planes_f.shape or planes_f.ndim != 5 or planes_f.shape[1] != 3:
        raise OcclusionInputError(f"planes_w and planes_f must both be (B, 3, C, H, W); got "
                                  f"{tuple(planes_w.shape)} and {tuple(planes_f.shape)}")
    B, _, _, H, W = planes_f.shape
    if mask.shape != (B, 1, H, W):
        raise OcclusionInputError(f"mask must be (B={B}, 1, {H}, {W}) to match the planes; got {tuple(mask.shape)}")
    mask = mask.to(planes_f.dtype)
    plane0 = mask * planes_f[:, 0] + (1 - mask) * planes_w[:, 0]
    return torch.cat([plane0.unsqueeze(1), planes_f[:, 1:]], dim=1)
