"""GOAE encoder: Swin-V2 features -> W+ codes of EG3D (Yuan et al., "Make Encoder Great Again in
3D GAN Inversion through Geometry and Occlusion-Aware Encoding", ICCV 2023).

The encoder predicts an *offset* from the generator's average latent: a base code shared by all
14 ws rows (from the deepest Swin feature) plus per-row deltas for rows 1-13 that learned queries
read, by cross-attention, from Swin features of growing resolution (coarse rows 1-3 from the 1/16
tokens, mid rows 4-6 from 1/8, fine rows 7-13 from 1/4). Row 0 gets no delta.

Attribute names equal the official ones so a released `encoder_FFHQ.pt` state dict loads strictly.
All widths derive from the Swin config and `w_dim`, so the released model (img 256, embed 128,
w_dim 512) and small test models are the same class with a different config.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .swin_v2 import SwinTransformerV2

STAGES = ("base", "coarse", "mid", "fine")


class EncoderInputError(ValueError):
    """Bad input to the GOAE encoder (wrong image size, w_avg shape or training stage)."""


class CrossAttention(nn.Module):
    """DETR-style decoder layer without self-attention: t = LN(q + MHA(q, kv, kv)); t + FFN(t).

    `norm1` is never used in forward (it has no parameters either); it exists because the official
    module has it. Dropouts are the official 0.1 and only act in training mode.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)  # sequence-first, see forward
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tgt (B, Nq, d) queries, memory (B, Nkv, d) keys/values -> (B, Nq, d)."""
        # Sequence-first contiguous copies rather than batch_first: batch_first transposes inside, and a
        # bf16 linear on that strided view falls back to a broadcast bmm that copies the weight once per
        # token (4 GB and seconds at batch 8, 4096 tokens). Same parameters; same numbers to fp32 rounding.
        kv = memory.transpose(0, 1).contiguous()
        # Value as a distinct tensor object (a view of kv): MHA then projects keys and values with their own
        # slices of in_proj, instead of one packed projection that it copies apart (a (Nkv, 2d) copy per call).
        attended = self.multihead_attn(tgt.transpose(0, 1).contiguous(), kv, kv.view_as(kv), need_weights=False)[0]
        attended = attended.transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(attended))
        return tgt + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(tgt)))))


def mlp(in_dim: int, out_dim: int, n_layers: int = 2) -> nn.Sequential:
    """Official `get_mlp_layer`: (Linear(i, i), LeakyReLU(0.01)) * (n-1), then Linear(i, o)."""
    layers: list[nn.Module] = []
    for _ in range(n_layers - 1):
        layers += [nn.Linear(in_dim, in_dim), nn.LeakyReLU()]
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class GOAEncoder(ModelMixin, ConfigMixin):
    """Image (B, 3, img_size, img_size) in [-1, 1] -> (ws, ws_base), both (B, num_ws, w_dim).

    `ws` is the offset from the generator's `w_avg`; use `canonical_ws(x, w_avg)` to get the code
    the EG3D synthesis network takes (official `start_from_latent_avg=True`).

    Released configuration: the defaults (Swin-V2 img 256, embed 128, depths [2,2,18,2], heads
    [4,8,16,32], window 16, pretrained windows [12,12,12,6], w_dim 512) = 111,218,822 parameters.
    """

    @register_to_config
    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pretrained_window_sizes: tuple[int, ...] = (12, 12, 12, 6),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        w_dim: int = 512,
        num_ws: int = 14,
        ws_split: tuple[int, int, int] = (3, 3, 7),
        mlp_layer: int = 2,
        cross_att_heads: int = 4,
        cross_att_ff: int | None = None,
    ):
        super().__init__()
        if 1 + sum(ws_split) != num_ws:
            raise ValueError(f"ws_split {ws_split} must cover rows 1..{num_ws - 1} (1 + sum == num_ws)")
        n_coarse, n_mid, n_fine = ws_split
        C = embed_dim  # Swin widths per feature: fine C, mid 2C, coarse 4C, query/base 8C
        T = (img_size // patch_size) ** 2  # tokens of x_fine; mid T/4, coarse T/16, query/base T/64
        ff = cross_att_ff if cross_att_ff is not None else 2 * w_dim

        self.swin_model = SwinTransformerV2(
            img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias,
            drop_rate, 0.0, drop_path_rate, True, pretrained_window_sizes)

        # Base code: deepest tokens -> one w (spatial MLP over tokens + max-pool, then channel MLP).
        self.mapper_base_spatial = mlp(T // 64, 1, mlp_layer)
        self.mapper_base_channel = mlp(8 * C, w_dim, mlp_layer)
        # Queries for the three ws groups, from the stage-2 tokens.
        self.mapper_query_spatial_coarse = mlp(T // 64, n_coarse, mlp_layer)
        self.mapper_query_channel_coarse = mlp(8 * C, w_dim, mlp_layer)
        self.mapper_query_spatial_mid = mlp(T // 64, n_mid, mlp_layer)
        self.mapper_query_channel_mid = mlp(8 * C, w_dim, mlp_layer)
        self.mapper_query_spatial_fine = mlp(T // 64, n_fine, mlp_layer)
        self.mapper_query_channel_fine = mlp(8 * C, w_dim, mlp_layer)
        # Keys/values: project features to w_dim; finer levels also get the coarser level,
        # upsampled in token space by an MLP (T/16 -> T/8 -> T/4, T/4 -> T/2 -> T).
        self.mapper_coarse_channel = nn.Sequential(nn.Linear(4 * C, w_dim), nn.LeakyReLU())
        self.mapper_mid_channel = nn.Sequential(nn.Linear(2 * C, w_dim), nn.LeakyReLU())
        self.mapper_fine_channel = nn.Sequential(nn.Linear(C, 2 * C), nn.LeakyReLU(), nn.Linear(2 * C, w_dim), nn.LeakyReLU())
        self.mapper_coarse_to_mid_spatial = nn.Sequential(
            nn.Linear(T // 16, T // 8), nn.LeakyReLU(), nn.Linear(T // 8, T // 4), nn.LeakyReLU())
        self.mapper_mid_to_fine_spatial = nn.Sequential(
            nn.Linear(T // 4, T // 2), nn.LeakyReLU(), nn.Linear(T // 2, T), nn.LeakyReLU())

        self.cross_att_coarse = CrossAttention(w_dim, cross_att_heads, ff)
        self.cross_att_mid = CrossAttention(w_dim, cross_att_heads, ff)
        self.cross_att_fine = CrossAttention(w_dim, cross_att_heads, ff)

    @staticmethod
    def _tokens_to_codes(x: torch.Tensor, spatial: nn.Module, channel: nn.Module) -> torch.Tensor:
        """x (B, C, T) -> (B, n, w_dim): MLP over tokens (T -> n) plus the token-wise max, then over channels."""
        return channel(spatial(x).transpose(1, 2) + x.amax(dim=2, keepdim=True).transpose(1, 2))

    def forward(self, x: torch.Tensor, stage: str = "fine") -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, img_size, img_size) in [-1, 1] -> (ws, ws_base), offsets from w_avg.

        `stage` is the progressive-training stage: 'base' returns ws_base only, 'coarse'/'mid'
        add the deltas of those row groups, 'fine' (inference) all of them.
        """
        if stage not in STAGES:
            raise EncoderInputError(f"stage must be one of {STAGES}, got {stage!r}")
        level = STAGES.index(stage)
        num_ws = self.config.num_ws
        x_base, x_query, x_coarse, x_mid, x_fine = self.swin_model.forward_features(x)

        ws_base = self._tokens_to_codes(x_base, self.mapper_base_spatial, self.mapper_base_channel)
        ws_base = ws_base.repeat(1, num_ws, 1)
        if level == 0:
            return ws_base, ws_base

        rows = [torch.zeros_like(ws_base[:, :1])]  # row 0 keeps the base code
        kv = self.mapper_coarse_channel(x_coarse)
        q = self._tokens_to_codes(x_query, self.mapper_query_spatial_coarse, self.mapper_query_channel_coarse)
        rows.append(self.cross_att_coarse(q, kv))
        if level >= 2:
            kv = self.mapper_mid_channel(x_mid) + self.mapper_coarse_to_mid_spatial(kv.transpose(1, 2)).transpose(1, 2)
            q = self._tokens_to_codes(x_query, self.mapper_query_spatial_mid, self.mapper_query_channel_mid)
            rows.append(self.cross_att_mid(q, kv))
        if level >= 3:
            kv = self.mapper_fine_channel(x_fine) + self.mapper_mid_to_fine_spatial(kv.transpose(1, 2)).transpose(1, 2)
            q = self._tokens_to_codes(x_query, self.mapper_query_spatial_fine, self.mapper_query_channel_fine)
            rows.append(self.cross_att_fine(q, kv))
        n_rows = sum(r.shape[1] for r in rows)
        if n_rows < num_ws:  # rows of groups not trained yet stay zero
            rows.append(ws_base.new_zeros(ws_base.shape[0], num_ws - n_rows, ws_base.shape[2]))
        return ws_base + torch.cat(rows, dim=1), ws_base

    def canonical_ws(self, x: torch.Tensor, w_avg: torch.Tensor, stage: str = "fine",
                     return_delta: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The W+ code for EG3D synthesis: encoder offset + the generator's mean latent `w_avg`.

        x (B, 3, img_size, img_size) in [-1, 1]; w_avg (w_dim,) (or broadcastable, e.g. (1, 1, w_dim))
        -> rec_ws (B, num_ws, w_dim). No truncation is applied (psi = 1), as in GOAE. `stage`: see
        `forward`. return_delta: also the offsets from the base code (e4e's delta regulariser).
        """
        if w_avg.shape[-1] != self.config.w_dim or w_avg.numel() != self.config.w_dim:
            raise EncoderInputError(f"w_avg must hold {self.config.w_dim} values (the generator's "
                                    f"mean latent w_avg), got shape {tuple(w_avg.shape)}")
        ws, ws_base = self(x, stage=stage)
        # Add in the wider dtype: under a bf16 autocast the offsets are bf16, w_avg must not be rounded.
        dtype = torch.promote_types(ws.dtype, w_avg.dtype)
        out = ws.to(dtype) + w_avg.reshape(1, 1, -1).to(device=ws.device, dtype=dtype)
        return (out, ws - ws_base) if return_delta else out
