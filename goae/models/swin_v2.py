"""Swin Transformer V2 backbone (Liu et al., CVPR 2022), as the GOAE encoder uses it.

Written for goae: no timm/torchvision dependency. Module and buffer names mirror the official
implementation so that a released `swin_model.*` state dict loads with strict=True:
  patch_embed.{proj,norm}, layers.i.blocks.j.{norm1,attn,norm2,mlp}, layers.i.blocks.j.attn_mask
  (shifted blocks only), layers.i.downsample.{reduction,norm}, norm.

V2 specifics: res-post-norm, cosine attention with a learned clamped temperature, continuous
relative position bias (an MLP on log-spaced coordinates), and PatchMerging = Linear then LayerNorm.
GOAE's variant has no classification head and returns five multi-scale features.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import no_autocast


class SwinInputError(ValueError):
    """The image given to the Swin backbone does not have the size it was built for."""


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """Inverse of window_partition: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def window_order(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """(H*W,) int64: the row-major token index at each position of roll(-shift) then window_partition."""
    idx = torch.arange(H * W).view(1, H, W, 1)
    if shift > 0:
        idx = torch.roll(idx, shifts=(-shift, -shift), dims=(1, 2))
    return window_partition(idx, ws).reshape(-1)


def relative_coords_table(window: int, pretrained_window: int) -> torch.Tensor:
    """Log-spaced relative offsets (1, 2w-1, 2w-1, 2) fed to the continuous position-bias MLP.

    Offsets are normalised by the pre-training window (so a model fine-tuned at a larger window
    extrapolates smoothly), scaled to [-8, 8], then sign(t) * log2(1 + |t|) / 3.
    """
    r = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).unsqueeze(0)
    table = table / ((pretrained_window if pretrained_window > 0 else window) - 1)
    table = table * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) int64 index of each token pair's offset into the flattened coords table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask: -100 between tokens that come from different image regions
    after the cyclic shift (they are neighbours only because of the roll)."""
    region = torch.zeros(1, H, W, 1)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for h in cuts:
        for w in cuts:
            region[:, h, w, :] = label
            label += 1
    win = window_partition(region, window).squeeze(-1)  # nW, w*w
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head cosine self-attention inside a window with continuous relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, pretrained_window: int = 0):
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))
        self.register_buffer("relative_coords_table", relative_coords_table(window, pretrained_window))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        # V2 learns q and v biases only; k gets a fixed zero bias (it cancels in softmax anyway).
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self) -> torch.Tensor:
        """16 * sigmoid(continuous position bias) as (heads, N, N), in cpb_mlp's dtype (fp32 in use).

        The MLP part does not depend on the input, so its (heads, (2w-1)^2) table is computed once and
        reused while no gradient can reach cpb_mlp (inference); the cache is keyed by the weights' storage,
        version counter (in-place updates: load_state_dict, optimiser steps), dtype and device. Training
        computes it live. Only the small table is kept (the (heads, N, N) gather is cheap, and kept for
        every block it would hold ~80 MB for the released encoder)."""
        params = (*self.cpb_mlp.parameters(), self.relative_coords_table)
        live = (self.training or torch.compiler.is_compiling()
                or (torch.is_grad_enabled() and any(p.requires_grad for p in params)))
        key = None if live else tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        cached = self.__dict__.get("_position_table")
        if key is not None and cached is not None and cached[0] == key:
            table = cached[1]
        else:
            with no_autocast(self.relative_coords_table):
                # Elementwise ops commute with the gather: sigmoid on the (2w-1)^2 table, index afterwards.
                table = (16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads))).t()
                table = table.contiguous()
            if key is not None:
                self.__dict__["_position_table"] = (key, table)  # a plain attribute: not a buffer, not saved
        N = self.relative_position_index.shape[0]
        return table.index_select(1, self.relative_position_index.view(-1)).view(-1, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B * nW, N, C) windows, B photos of nW windows each; mask (nW, N, N) additive or None."""
        Bw, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(Bw, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]

        # Attention in fp32 even under autocast: cosines times a temperature up to 100 need more than
        # bf16's 3 digits (a no-op on the plain fp32 path). The temperature scales q (N x d) rather than
        # the logits (N x N); position bias and shift mask are one additive mask of the fused attention.
        with no_autocast(x):
            scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()  # temperature <= 100
            q = F.normalize(q.float(), dim=-1) * scale.float()
            k = F.normalize(k.float(), dim=-1)
            add = self.position_bias().float().unsqueeze(0)  # (1, heads, N, N)
            if mask is not None:
                # Windows of one photo side by side on the head axis, so (nW, N, N) broadcasts per photo.
                nW = mask.shape[0]
                add = (add + mask.unsqueeze(1)).view(1, nW * self.num_heads, N, N)
                q, k, v = (t.reshape(Bw // nW, nW * self.num_heads, N, -1) for t in (q, k, v))
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v.float(), attn_mask=add, dropout_p=p, scale=1.0)
        x = out.to(v.dtype).reshape(Bw, self.num_heads, N, -1).transpose(1, 2).reshape(Bw, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP with res-post-norm: x + norm(f(x))."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window: int,
                 shift: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, pretrained_window: int = 0):
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window:
            # The feature map fits in one window: attend globally, nothing to shift.
            shift, window = 0, min(input_resolution)
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, attn_drop, drop, pretrained_window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(*input_resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)  # None is not saved: only shifted blocks have the key
        # Cyclic shift + window partition as one token permutation (and its inverse): one gather each
        # way instead of roll, partition, reverse and roll copies. None where it is the identity.
        order = window_order(*input_resolution, window, shift)
        identity = torch.equal(order, torch.arange(order.numel()))
        self.register_buffer("window_order", None if identity else order, persistent=False)
        self.register_buffer("window_unorder", None if identity else torch.argsort(order), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        h = x if self.window_order is None else x.index_select(1, self.window_order)
        h = self.attn(h.reshape(-1, self.window * self.window, C), mask=self.attn_mask).view(B, L, C)
        if self.window_unorder is not None:
            h = h.index_select(1, self.window_unorder)
        x = x + self.drop_path(self.norm1(h))
        return x + self.drop_path(self.norm2(self.mlp(x)))


class PatchMerging(nn.Module):
    """2x2 token merge: concat neighbours (0,0),(1,0),(0,1),(1,1) (row, col), Linear 4C->2C, LayerNorm."""

    def __init__(self, input_resolution: tuple[int, int], dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.input_resolution
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating plain / shifted windows, then optional PatchMerging."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window: int,
                 mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, pretrained_window: int):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                                 mlp_ratio, qkv_bias, drop, attn_drop, drop_path[i], pretrained_window)
            for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class SwinTransformerV2(nn.Module):
    """Swin-V2 trunk without classification head (the GOAE `swin_model`).

    Args mirror the official constructor (window clamping, `pretrained_window_sizes` per stage,
    linear stochastic-depth decay over all blocks). Only `ape=False` is supported: GOAE never uses
    an absolute position embedding.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 128,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
                 window_size: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.2, patch_norm: bool = True,
                 pretrained_window_sizes: Sequence[int] = (12, 12, 12, 6)):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4 or len(pretrained_window_sizes) != 4:
            raise ValueError("GOAE's Swin-V2 has exactly 4 stages: depths, num_heads and "
                             "pretrained_window_sizes must each have 4 entries")
        grid = img_size // patch_size
        if img_size % patch_size or grid % 8:
            raise ValueError(f"img_size {img_size} must be patch_size*8*k (three 2x2 merges), got patch {patch_size}")
        self.img_size, self.num_features = img_size, embed_dim * 8
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(4):
            res = grid // 2 ** i
            self.layers.append(BasicLayer(
                embed_dim * 2 ** i, (res, res), depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], i < 3,
                pretrained_window_sizes[i]))
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(self._init_weights)
        for layer in self.layers:  # res-post-norm starts as identity residual branches
            for blk in layer.blocks:
                for n in (blk.norm1, blk.norm2):
                    nn.init.zeros_(n.weight)
                    nn.init.zeros_(n.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns (x_base, x_query, x_coarse, x_mid, x_fine), the official GOAE order.

        x_fine   (B, T0, C)    patch embedding (after its LayerNorm)
        x_mid    (B, T0/4, 2C)  stage-0 output (incl. its PatchMerging)
        x_coarse (B, T0/16, 4C) stage-1 output
        x_query  (B, 8C, T0/64) stage-2 output, channels first
        x_base   (B, 8C, T0/64) final LayerNorm of the stage-3 output, channels first
        """
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise SwinInputError(f"expected images (B, C, {self.img_size}, {self.img_size}), got {tuple(x.shape)}")
        x_fine = self.pos_drop(self.patch_embed(x))
        x_mid = self.layers[0](x_fine)
        x_coarse = self.layers[1](x_mid)
        x_query = self.layers[2](x_coarse)
        x_base = self.norm(self.layers[3](x_query))
        return x_base.transpose(1, 2), x_query.transpose(1, 2), x_coarse, x_mid, x_fine

    forward = forward_features
