"""StyleGAN2 mapping and synthesis networks (the EG3D tri-plane backbone), fp32.

Attribute names follow NVIDIA's `networks_stylegan2.py` so official state dicts load with no key
renaming (`mapping.fc0.weight`, `synthesis.b4.const`, `synthesis.b8.conv0.affine.weight`, ...).
The fp16 options are accepted for config compatibility; everything runs in float32 here.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..fast import memory_format_for
from .ops import (FullyConnectedLayer, Conv2dLayer, activation_gain, bias_act, modulated_conv2d,
                  no_autocast, normalize_2nd_moment, setup_filter, upsample2d)

NOISE_MODES = ("random", "const", "none")


class InvalidNoiseModeError(ValueError):
    """Raised for a noise_mode other than 'random', 'const' or 'none'."""


def check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        raise InvalidNoiseModeError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


def _resolve_fused(fused_modconv, training: bool) -> bool:
    # 'inference_only': the grouped-conv path in eval mode, the unfused one while training.
    return (not training) if fused_modconv == "inference_only" else bool(fused_modconv)


class MappingNetwork(nn.Module):
    """z [N, z_dim] + camera c [N, c_dim] -> ws [N, num_ws, w_dim] (EG3D conditions on the camera)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.998):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if embed_features is None else embed_features
        embed_features = 0 if c_dim == 0 else embed_features
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            if z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must be [N, {self.z_dim}], got {tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"c must be [N, {self.c_dim}], got {tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = y if x is None else torch.cat([x, y], dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            # w = w_avg + psi * (w - w_avg) on the first `cutoff` ws (all when None).
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (+ optional 2x FIR upsampling) + noise + bias + lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1) -> torch.Tensor:
        check_noise_mode(noise_mode)
        with no_autocast(w):  # styles feed the demodulation: fp32 even on a bf16 fast path
            styles = self.affine(w.float())
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        # Fused modconv adds the noise right after the convolution: bias_act does that first, in the same
        # pass as the bias and activation. The unfused form folds it into the demodulation (addcmul).
        x = modulated_conv2d(x, self.weight, styles, noise=None if fused_modconv else noise, up=self.up,
                             padding=self.padding, resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp,
                        inplace=True, noise=noise if fused_modconv else None)  # x is the fresh conv output

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv without demodulation (features -> image channels)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        with no_autocast(w):
            styles = self.affine(w.float()) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp, inplace=True)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [const | conv0 (up 2x)] -> conv1 -> ToRGB.

    Skip architecture: the block returns (features x, image img), where img is the upsampled
    image of the previous block plus this block's ToRGB output. `up=1` gives the no-upsampling
    variant used as the first block of the 2X/4X super-resolution modules."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = 256, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default="inference_only", up: int = 2, **layer_kwargs):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16  # kept for config compatibility; computation is fp32
        self.fused_modconv_default = fused_modconv_default
        self.up = up
        # NHWC activations: oneDNN's convolutions (transposed and depthwise FIR above all) run up to
        # 2x faster on them; results agree with NCHW to fp32 rounding. None = by device (the rule of
        # goae.fast.memory_format_for: NHWC on a CPU, NCHW on a GPU), False = NCHW. A runtime switch
        # (goae.fast), not config, so checkpoints are unaffected.
        self.channels_last: bool | None = None
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=up,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=up,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                fused_modconv=None, noise_mode: str = "random", update_emas: bool = False,
                force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        expected = self.num_conv + self.num_torgb
        if ws.ndim != 3 or ws.shape[1] != expected or ws.shape[2] != self.w_dim:
            raise ValueError(f"block b{self.resolution} needs ws [N, {expected}, {self.w_dim}], got {tuple(ws.shape)}")
        w_iter = iter(ws.unbind(dim=1))
        fused = _resolve_fused(self.fused_modconv_default if fused_modconv is None else fused_modconv, self.training)
        memory_format = memory_format_for(self.channels_last, ws.device.type)
        if self.in_channels == 0:
            x = self.const.to(torch.float32).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x.contiguous(memory_format=memory_format), next(w_iter), fused_modconv=fused,
                           noise_mode=noise_mode)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode, gain=math.sqrt(0.5))
            x = y + x
        else:
            # fp32 like the official non-fp16 blocks; under autocast the convs pick their own dtype.
            dtype = x.dtype if torch.is_autocast_enabled(x.device.type) else torch.float32
            x = self.conv0(x.to(dtype=dtype, memory_format=memory_format), next(w_iter), fused_modconv=fused,
                           noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode)
        if img is not None and self.up > 1:
            img = self.upsample_image(img)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused).to(torch.float32)
            # Out of place on purpose: the official in-place add overwrites the caller's tensor.
            img = y if img is None else img + y
        # img is the RGB / tri-plane output (callers view it): always plain NCHW.
        return x, (img if img is None else img.contiguous())

    def upsample_image(self, img: torch.Tensor) -> torch.Tensor:
        """The previous block's image at this block's resolution (the skip path)."""
        with no_autocast(img):  # the skip image / tri-planes accumulate in fp32
            return upsample2d(img.float(), self.resample_filter, up=self.up)

    # Input rows of context above and below each strip: conv0 (3x3 transposed + 4-tap FIR) and conv1 (3x3)
    # reach exactly 2 input rows (1 changes the pixels at the seams; the tests check both).
    STRIP_HALO = 2

    def image_in_strips(self, x: torch.Tensor, img: torch.Tensor | None, ws: torch.Tensor, rows: int,
                        fused_modconv=None) -> torch.Tensor:
        """The image `forward` returns (skip architecture), computed `rows` input rows at a time: each strip
        runs with STRIP_HALO rows of context on both sides, so every output pixel sums the same terms as in
        `forward` while the full-resolution activations exist one strip at a time (the 512^2 layer of the
        super-resolution is the largest working set of a render). No noise (noise_mode 'none')."""
        if not (self.is_last or self.architecture == "skip") or rows < 1:
            raise ValueError("image_in_strips needs a block with an image output and rows >= 1")
        H, halo, parts = x.shape[2], self.STRIP_HALO, []
        for r0 in range(0, H, rows):
            r1 = min(r0 + rows, H)
            a, b = max(r0 - halo, 0), min(r1 + halo, H)
            _, y = self.forward(x[:, :, a:b], None, ws, fused_modconv=fused_modconv, noise_mode="none")
            parts.append(y[:, :, (r0 - a) * self.up:(r1 - a) * self.up])
        y = torch.cat(parts, dim=2)
        return y if img is None else self.upsample_image(img) + y

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, up={self.up}"


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] through blocks b4, b8, ..., b{R}."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, **block_kwargs):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, use_fp16=res >= fp16_resolution,
                                   **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def block_ws(self, ws: torch.Tensor) -> dict[int, torch.Tensor]:
        """Slice ws per block: consecutive blocks share one w (the ToRGB w is the next conv's)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        out, idx = {}, 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out[res] = ws.narrow(1, idx, block.num_conv + block.num_torgb)
            idx += block.num_conv
        return out

    def run_blocks(self, ws: torch.Tensor, x: torch.Tensor | None, img: torch.Tensor | None,
                   resolutions: Sequence[int], **block_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the listed blocks (ascending) starting from (x, img)."""
        per_block = self.block_ws(ws)
        for res in resolutions:
            x, img = getattr(self, f"b{res}")(x, img, per_block[res], **block_kwargs)
        return x, img

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        return self.run_blocks(ws, None, None, self.block_resolutions, **block_kwargs)[1]

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


class Generator(nn.Module):
    """StyleGAN2 generator = mapping + synthesis (EG3D's tri-plane backbone)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1, truncation_cutoff: int | None = None,
                update_emas: bool = False, **synthesis_kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)
