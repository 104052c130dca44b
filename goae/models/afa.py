"""Adaptive Feature Alignment (AFA) of GOAE.

The W-space reconstruction misses details of the input. AFA encodes the residual
`rec_img_w - x` with a small IR-SE ResNet, and lets every position of the generator's feature
map (the b32 block features in the release) query these residual features by cross-attention.
Two such heads predict a per-position scale `gamma` and shift `beta`:

    feature_map_adain = gamma * triplane_x + beta

Attribute names equal the official ones so a released `afa_FFHQ.pt` loads strictly.

Feature level: the query grid is whatever `triplane_x` is (32x32 in the release; 64x64 is a
supported option for training a higher-resolution variant, then `feature_channels` must equal the
b64 block width). Attention is global, so the key/value grid need not match the query grid: keys
come from the residual image at 1/8 of its size (three stride-2 stages; output_layer keeps stride
1), i.e. 64x64 = 4096 tokens for a 512 image at either level. At level 64 the two grids coincide.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..fast import memory_format_for
from .encoder import CrossAttention


class AFAInputError(ValueError):
    """Bad input to AFA (mismatched image shapes or feature-map size/width)."""


class SEModule(nn.Module):
    """Squeeze-and-excitation: channel gates from the global average."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class BottleneckIRSE(nn.Module):
    """ArcFace IR-SE unit: BN-Conv-PReLU-Conv(stride)-BN-SE, plus a (projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        self.stride = stride
        if in_channel == depth:
            self.shortcut_layer = None  # official MaxPool2d(1, stride) == plain subsampling
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class EqualConv2d(nn.Module):
    """Conv with runtime weight scaling 1/sqrt(fan_in) (StyleGAN2 equalised learning rate)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ScaledLeakyReLU(nn.Module):
    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope) * math.sqrt(2)


class AFA(ModelMixin, ConfigMixin):
    """forward(x_512, rec_img_w, triplane_x) -> dict(feature_map_adain, gamma, beta, features).

    Released configuration: the defaults (stages 64/128/256, 3 units each, 512 features,
    CrossAttention(512, 4, 1024)) = 12,099,904 parameters.
    """

    @register_to_config
    def __init__(
        self,
        stage_channels: tuple[int, int, int] = (64, 128, 256),
        units_per_stage: int = 3,
        feature_channels: int = 512,
        feature_resolution: int = 32,
        num_heads: int = 4,
        dim_feedforward: int | None = None,
    ):
        super().__init__()
        c0 = stage_channels[0]
        self.input_layer = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.PReLU(c0))
        units, c_in = [], c0
        for c_out in stage_channels:  # first unit of each stage halves the resolution
            units += [BottleneckIRSE(c_in, c_out, 2)] + [BottleneckIRSE(c_out, c_out, 1) for _ in range(units_per_stage - 1)]
            c_in = c_out
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            EqualConv2d(c_in, feature_channels, 3, padding=1),
            ScaledLeakyReLU(0.2),
            EqualConv2d(feature_channels, feature_channels, 3, padding=1))
        self.norm_kv = nn.LayerNorm(feature_channels, elementwise_affine=False)
        self.norm_x = nn.LayerNorm(feature_channels, elementwise_affine=False)
        ff = dim_feedforward if dim_feedforward is not None else 2 * feature_channels
        self.cross_att_gamma = CrossAttention(feature_channels, num_heads, ff)
        self.cross_att_beta = CrossAttention(feature_channels, num_heads, ff)
        # Run the residual CNN in NHWC on a CPU (oneDNN is faster on it; same numbers to fp32 rounding);
        # None = by device (goae.fast.memory_format_for), False = NCHW. A runtime switch (goae.fast), not config.
        self.channels_last: bool | None = None

    def forward(self, x_512: torch.Tensor, rec_img_w: torch.Tensor, triplane_x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x_512: input image (B, 3, H, W) in [-1, 1]; rec_img_w: the W-space render of it, same shape;
        triplane_x: generator block features (B, feature_channels, R, R), R = feature_resolution.

        Returns feature_map_adain / gamma / beta (B, C, R, R) and `features`, the residual
        features (B, C, H/8, W/8) that serve as keys and values.
        """
        if x_512.shape != rec_img_w.shape or x_512.ndim != 4 or x_512.shape[1] != 3:
            raise AFAInputError(f"x_512 and rec_img_w must both be (B, 3, H, W); got {tuple(x_512.shape)} "
                                f"and {tuple(rec_img_w.shape)}")
        R, C = self.config.feature_resolution, self.config.feature_channels
        if triplane_x.ndim != 4 or triplane_x.shape[1:] != (C, R, R) or triplane_x.shape[0] != x_512.shape[0]:
            raise AFAInputError(f"triplane_x must be (B={x_512.shape[0]}, {C}, {R}, {R}) for this AFA "
                                f"(feature_channels={C}, feature_resolution={R}); got {tuple(triplane_x.shape)}")
        B = triplane_x.shape[0]
        residual = rec_img_w - x_512
        residual = residual.contiguous(memory_format=memory_format_for(self.channels_last, residual.device.type))
        features = self.output_layer(self.body(self.input_layer(residual)))
        # Tokens (B, HW, C): a view of NHWC features (on a CPU), else the one copy LayerNorm made of the
        # transposed NCHW view before. `features` is returned plain NCHW.
        kv = self.norm_kv(features.permute(0, 2, 3, 1).reshape(B, -1, C))
        q = self.norm_x(triplane_x.flatten(2).transpose(1, 2))
        gamma = self.cross_att_gamma(q, kv).transpose(1, 2).reshape(B, C, R, R)
        beta = self.cross_att_beta(q, kv).transpose(1, 2).reshape(B, C, R, R)
        return {"feature_map_adain": gamma * triplane_x + beta, "gamma": gamma, "beta": beta,
                "features": features.contiguous()}
