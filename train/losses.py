"""Frozen perceptual and identity losses for GOAE training, as used by pSp/e4e (and so by GOAE).

- LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018): distance between unit-normalised VGG16 features,
  weighted per channel by the learned 1x1 "lin" layers.
- IDLoss: 1 - cos of ArcFace IR-SE50 face embeddings (Deng et al. 2019; pSp/e4e's identity loss).

The networks are goae.eval.networks' (one copy, shared with `goae eval`'s metrics), with the parameter names of
the published files: `vgg16-397923af.pth` (torchvision), `weights/v0.1/vgg.pth` (lpips) and `model_ir_se50.pth`
(InsightFace_Pytorch, distributed with pSp/e4e) load without renaming. A missing or wrong file names the
training setting that gives its path.
"""
from __future__ import annotations

import os

import torch

from goae.eval import networks as N
from goae.eval.networks import MissingWeightsError, WeightsFileError  # noqa: F401  (train/run.py reports them)


def _hint(setting: str) -> str:
    return f"set its path in the training config ({setting}: PATH, or on the command line: --set {setting}=PATH)"


class LPIPS(N.LPIPS):
    """LPIPS v0.1, VGG16 trunk. `forward(x, y) -> [N]` per-sample distance of [N,3,H,W] images in [-1, 1]."""

    def __init__(self):
        super().__init__("vgg")

    @classmethod
    def from_pretrained(cls, vgg16_path: str | os.PathLike, lin_path: str | os.PathLike) -> "LPIPS":
        """torchvision's vgg16-397923af.pth (classifier keys ignored) + lpips' weights/v0.1/vgg.pth."""
        model = cls()
        N.load_into({"features.": model.features},
                    N.read_state_dict(vgg16_path, N.TRUNK_FILES["vgg"], _hint("losses.lpips_vgg16")), vgg16_path,
                    N.TRUNK_FILES["vgg"])
        lins = {f"lin{i}.": getattr(model, f"lin{i}") for i in range(len(model.taps))}
        N.load_into(lins, N.read_state_dict(lin_path, N.LIN_FILES["vgg"], _hint("losses.lpips_lin")), lin_path,
                    N.LIN_FILES["vgg"])
        return model


class IDLoss(N.IdentityNet):
    """pSp/e4e identity loss. `forward(y_hat, y) -> [N]` = 1 - cos(emb(y_hat), emb(y)), images [N,3,H,W] in
    [-1, 1] at any resolution; the target embedding is detached (only y_hat gets gradients)."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, hint: str | None = None) -> "IDLoss":
        return super().from_pretrained(path, hint or _hint("losses.id_weights"))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the target embedding is a constant (pSp/e4e detach it)
            emb_y = self.embed(y)
        return 1 - (self.embed(y_hat) * emb_y).sum(1)
