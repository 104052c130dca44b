"""EG3D tri-plane generator (Chan et al., CVPR 2022), fp32, official state-dict names.

    z, c --mapping--> ws [N,14,w] --backbone (StyleGAN2, 256^2, 96 ch)--> tri-planes [N,3,32,256,256]
    --rays + ImportanceRenderer + OSGDecoder--> feature image [N,32,r,r] (first 3 = image_raw)
    --super-resolution (ws[:, -1])--> image [N,3,R,R]

The tri-plane synthesis can be run in two halves split at a feature level (`synthesize_until` /
`synthesize_from`), which GOAE uses to refine the 32x32 features; `render_planes` renders given (cached)
tri-planes into a `RenderOutput`; `field` queries density and colour at points (meshes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .ops import FullyConnectedLayer, setup_filter
from .renderer import RaySampler
from .renderer_fused import FusedImportanceRenderer, TriplaneField
from .stylegan2 import Generator, SynthesisBlock, check_noise_mode

PLANE_CHANNELS = 32  # channels per plane; the backbone outputs 3 * 32
PLANE_RESOLUTION = 256


class EG3DConfigError(ValueError):
    """The generator configuration is not one goae can build."""


@dataclass
class RenderOutput(BaseOutput):
    """One volume render (+ super-resolution) of tri-planes; batched along dim 0. Attribute or key access.

    image_depth:    [N,1,r,r] ray depth (distance along the ray, world units).
    weights_sum:    [N,1,r,r] accumulated opacity.
    ray_origins / ray_directions: [N,r*r,3] the rays of the render.
    image_raw:      [N,3,r,r] neural-rendering RGB (None for a depth-only render).
    feature_image:  [N,32,r,r] rendered features, first 3 = image_raw (None for a depth-only render).
    image:          [N,3,R,R] super-resolved image (None without super-resolution).
    """

    image_depth: torch.Tensor
    weights_sum: torch.Tensor
    ray_origins: torch.Tensor
    ray_directions: torch.Tensor
    image_raw: torch.Tensor | None = None
    feature_image: torch.Tensor | None = None
    image: torch.Tensor | None = None


# ------------------------------------------------------------------------------------------------
# Decoder


class OSGDecoder(nn.Module):
    """Tiny MLP on the plane-averaged feature: sigma (raw density) and 32 features in (-0.001, 1.001)."""

    def __init__(self, n_features: int, options: Mapping[str, Any]):
        super().__init__()
        self.hidden_dim = 64
        lr_mul = options["decoder_lr_mul"]
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=lr_mul),
            nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"], lr_multiplier=lr_mul),
        )

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor) -> dict[str, torch.Tensor]:
        """sampled_features [N, 3, M, C] -> {'rgb': [N, M, C'], 'sigma': [N, M, 1]} (directions unused)."""
        x = sampled_features.mean(1)
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # Mip-NeRF's widened sigmoid
        return {"rgb": rgb, "sigma": x[..., 0:1]}

    def decode_plane_sum(self, feature_sum: torch.Tensor, n_planes: int,
                         features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same MLP for the renderer's fast path: features summed over the planes [M, C] ->
        (sigma [M], rgb [M, C']); equal to `forward` up to rounding. The plane mean's 1/n_planes is
        folded into the first weight; softplus(h) = -logsigmoid(-h) (one pass, within 1 ulp of
        F.softplus incl. its threshold), both negations folded exactly into the weights:
        h' = x (-W0/n)^T - b0, out = logsigmoid(h') (-W2)^T + b2.
        features=False: sigma only, rgb is None (depth-only renders). It computes the last layer's
        first 16 rows, not 1: a 16-wide product runs on the same BLAS micro-kernel as the 33-wide one,
        so sigma (and hence depth) is bit-identical to features=True on CPU (a 1-wide product is a
        gemv with another summation order, ~1e-5 off), at less than half the cost."""
        fc0, fc2 = self.net[0], self.net[2]
        h = _fc(fc0, feature_sum, sign=-1.0, scale=1 / n_planes)
        out = _fc(fc2, F.logsigmoid(h), sign=-1.0, bias_sign=1.0, rows=None if features else 16)
        if not features:
            return out[:, 0], None
        rgb = torch.sigmoid(out[:, 1:])
        rgb = rgb.mul_(1 + 2 * 0.001).sub_(0.001) if not torch.is_grad_enabled() else rgb * (1 + 2 * 0.001) - 0.001
        return out[:, 0], rgb


def _fc(fc: FullyConnectedLayer, x: torch.Tensor, sign: float = 1.0, bias_sign: float | None = None,
        scale: float = 1.0, rows: int | None = None) -> torch.Tensor:
    """FullyConnectedLayer (linear, equalised lr: W * weight_gain, b * bias_gain) on x [M, C_in]; the
    weight (and bias) optionally negated, which is exact in floating point, and the weight scaled.
    rows: only the first `rows` outputs."""
    weight, bias = (fc.weight, fc.bias) if rows is None else (fc.weight[:rows], fc.bias[:rows])
    w = weight.to(x.dtype) * (sign * fc.weight_gain * scale)
    b = bias.to(x.dtype) * ((sign if bias_sign is None else bias_sign) * fc.bias_gain)
    return torch.addmm(b.unsqueeze(0), x, w.t())


# ------------------------------------------------------------------------------------------------
# Super-resolution: two StyleGAN2 blocks on the rendered feature image, styled by the last w.


class SynthesisBlockNoUp(SynthesisBlock):
    """SynthesisBlock without the 2x upsampling (first block of the 2X / 4X super-resolution)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, up=1, **kwargs)


# Official SR constructor arguments that the SR modules ignore (their widths are fixed).
_SR_IGNORED = ("num_fp16_res", "conv_clamp", "channel_base", "channel_max")


class _SuperresolutionBase(nn.Module):
    """block0 at `block_resolutions[0]`, block1 at the output resolution, both with skip-RGB.

    Inputs not at `input_resolution` are resized (antialiased bilinear) first. Channel widths
    default to the official ones; `sr_channels` narrows them (GOAE's tiny test generator)."""

    output_resolution: int
    input_resolution: int
    block_resolutions: tuple[int, int]
    default_channels: tuple[int, int]
    first_block_upsamples: bool
    resize_only_if_smaller = False  # 4X resizes only smaller inputs, the others any mismatch
    has_resample_filter = True  # 2X/4X register an (unused) filter buffer at top level
    strip_rows: int | None = 128  # inference: the last block's input rows per strip (None: all at once)

    def __init__(self, channels: int, img_resolution: int, sr_num_fp16_res: int, sr_antialias: bool,
                 w_dim: int = 512, sr_channels: list[int] | None = None, **block_kwargs):
        super().__init__()
        if img_resolution != self.output_resolution:
            raise EG3DConfigError(f"{type(self).__name__} produces {self.output_resolution}px images, "
                                  f"but img_resolution={img_resolution}")
        for k in _SR_IGNORED:
            block_kwargs.pop(k, None)
        c0, c1 = self.default_channels if sr_channels is None else sr_channels
        # The released model runs the SR in fp16 and therefore clamps conv outputs to +-256;
        # the clamp is part of the model, so it is kept in fp32 too.
        clamp = 256 if sr_num_fp16_res > 0 else None
        use_fp16 = sr_num_fp16_res > 0
        self.sr_antialias = sr_antialias
        first = SynthesisBlock if self.first_block_upsamples else SynthesisBlockNoUp
        self.block0 = first(channels, c0, w_dim=w_dim, resolution=self.block_resolutions[0], img_channels=3,
                            is_last=False, use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
        self.block1 = SynthesisBlock(c0, c1, w_dim=w_dim, resolution=self.block_resolutions[1], img_channels=3,
                                     is_last=True, use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
        if self.has_resample_filter:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none",
                fused_modconv=None) -> torch.Tensor:
        """rgb [N,3,r,r], features x [N,32,r,r], ws [N,num_ws,w] -> image [N,3,R,R] (not clamped)."""
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = x.shape[-1]
        if (size < self.input_resolution) if self.resize_only_if_smaller else (size != self.input_resolution):
            target = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=target, mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = self.block0(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        if self.strip_rows and noise_mode == "none" and not torch.is_grad_enabled():
            # the same pixels with a fraction of the last block's working set (it only returns its image)
            return self.block1.image_in_strips(x, rgb, ws, self.strip_rows, fused_modconv=fused_modconv)
        x, rgb = self.block1(x, rgb, ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
        return rgb


class SuperresolutionHybrid2X(_SuperresolutionBase):
    """64 -> 128 px: no-upsample block at 64 (32->128 ch), then 128 px (128->64 ch)."""
    output_resolution, input_resolution = 128, 64
    block_resolutions, default_channels, first_block_upsamples = (64, 128), (128, 64), False


class SuperresolutionHybrid4X(_SuperresolutionBase):
    """128 -> 256 px: no-upsample block at 128 (32->128 ch), then 256 px (128->64 ch)."""
    output_resolution, input_resolution = 256, 128
    block_resolutions, default_channels, first_block_upsamples = (128, 256), (128, 64), False
    resize_only_if_smaller = True


class SuperresolutionHybrid8XDC(_SuperresolutionBase):
    """128 -> 512 px (FFHQ-512): 256 px (32->256 ch), then 512 px (256->128 ch)."""
    output_resolution, input_resolution = 512, 128
    block_resolutions, default_channels, first_block_upsamples = (256, 512), (256, 128), True
    has_resample_filter = False


SUPERRESOLUTION_CLASSES = {cls.__name__: cls for cls in
                           (SuperresolutionHybrid2X, SuperresolutionHybrid4X, SuperresolutionHybrid8XDC)}


def superresolution_class(name: str) -> type[_SuperresolutionBase]:
    """'training.superresolution.SuperresolutionHybrid8XDC' (or the bare class name) -> class."""
    short = name.rsplit(".", 1)[-1]
    if short not in SUPERRESOLUTION_CLASSES:
        raise EG3DConfigError(f"unsupported superresolution_module {name!r}; goae implements "
                              f"{sorted(SUPERRESOLUTION_CLASSES)}")
    return SUPERRESOLUTION_CLASSES[short]


# ------------------------------------------------------------------------------------------------
# Generator

# The official TriPlaneGenerator's named constructor arguments; the rest of its kwargs go to the synthesis network.
OFFICIAL_NAMED_KWARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "sr_num_fp16_res",
                         "mapping_kwargs", "rendering_kwargs", "sr_kwargs")


def split_official_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict, dict]:
    """Official constructor kwargs -> (the named ones, the synthesis network's)."""
    return ({k: v for k, v in kwargs.items() if k in OFFICIAL_NAMED_KWARGS},
            {k: v for k, v in kwargs.items() if k not in OFFICIAL_NAMED_KWARGS})


def _plain(obj: Any) -> Any:
    """EasyDicts / tuples / numpy scalars -> JSON-friendly dicts, lists and Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        return obj.item()
    return obj


# Constructor kwargs of the released FFHQ-512 generator (ffhq512-128.pkl / ffhqrebalanced512-128.pkl,
# EG3D `train.py --cfg=ffhq --gen_pose_cond=True`); G_ema renders at neural resolution 128.
FFHQ512_KWARGS: dict[str, Any] = {
    "z_dim": 512, "w_dim": 512, "c_dim": 25, "img_resolution": 512, "img_channels": 3,
    "mapping_kwargs": {"num_layers": 2}, "channel_base": 32768, "channel_max": 512,
    "fused_modconv_default": "inference_only", "num_fp16_res": 0, "sr_num_fp16_res": 4, "conv_clamp": None,
    "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
    "rendering_kwargs": {
        "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.8, "c_scale": 1.0, "superresolution_noise_mode": "none",
        "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
        "sr_antialias": True, "depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": 2.25,
        "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
    },
}
FFHQ512_NEURAL_RENDERING_RESOLUTION = 128
# afhqcats512-128.pkl (`train.py --cfg=afhq --gen_pose_cond=True --gpc_reg_prob=0.8`, fine-tuned from FFHQ):
# the same architecture and rendering settings; only the visualiser's orbit pivot differs.
AFHQ512_KWARGS: dict[str, Any] = {
    **FFHQ512_KWARGS, "rendering_kwargs": {**FFHQ512_KWARGS["rendering_kwargs"], "avg_camera_pivot": [0, 0, -0.06]}}


class EG3DGenerator(ModelMixin, ConfigMixin):
    """NVIDIA's TriPlaneGenerator. Config = the official constructor kwargs (the official
    `**synthesis_kwargs` collected in `synthesis_kwargs`) + `neural_rendering_resolution` + `sr_channels`."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 sr_num_fp16_res: int = 0, mapping_kwargs: dict | None = None, rendering_kwargs: dict | None = None,
                 sr_kwargs: dict | None = None, synthesis_kwargs: dict | None = None,
                 neural_rendering_resolution: int = 64, sr_channels: list[int] | None = None):
        super().__init__()
        if not rendering_kwargs or "superresolution_module" not in rendering_kwargs:
            raise EG3DConfigError("rendering_kwargs must be the official dict (with 'superresolution_module', "
                                  "'ray_start', 'ray_end', 'box_warp', 'depth_resolution', ...)")
        if sr_channels is not None and len(sr_channels) != 2:
            raise EG3DConfigError(f"sr_channels must list the 2 block widths, got {sr_channels!r}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.rendering_kwargs = dict(rendering_kwargs)
        self.neural_rendering_resolution = int(neural_rendering_resolution)
        self.renderer = FusedImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.backbone = Generator(z_dim, c_dim, w_dim, img_resolution=PLANE_RESOLUTION,
                                  img_channels=3 * PLANE_CHANNELS, mapping_kwargs=mapping_kwargs or {},
                                  **(synthesis_kwargs or {}))
        sr_cls = superresolution_class(rendering_kwargs["superresolution_module"])
        self.superresolution = sr_cls(channels=PLANE_CHANNELS, img_resolution=img_resolution,
                                      sr_num_fp16_res=sr_num_fp16_res, sr_antialias=rendering_kwargs["sr_antialias"],
                                      w_dim=w_dim, sr_channels=sr_channels, **(sr_kwargs or {}))
        self.decoder = OSGDecoder(PLANE_CHANNELS, {"decoder_lr_mul": rendering_kwargs.get("decoder_lr_mul", 1),
                                                   "decoder_output_dim": PLANE_CHANNELS})

    @classmethod
    def from_official_kwargs(cls, init_kwargs: Mapping[str, Any],
                             neural_rendering_resolution: int | None = None, **overrides) -> "EG3DGenerator":
        """Build from the exact official constructor kwargs (a network pickle's `_init_kwargs`).
        None keeps the official constructor's default resolution (64)."""
        kw = _plain(init_kwargs)
        missing = [k for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "rendering_kwargs")
                   if k not in kw]
        if missing:
            raise EG3DConfigError(f"official kwargs lack {missing}")
        named, synthesis = split_official_kwargs(kw)
        if neural_rendering_resolution is not None:
            named["neural_rendering_resolution"] = int(neural_rendering_resolution)
        return cls(**named, synthesis_kwargs=synthesis, **overrides)

    @classmethod
    def ffhq512(cls) -> "EG3DGenerator":
        """The released FFHQ-512 architecture (random weights; load a converted checkpoint for real ones)."""
        return cls.from_official_kwargs(FFHQ512_KWARGS, neural_rendering_resolution=FFHQ512_NEURAL_RENDERING_RESOLUTION)

    # -- properties ------------------------------------------------------------------------------
    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    @property
    def w_avg(self) -> torch.Tensor:
        """[w_dim] the tracked mean of the mapping output: the origin of the canonical latent space."""
        return self.backbone.mapping.w_avg

    @property
    def box_warp(self) -> float:
        """Side of the cube [-box_warp/2, box_warp/2]^3 that the tri-planes span (world units)."""
        return float(self.rendering_kwargs["box_warp"])

    @property
    def ray_range(self) -> tuple[float, float]:
        """(ray_start, ray_end): every depth a render returns lies in this range (world units)."""
        return float(self.rendering_kwargs["ray_start"]), float(self.rendering_kwargs["ray_end"])

    def mean_ws(self, batch: int = 1) -> torch.Tensor:
        """w_avg broadcast to a W+ code [batch, num_ws, w_dim]: the mean face."""
        return self.w_avg.reshape(1, 1, -1).expand(batch, self.num_ws, -1)

    def feature_channels(self, res: int) -> int:
        """Channels of the synthesis features at level `res` (what AFA modulates there)."""
        block = getattr(self.backbone.synthesis, f"b{self._split(res)[0][-1]}")
        return int(block.conv1.out_channels)

    @property
    def feature_levels(self) -> list[int]:
        """The resolutions the synthesis can be split at (synthesize_until / synthesize_from)."""
        return list(self.backbone.synthesis.block_resolutions)

    def hot_modules(self) -> dict[str, nn.Module]:
        """The submodules a forward calls as modules, by name: each synthesis block, the renderer and the
        super-resolution (what torch.compile compiles; the blocks also carry the memory-format switch)."""
        synthesis = self.backbone.synthesis
        blocks = {f"synthesis.b{r}": getattr(synthesis, f"b{r}") for r in synthesis.block_resolutions}
        return {**blocks, "renderer": self.renderer, "superresolution": self.superresolution}

    def field(self, planes: torch.Tensor) -> TriplaneField:
        """Density and colour of tri-planes [N,96,H,W] (or [N,3,32,H,W]) at arbitrary points: field(xyz [N,M,3])
        -> (raw density [N,M], features [N,M,32]). For meshes and density queries; build once per planes."""
        planes = planes.view(planes.shape[0], 3, PLANE_CHANNELS, *planes.shape[-2:]) if planes.ndim == 4 else planes
        return TriplaneField(planes, self.decoder, self.renderer.plane_axes_key, self.box_warp)

    # -- mapping ---------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """z [N, z_dim], camera label c [N, 25] -> ws [N, num_ws, w_dim]."""
        if self.rendering_kwargs.get("c_gen_conditioning_zero", False):
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    # -- tri-plane backbone (split access for GOAE) ------------------------------------------------
    def _split(self, res: int) -> tuple[list[int], list[int]]:
        resolutions = self.backbone.synthesis.block_resolutions
        if res not in resolutions:
            raise EG3DConfigError(f"split resolution must be one of {resolutions}, got {res}")
        i = resolutions.index(res) + 1
        return resolutions[:i], resolutions[i:]

    def synthesize_until(self, ws: torch.Tensor, res: int = 32, noise_mode: str = "const") -> tuple[torch.Tensor, torch.Tensor]:
        """Tri-plane synthesis up to feature level `res` (blocks b4..b{res}):
        (features x [N, C_res, res, res], skip image img [N, 96, res, res])."""
        check_noise_mode(noise_mode)
        first, _ = self._split(res)
        return self.backbone.synthesis.run_blocks(ws, None, None, first, noise_mode=noise_mode)

    def synthesize_from(self, ws: torch.Tensor, x: torch.Tensor, img: torch.Tensor, res: int = 32,
                        noise_mode: str = "const") -> torch.Tensor:
        """Tri-plane synthesis on from feature level `res` (the blocks after b{res}), given (x, img) of
        `synthesize_until` (or refined features in its place) -> planes [N, 96, 256, 256]."""
        check_noise_mode(noise_mode)
        _, rest = self._split(res)
        return self.backbone.synthesis.run_blocks(ws, x, img, rest, noise_mode=noise_mode)[1]

    def synthesize_planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws -> tri-planes [N, 96, 256, 256] (view as [N, 3, 32, 256, 256])."""
        check_noise_mode(noise_mode)
        return self.backbone.synthesis(ws, noise_mode=noise_mode)

    # -- rendering -------------------------------------------------------------------------------
    def render_planes(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor,
                      neural_rendering_resolution: int | None = None, deterministic: bool = False,
                      noise_mode: str | None = None, superresolution: bool = True,
                      trace: dict | None = None, features: bool = True) -> RenderOutput:
        """Volume-render tri-planes at cameras c [N, 25] and super-resolve with style ws[:, -1].

        noise_mode: noise of the super-resolution blocks; None = rendering_kwargs
        'superresolution_noise_mode' (the official behaviour, 'none' for the released models).
        Returns a RenderOutput (image_raw, image_depth, feature_image, weights_sum, rays and, if
        superresolution, image).
        The volume rendering is the fused renderer unless `self.renderer.fused = False` (the reference,
        in the official op order; both agree to ~1e-6, see goae/models/renderer_fused.py).
        features=False (needs superresolution=False): a depth-only render, e.g. for an occlusion mask;
        the fast path decodes only the density, and the result holds just image_depth, weights_sum
        and the rays (the same depth as with features=True, up to ~1e-6)."""
        if not features and superresolution:
            raise ValueError("render_planes(features=False) renders depth only and cannot super-resolve: "
                             "pass superresolution=False as well")
        if c.ndim != 2 or c.shape[1] < 25:
            raise ValueError(f"c must be camera labels [N, 25], got {tuple(c.shape)}")
        n = planes.shape[0]
        if planes.ndim == 4:
            planes = planes.view(n, 3, PLANE_CHANNELS, planes.shape[-2], planes.shape[-1])
        if planes.ndim != 5 or planes.shape[1:3] != (3, PLANE_CHANNELS):
            raise ValueError(f"planes must be [N, 96, H, W] or [N, 3, 32, H, W], got {tuple(planes.shape)}")
        if c.shape[0] != n:
            raise ValueError(f"{c.shape[0]} cameras for {n} tri-planes")
        res = self.neural_rendering_resolution if neural_rendering_resolution is None else int(neural_rendering_resolution)
        cam2world = c[:, :16].reshape(-1, 4, 4)
        intrinsics = c[:, 16:25].reshape(-1, 3, 3)
        ray_origins, ray_directions = self.ray_sampler(cam2world, intrinsics, res)
        # The renderer may be compiled (goae.fast): its constants are made here, outside the compiled region.
        taps = self.renderer.tap_constants_for(planes, self.rendering_kwargs["box_warp"])
        samples, depth, weights_sum = self.renderer(planes, self.decoder, ray_origins, ray_directions,
                                                    self.rendering_kwargs, deterministic=deterministic, trace=trace,
                                                    features=features, tap_constants=taps)
        if trace is not None:
            trace.update(ray_origins=ray_origins, ray_directions=ray_directions, depth_samples=depth,
                         weights_sum=weights_sum)
            if features:
                trace["feature_samples"] = samples
        out = RenderOutput(image_depth=depth.permute(0, 2, 1).reshape(n, 1, res, res),
                           weights_sum=weights_sum.permute(0, 2, 1).reshape(n, 1, res, res),
                           ray_origins=ray_origins, ray_directions=ray_directions)
        if not features:
            return out
        feature_image = samples.permute(0, 2, 1).reshape(n, samples.shape[-1], res, res).contiguous()
        # item assignment: a BaseOutput lists a field set by attribute only if it was set before
        out["image_raw"], out["feature_image"] = feature_image[:, :3], feature_image
        if superresolution:
            out["image"] = self.super_resolve(out.image_raw, feature_image, ws, noise_mode=noise_mode)
        return out

    def super_resolve(self, image_raw: torch.Tensor, feature_image: torch.Tensor, ws: torch.Tensor,
                      noise_mode: str | None = None) -> torch.Tensor:
        """The super-resolution step alone: neural rendering [N,3,r,r] + features -> image [N,3,R,R].
        noise_mode None = rendering_kwargs 'superresolution_noise_mode' (the official behaviour)."""
        sr_noise = self.rendering_kwargs.get("superresolution_noise_mode", "none") if noise_mode is None else noise_mode
        check_noise_mode(sr_noise)
        return self.superresolution(image_raw, feature_image, ws, noise_mode=sr_noise)

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: int | None = None,
                  noise_mode: str = "const", deterministic: bool = False,
                  return_planes: bool = False) -> dict[str, torch.Tensor]:
        """ws [N, num_ws, w_dim], cameras c [N, 25] -> dict(image, image_raw, image_depth[, planes]).
        `noise_mode` is the backbone's; the SR uses rendering_kwargs['superresolution_noise_mode']."""
        planes = self.synthesize_planes(ws, noise_mode=noise_mode)
        out = self.render_planes(planes, ws, c, neural_rendering_resolution=neural_rendering_resolution,
                                 deterministic=deterministic)
        result = {k: out[k] for k in ("image", "image_raw", "image_depth")}  # the official dict
        if return_planes:
            result["planes"] = planes
        return result

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, neural_rendering_resolution: int | None = None,
                noise_mode: str = "const", deterministic: bool = False) -> dict[str, torch.Tensor]:
        """Sample images: mapping (conditioned on the render cameras c) + synthesis."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c, neural_rendering_resolution=neural_rendering_resolution,
                              noise_mode=noise_mode, deterministic=deterministic)
