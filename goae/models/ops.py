"""StyleGAN2 building blocks in plain PyTorch (CPU and CUDA, fp32).

These reproduce the *reference* semantics of NVIDIA's custom ops (bias_act, upfirdn2d,
conv2d_resample, modulated_conv2d) so that official weights give the same numbers. Layers keep the
official attribute names (`weight`, `bias`, `resample_filter`, ...) so state dicts load unchanged.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels


def no_autocast(x: torch.Tensor):
    """Context that runs its body in fp32 when autocast is on for x's device (for the numerically
    fragile steps of a reduced-precision fast path: styles, demodulation, attention logits)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# bias_act: bias + activation + gain + clamp.

# name -> (function(x, alpha), default alpha, default gain). Gains keep the signal variance for
# rectifiers (sqrt 2), the official `def_gain` values.
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor, float], torch.Tensor], float, float]] = {
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


class UnknownActivationError(ValueError):
    """Raised for an activation name that bias_act does not know."""


def _activation(act: str):
    if act not in ACTIVATIONS:
        raise UnknownActivationError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def activation_gain(act: str) -> float:
    """The default output gain of an activation (sqrt 2 for relu/lrelu/swish, else 1)."""
    return _activation(act)[2]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             inplace: bool = False, noise: torch.Tensor | None = None) -> torch.Tensor:
    """y = clamp(act(x + noise + b) * gain, -clamp, clamp); `b` is broadcast along axis `dim`, `noise`
    (a synthesis layer's, [H, W] or broadcastable to x) is added first.

    inplace=True overwrites `x` (same math, same op order): for a fresh temporary that autograd
    does not track, it saves one full-size allocation per step (page faults dominate otherwise). In
    place, a CPU leaky ReLU over channels runs as one fused pass (`kernels.bias_lrelu_`, bit-identical)."""
    func, def_alpha, def_gain = _activation(act)
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias of shape {tuple(b.shape)} does not match axis {dim} of x {tuple(x.shape)}")
    if inplace and x.requires_grad and torch.is_grad_enabled():
        inplace = False  # autograd may need x: never overwrite it
    if noise is not None:
        # In x's dtype first, as the official layer adds it (and a mixed-dtype add is a slow scalar loop).
        noise = noise.to(x.dtype)
    if inplace and act == "lrelu" and dim == 1 and b is not None and x.ndim == 4:
        plane = None if noise is None or noise.numel() != x.shape[2] * x.shape[3] else noise.reshape(x.shape[2:])
        if (noise is None or plane is not None) and kernels.bias_lrelu_applicable(x, b, plane):
            return kernels.bias_lrelu_(x, b, plane, alpha, gain, clamp if clamp is not None and clamp >= 0 else None)
    b = None if b is None else b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if noise is not None:
        x = x.add_(noise) if inplace else x + noise
    if not inplace:
        x = x if b is None else x + b
        x = func(x, alpha)
        x = x * gain if gain != 1 else x
        return x.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else x
    if b is not None:
        x.add_(b)
    if act == "lrelu":
        F.leaky_relu_(x, alpha)
    elif act == "relu":
        x.relu_()
    elif act != "linear":
        x = func(x, alpha)
    if gain != 1:
        x.mul_(gain)
    if clamp is not None and clamp >= 0:
        x.clamp_(-clamp, clamp)
    return x


# ------------------------------------------------------------------------------------------------
# upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample.

def setup_filter(f, device: torch.device | str = "cpu", normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Make a float32 FIR filter: 1-D taps become their outer product unless `separable`
    (default: separable only for >= 8 taps), normalised to unit DC gain."""
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _padding4(padding) -> tuple[int, int, int, int]:
    """int | [x, y] | [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(int(p) for p in padding)  # type: ignore[return-value]


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a 1-D (separable) or 2-D filter."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0,
              flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Per channel: insert up-1 zeros after each pixel, pad (negative = crop), convolve with `f`
    (true convolution unless flip_filter), keep every down-th pixel. `f` is 2-D or 1-D separable."""
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)

    if upx > 1 or upy > 1:  # zero insertion
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)

    # Symmetric non-negative padding goes into the convolution itself (no padded copy);
    # otherwise pad (positive) then crop (negative) explicitly.
    conv_pad = (0, 0)
    if px0 == px1 >= 0 and py0 == py1 >= 0:
        conv_pad = (py0, px0)
    else:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
        x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # conv2d correlates, so flip to convolve; stride == keeping every down-th output pixel.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].expand(c, 1, *f.shape), padding=conv_pad, stride=(downy, downx), groups=c)
    k = f.shape[0]
    x = F.conv2d(x, f.reshape(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, conv_pad[1]), stride=(1, downx), groups=c)
    return F.conv2d(x, f.reshape(1, 1, k, 1).expand(c, 1, k, 1), padding=(conv_pad[0], 0), stride=(downy, 1), groups=c)


def filter2d(x: torch.Tensor, f: torch.Tensor, padding=0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """FIR filter keeping the image size (plus optional extra padding)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up=2, padding=0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Upsample by `up` with the FIR filter `f`; output size = up * input size."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down=2, padding=0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Downsample by `down` with the FIR filter `f`; output size = input size / down."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


# ------------------------------------------------------------------------------------------------
# Convolution with FIR up/downsampling.

def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding=0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """conv2d with optional FIR upsampling (transposed strided conv, then filter) or downsampling
    (filter, then strided conv); `padding` is relative to the upsampled image.
    flip_weight=True correlates like F.conv2d, False convolves."""
    out_ch, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    if up > 1:
        # Transposed conv wants [in, out/groups, kh, kw] per group; it convolves, so flip when
        # the caller asked for correlation.
        w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        if flip_weight and (kh > 1 or kw > 1):
            w = w.flip([2, 3])
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x

    if not flip_weight and (kh > 1 or kw > 1):
        w = w.flip([2, 3])
    if down > 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, stride=down, groups=groups)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=[py0, px0], groups=groups)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return F.conv2d(x, w, groups=groups)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale to unit mean square along `dim` (StyleGAN's pixel norm of z)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, down: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2 weight (de)modulation: scale input channels by `styles` [N, I], convolve, and
    (optionally) normalise each output channel to unit expected variance.

    fused: one grouped convolution with per-sample weights (the official inference path).
    unfused: scale activations before/after a shared-weight convolution (same math)."""
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if styles.shape != (n, in_ch):
        raise ValueError(f"styles must be [{n}, {in_ch}], got {tuple(styles.shape)}")

    w = dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down,
                            padding=padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        if noise is not None:
            return x + noise.to(x.dtype)
        return x

    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    w = w.to(x.dtype)
    if n > 1 and x.device.type == "cpu":
        # oneDNN runs the grouped form ~1.6x slower per sample than n plain convolutions; one
        # convolution per sample is also bit-identical to running each sample alone.
        x = torch.cat([conv2d_resample(x[i:i + 1], w[i], f=resample_filter, up=up, down=down, padding=padding,
                                       flip_weight=flip_weight) for i in range(n)])
    elif n > 1:  # batch folded into channels -> groups = batch. NCHW, where the fold is a view: a
        # channels-last x would be copied twice (out of NHWC, then back into it)
        x = x.contiguous().reshape(1, -1, *x.shape[2:])
        x = conv2d_resample(x, w.reshape(-1, in_ch, kh, kw), f=resample_filter, up=up, down=down, padding=padding,
                            groups=n, flip_weight=flip_weight)
        x = x.reshape(n, -1, *x.shape[2:])
    else:  # (no reshape: its odd batch stride would hide channels-last from oneDNN)
        x = conv2d_resample(x, w[0], f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
    if noise is not None:
        # x is our own fresh conv output: add in place unless autograd tracks it. The noise takes x's
        # dtype first: a bf16 channels-last x plus an fp32 [H, W] noise would run a scalar
        # mixed-dtype loop ~80x slower than the add itself (a no-op in fp32).
        noise = noise.to(x.dtype)
        x = x + noise if x.requires_grad and torch.is_grad_enabled() else x.add_(noise)
    return x


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor stored NHWC (and not trivially both), else contiguous."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ------------------------------------------------------------------------------------------------
# Layers with equalised learning rate (weights stored N(0,1)/lr_mul, scaled at run time).

class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        _activation(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation, inplace=True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_gain(activation)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn(out_channels, in_channels, kernel_size, kernel_size).to(memory_format=memory_format)
        b = torch.zeros(out_channels) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"activation={self.activation}, up={self.up}, down={self.down}")
