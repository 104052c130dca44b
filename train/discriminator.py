"""Canonical latent discriminator (e4e's LatentCodesDiscriminator) and its non-saturating GAN losses.

GOAE regularises the encoder's W+ codes towards the generator's own latent distribution: the discriminator
sees real w = mapping(z, canonical camera) and fake w = rows of the encoder output, as in e4e.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LatentCodesDiscriminator(nn.Module):
    """MLP w [B, w_dim] -> logit [B, 1]: (num_layers - 1) x (Linear + LeakyReLU 0.2), then Linear(w_dim, 1).

    num_layers counts every linear layer, as e4e's `n_mlp` (e4e uses 4); keys mlp.{0,2,4,6} match e4e's."""

    def __init__(self, w_dim: int = 512, num_layers: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (got {num_layers})")
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.mlp = nn.Sequential(*layers, nn.Linear(w_dim, 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(w)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic D loss: mean softplus(-D(real)) + mean softplus(D(fake))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G (encoder) loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_w: torch.Tensor) -> torch.Tensor:
    """R1: mean over samples of ||d sum(D(real)) / d real_w||^2, differentiable w.r.t. D's weights.

    The caller scales it (e4e: r1_gamma / 2 * d_reg_every) and must have set real_w.requires_grad before D(real_w)."""
    if not real_w.requires_grad:
        raise ValueError("r1_penalty needs real_w.requires_grad = True before computing real_logits = D(real_w)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_w, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
