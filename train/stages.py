"""The two training forwards of GOAE, composed from the pipeline's parts exactly as
`GOAEPipeline.__call__` composes them (which itself runs under no_grad), but with autograd.

    encoder stage: x_enc -> encoder -> ws = offset + w_avg -> backbone_to/backbone_from -> W render
    afa stage:     (frozen encoder, W render) -> AFA -> F tri-planes -> visibility mask -> mix -> render

Each stage is an nn.Module whose only trainable child is the module being trained, so that
DistributedDataParallel wraps exactly that; the frozen generator is held outside the module tree.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from goae.models.encoder import STAGES
from goae.models.occlusion import occlusion_aware_mix, visibility_mask


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average down (or bilinear up) to size x size; identity when already there."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def progressive_stage(step: int, start: int, every: int) -> str:
    """e4e's progressive schedule mapped onto the GOAE encoder's row groups: base code only until
    `start`, then coarse, mid and fine deltas switch on every `every` steps (every = 0: all at once)."""
    if step < start:
        return STAGES[0]
    return STAGES[3] if every <= 0 else STAGES[min(3, 1 + (step - start) // every)]


class _Stage(nn.Module):
    def __init__(self, generator, afa_resolution: int, neural_rendering_resolution: int | None,
                 render: str, deterministic: bool = True):
        super().__init__()
        object.__setattr__(self, "G", generator)  # frozen and shared: not a child (DDP, state_dict)
        self.res, self.nrr, self.sr, self.deterministic = afa_resolution, neural_rendering_resolution, render == "sr", deterministic

    def render(self, planes, ws, c, superresolution: bool | None = None) -> dict[str, torch.Tensor]:
        sr = self.sr if superresolution is None else superresolution
        out = self.G.render_planes(planes, ws, c, neural_rendering_resolution=self.nrr,
                                   deterministic=self.deterministic, superresolution=sr)
        out["rgb"] = out["image"] if sr else out["image_raw"]  # what the losses compare
        return out


class EncoderStage(_Stage):
    """forward(x_enc, c, stage) -> dict(ws, delta, render_w...)."""

    def __init__(self, encoder, generator, **kw):
        super().__init__(generator, **kw)
        self.encoder = encoder

    def forward(self, x_enc: torch.Tensor, c: torch.Tensor, stage: str = "fine") -> dict[str, torch.Tensor]:
        ws_offset, ws_base = self.encoder(x_enc, stage=stage)
        ws = ws_offset + self.G.backbone.mapping.w_avg.reshape(1, 1, -1).to(ws_offset)  # encoder.canonical_ws
        x_rec, img_rec = self.G.backbone_to(ws, res=self.res)
        planes_w = self.G.backbone_from(ws, x_rec, img_rec, res=self.res)
        out = self.render(planes_w, ws, c)
        out.update(ws=ws, delta=ws_offset - ws_base)
        return out


class AFAStage(_Stage):
    """forward(x, x_enc, c, blur_sigma) -> dict(final render, W render, mask); encoder frozen."""

    def __init__(self, afa, encoder, generator, afa_image_resolution: int, mask_threshold: float, **kw):
        super().__init__(generator, **kw)
        self.afa = afa
        object.__setattr__(self, "encoder", encoder)
        self.afa_image_resolution, self.mask_threshold = afa_image_resolution, mask_threshold

    def forward(self, x: torch.Tensor, x_enc: torch.Tensor, c: torch.Tensor, blur_sigma: float) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # everything before AFA is frozen (GOAEPipeline.__call__ up to self.afa)
            ws = self.encoder.canonical_ws(x_enc, self.G.backbone.mapping.w_avg)
            x_rec, img_rec = self.G.backbone_to(ws, res=self.res)
            planes_w = self.G.backbone_from(ws, x_rec, img_rec, res=self.res)
            render_w = self.render(planes_w, ws, c)
        r = self.afa_image_resolution
        afa = self.afa(resize(x, r), resize(render_w["rgb"], r), x_rec)
        # GOAEPipeline._refine_and_fuse, with the training-time random blur sigma of the official code.
        planes_f = self.G.backbone_from(ws, afa["feature_map_adain"], img_rec, res=self.res)
        render_f = self.render(planes_f, ws, c, superresolution=False)
        m = visibility_mask(render_f["ray_origins"], render_f["ray_directions"], render_f["image_depth"],
                            blur_sigma=blur_sigma, threshold=self.mask_threshold,
                            box_warp=float(self.G.rendering_kwargs["box_warp"]))
        n = planes_w.shape[0]
        mixed = occlusion_aware_mix(planes_w.view(n, 3, -1, *planes_w.shape[-2:]),
                                    planes_f.view(n, 3, -1, *planes_f.shape[-2:]), m["mask"]).reshape(planes_w.shape)
        out = self.render(mixed, ws, c)
        out.update(ws=ws, rgb_w=render_w["rgb"], mask=m["mask"])
        return out


def background_depth_loss(depth: torch.Tensor, depth_ref: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Background depth regularisation (paper §3): the encoder must not pull the background forward
    onto the head (the thin "billboard" shape a 2D-fitting code gives). Background = pixels where the
    mean face (w_avg), rendered at the same camera, sees its far background (deeper than the midpoint
    of its depth range); there the reconstruction's depth may not come closer than the mean face's
    minus `margin`. Squared hinge, mean over background pixels, per sample -> [N]."""
    flat_ref, flat = depth_ref.flatten(1), depth.flatten(1)
    lo, hi = flat_ref.amin(1, keepdim=True), flat_ref.amax(1, keepdim=True)
    bg = (flat_ref > (lo + hi) / 2).to(flat.dtype)
    gap = F.relu(flat_ref - margin - flat) * bg
    return gap.pow(2).sum(1) / bg.sum(1).clamp(min=1)
