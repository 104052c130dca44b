"""The two training stages of GOAE, each an nn.Module whose only trainable child is the module it trains
(so DistributedDataParallel wraps exactly that), running the one GOAE forward (`goae.models.goae.GOAE`)
with autograd:

    encoder stage: encode into the canonical latent space -> synthesize -> render (W reconstruction)
    afa stage:     the whole forward (encode -> synthesize -> render -> refine -> fuse -> render), encoder frozen

The frozen generator (and the frozen encoder of the afa stage) are held outside the module tree.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch
import torch.nn as nn
import torch.nn.functional as F

from goae.models.encoder import STAGES
from goae.models.goae import GOAE, resize  # noqa: F401  (resize: used by the trainer's sample grids)


def progressive_stage(step: int, start: int, every: int) -> str:
    """e4e's progressive schedule mapped onto the GOAE encoder's row groups: base code only until
    `start`, then coarse, mid and fine deltas switch on every `every` steps (every = 0: all at once)."""
    if step < start:
        return STAGES[0]
    return STAGES[3] if every <= 0 else STAGES[min(3, 1 + (step - start) // every)]


class _Stage(nn.Module):
    def __init__(self, generator, encoder, afa, afa_resolution: int, neural_rendering_resolution: int | None,
                 render: str, mask_threshold: float = 0.35, deterministic: bool = True,
                 autocast: Callable[[], ContextManager] | None = None):
        super().__init__()
        self.sr = render == "sr"
        # Not a child: the GOAE forward holds the frozen parts (DDP, state_dict see only the trained one).
        object.__setattr__(self, "method", GOAE(generator, encoder, afa, afa_resolution=afa_resolution,
                                                mask_threshold=mask_threshold, deterministic=deterministic,
                                                neural_rendering_resolution=neural_rendering_resolution,
                                                autocast=autocast))

    def rgb(self, render) -> torch.Tensor:
        """What the losses compare: the super-resolved image, or the neural rendering."""
        return render.image if self.sr else render.image_raw


class EncoderStage(_Stage):
    """forward(x_enc, c, stage) -> dict(ws, delta, rgb, image_depth) of the W reconstruction."""

    def __init__(self, encoder, generator, afa=None, **kw):
        super().__init__(generator, encoder, afa, **kw)
        self.encoder = encoder

    def forward(self, x_enc: torch.Tensor, c: torch.Tensor, stage: str = "fine") -> dict[str, torch.Tensor]:
        m = self.method
        ws, delta = m.encode(x_enc, stage)
        _, _, planes_w = m.synthesize(ws)
        out = m.render(planes_w, ws, c, superresolution=self.sr)
        return {"ws": ws, "delta": delta, "rgb": self.rgb(out), "image_depth": out.image_depth}


class AFAStage(_Stage):
    """forward(x, x_enc, c, blur_sigma) -> dict(ws, rgb (final), rgb_w (W render), mask); encoder frozen."""

    def __init__(self, afa, encoder, generator, afa_image_resolution: int, **kw):
        super().__init__(generator, encoder, afa, **kw)
        self.afa = afa
        self.afa_image_resolution = afa_image_resolution

    def forward(self, x: torch.Tensor, x_enc: torch.Tensor, c: torch.Tensor, blur_sigma: float) -> dict[str, torch.Tensor]:
        fwd = self.method(x, x_enc, c, superresolution=self.sr, afa_image_resolution=self.afa_image_resolution,
                          blur_sigma=blur_sigma)
        return {"ws": fwd.ws, "rgb": self.rgb(fwd.final), "rgb_w": self.rgb(fwd.render_w), "mask": fwd.mask["mask"],
                "image_depth": fwd.final.image_depth}


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
