"""Optimisers and learning-rate schedules of the training stages.

e4e and pSp train with Ranger (Less Wright's RAdam + Lookahead, lr 1e-4); torch has RAdam, so
Ranger here is torch's RAdam plus the Lookahead rule on top: every k steps the fast weights are
pulled alpha of the way back towards a slow copy, which then moves there. The slow copy lives in
the optimiser state, so it is checkpointed with it.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


class Ranger(torch.optim.RAdam):
    """RAdam (betas 0.95/0.999, eps 1e-5: Ranger's defaults) with Lookahead(k=6, alpha=0.5)."""

    def __init__(self, params: Iterable, lr: float = 1e-4, k: int = 6, alpha: float = 0.5,
                 betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.k, self.alpha = k, alpha

    @torch.no_grad()
    def step(self, closure=None):
        start = {p: p.detach().clone() for g in self.param_groups for p in g["params"]
                 if p.grad is not None and "slow" not in self.state[p]}
        loss = super().step(closure)
        for g in self.param_groups:
            for p in g["params"]:
                state = self.state[p]
                if p in start:
                    state["slow"] = start[p]
                if "slow" in state and int(state["step"]) % self.k == 0:
                    slow = state["slow"]
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)
        return loss


def make_optimizer(name: str, params: Iterable, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "ranger":
        return Ranger(params, lr=lr)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            t = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
