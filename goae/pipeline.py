"""GOAEPipeline: aligned portrait + camera -> refined tri-planes -> renders, in one encoder pass.

A thin orchestration of three components (diffusers style): the EG3D `generator`, the GOAE
`encoder` (Swin-V2 -> canonical W+) and `afa` (adaptive feature alignment). Data flow of the paper
(and of the official `infer.py`):

    encode  : ws = encoder(x_256) + w_avg                      canonical latent space, no camera
    render  : W tri-planes -> first reconstruction at the input camera
    refine  : AFA(residual input/reconstruction) modulates the generator's 32x32 features
    fuse    : occlusion-aware mix of refined (F) and original (W) tri-planes
    render  : any camera from the cached mixed tri-planes

The mixed tri-planes are the cache: `render_view` re-uses them without re-encoding.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from goae import fast as fastpath
from goae.models.afa import AFA
from goae.models.eg3d import EG3DGenerator
from goae.models.encoder import GOAEncoder
from goae.models.occlusion import occlusion_aware_mix, visibility_mask

ImageInput = Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray]


@dataclass
class GOAEOutput(BaseOutput):
    """Result of one inversion (batched along dim 0).

    ws:          [B,14,w_dim] W+ codes in the canonical latent space (w_avg included).
    planes:      [B,96,256,256] occlusion-aware mixed tri-planes: the cache for every other view.
    image:       [B,3,512,512] final render at the input camera, in [-1, 1].
    image_raw:   [B,3,128,128] neural-rendering RGB before super-resolution, in [-1, 1].
    image_depth: [B,1,128,128] ray depth (distance along the ray from the camera, world units).
    camera:      [B,25] the EG3D camera label the photo was inverted with.
    mask:        [B,1,256,256] occlusion-aware mix weight of the refined features (1 = seen by the input camera).
    features:    what `edit` needs to refine an edited code the way the paper does (rec features, AFA output).
    """

    ws: torch.Tensor
    planes: torch.Tensor
    image: torch.Tensor
    image_raw: torch.Tensor
    image_depth: torch.Tensor
    camera: torch.Tensor
    mask: torch.Tensor
    features: dict[str, torch.Tensor]


def _to_uint8_batch(images: ImageInput) -> list[Image.Image]:
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"numpy images must be HxWx3 uint8, got {im.dtype} {im.shape}")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise TypeError(f"unsupported image type {type(im).__name__}")
        out.append(im.convert("RGB"))
    return out


class GOAEPipeline(DiffusionPipeline):
    """GOAE inversion pipeline. `GOAEPipeline.from_pretrained(repo_or_dir)` / `save_pretrained(dir)`."""

    model_cpu_offload_seq = "encoder->generator->afa"
    weights_label: str = "unlabelled"  # where the weights came from (a folder, a repo id, or "random (seed N)")

    def __init__(self, generator: EG3DGenerator, encoder: GOAEncoder, afa: AFA,
                 afa_resolution: int = 32, mask_blur_sigma: float = 1.5, mask_threshold: float = 0.35,
                 deterministic: bool = True):
        super().__init__()
        self.register_modules(generator=generator, encoder=encoder, afa=afa)
        # deterministic=True: no stratified jitter and det. importance sampling, so one photo always
        # gives the same result (the official code jitters; the difference is sampling noise).
        self.register_to_config(afa_resolution=afa_resolution, mask_blur_sigma=mask_blur_sigma,
                                mask_threshold=mask_threshold, deterministic=deterministic)

    @classmethod
    def from_random(cls, seed: int = 0, generator: EG3DGenerator | None = None, encoder: GOAEncoder | None = None,
                    afa: AFA | None = None, **config) -> "GOAEPipeline":
        """The released architecture (EG3D FFHQ-512, Swin-V2 encoder, AFA) on seeded random weights.

        For trying and testing goae where no checkpoint can be downloaded: the code paths, shapes and
        costs are the real ones, the pictures are not faces. `w_avg` is set the way EG3D tracks it,
        as the mean mapping output (here over 512 seeded z at the canonical camera).
        """
        torch.manual_seed(seed)
        generator = generator or EG3DGenerator.ffhq512()
        encoder = encoder or GOAEncoder()
        afa = afa or AFA()
        from goae.camera import camera_label
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(512, generator.z_dim, generator=g)
            c = camera_label(0.0, 0.0).expand(512, 25)
            w = generator.mapping(z, c)[:, 0]
            generator.backbone.mapping.w_avg.copy_(w.mean(0))
        pipe = cls(generator=generator.eval(), encoder=encoder.eval(), afa=afa.eval(), **config)
        pipe.weights_label = f"random (seed {seed})"
        return pipe

    # ----------------------------------------------------------------------------- fast paths
    @property
    def fast_path(self) -> fastpath.FastPath | None:
        """The active `goae.fast.FastPath`, or None on the plain fp32 (parity) path."""
        return getattr(self, "_fast_path", None)

    def enable_fast_path(self, precision: str = "auto", channels_last: bool = True,
                         compile: bool = False) -> "GOAEPipeline":
        """Faster inference for `__call__`, `render_view` and `edit` (outputs stay float32).

        precision: 'bf16' / 'fp16' (CUDA) run the networks under torch.autocast, with the fragile
        steps kept in fp32 (see goae.fast); 'auto' = bf16 where the device has fast bf16, else fp32.
        channels_last: NHWC convolutions. compile: torch.compile the hot modules (needs a C++
        compiler on a CPU; the first call of each shape then takes minutes). Returns self.
        """
        fast = fastpath.FastPath(precision=fastpath.resolve_precision(precision, self.device),
                                 channels_last=bool(channels_last), compile=bool(compile),
                                 device_type=self.device.type)
        fastpath.apply(self, fast)
        self._fast_path = fast
        return self

    def disable_fast_path(self) -> "GOAEPipeline":
        """Back to the plain fp32 path (the parity path). Returns self."""
        fastpath.reset(self)
        self._fast_path = None
        return self

    def _autocast(self):
        fast = self.fast_path
        if fast is None:
            return contextlib.nullcontext()
        if fast.device_type != self.device.type:  # moved with .to() after enable_fast_path
            fast = self._fast_path = dataclasses.replace(fast, device_type=self.device.type)
        return fast.autocast()

    # ----------------------------------------------------------------------------- inputs
    @property
    def encoder_resolution(self) -> int:
        return int(self.encoder.config.img_size)

    def preprocess(self, images: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned 512x512 photos -> (x_enc [B,3,r,r], x_512 [B,3,512,512]) in [-1, 1].

        Same normalisation as the official code: PIL bicubic resize for the encoder input,
        `uint8 / 127.5 - 1`, no mean/std. A float tensor is taken as already in [-1, 1] at 512.
        """
        r = self.encoder_resolution
        if isinstance(images, torch.Tensor):
            x = images.float()
            if x.ndim == 3:
                x = x[None]
            if x.shape[1:] != (3, 512, 512):
                raise ValueError(f"tensor images must be [B,3,512,512] in [-1,1], got {tuple(x.shape)}")
            x_enc = F.interpolate(x, size=(r, r), mode="bicubic", align_corners=False, antialias=True)
            return x_enc.to(self.device), x.to(self.device)
        pil = _to_uint8_batch(images)
        for im in pil:
            if im.size != (512, 512):
                raise ValueError(f"GOAE expects aligned 512x512 portraits (use goae.align_face first), got {im.size}")
        u8_512 = np.stack([np.asarray(im) for im in pil])
        u8_enc = np.stack([np.asarray(im.resize((r, r), Image.BICUBIC)) for im in pil])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return to_t(u8_enc).to(self.device), to_t(u8_512).to(self.device)

    def _camera(self, camera: Any, batch: int) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(camera, dtype=np.float32)) if not isinstance(camera, torch.Tensor) else camera
        c = c.float().reshape(-1, 25).to(self.device)
        if c.shape[0] == 1 and batch > 1:
            c = c.expand(batch, 25)
        if c.shape[0] != batch:
            raise ValueError(f"{c.shape[0]} cameras given for {batch} images")
        return c

    # ----------------------------------------------------------------------------- steps
    def encode(self, x_enc: torch.Tensor) -> torch.Tensor:
        """Encoder pass into the canonical latent space: W+ offsets from w_avg, plus w_avg."""
        with self._autocast():
            ws = self.encoder.canonical_ws(x_enc, self.generator.backbone.mapping.w_avg)
        return ws.float()

    def _backbone_to(self, ws, res):
        with self._autocast():
            x, img = self.generator.backbone_to(ws, res=res)
        return x.float().contiguous(), img.float()  # x may be channels-last inside the generator

    def _backbone_from(self, ws, x, img, res):
        with self._autocast():
            return self.generator.backbone_from(ws, x, img, res=res).float()

    def _render(self, planes, ws, c, superresolution: bool = True,
                neural_rendering_resolution: int | None = None, features: bool = True) -> dict[str, torch.Tensor]:
        if planes.shape[0] > 1 and planes.device.type == "cpu":
            # One image at a time on a CPU: the working set of one render stays in cache (batch-8
            # super-resolution activations are 1 GB each at 512^2, and ran ~35% slower per photo), and
            # every image is bit-identical to rendering it alone. A GPU takes the batch in one go.
            parts = [self._render_batch(planes[i:i + 1], ws[i:i + 1], c[i:i + 1], superresolution,
                                        neural_rendering_resolution, features) for i in range(planes.shape[0])]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return self._render_batch(planes, ws, c, superresolution, neural_rendering_resolution, features)

    def _render_batch(self, planes, ws, c, superresolution: bool, neural_rendering_resolution: int | None,
                      features: bool) -> dict[str, torch.Tensor]:
        kw = dict(deterministic=self.config.deterministic, neural_rendering_resolution=neural_rendering_resolution)
        if not features:
            return self.generator.render_planes(planes, ws, c, superresolution=False, features=False, **kw)
        if self.fast_path is None or not superresolution:
            return self.generator.render_planes(planes, ws, c, superresolution=superresolution, **kw)
        # Fast path: volume rendering stays fp32, only the super-resolution runs under autocast.
        out = self.generator.render_planes(planes, ws, c, superresolution=False, **kw)
        sr_noise = self.generator.rendering_kwargs.get("superresolution_noise_mode", "none")
        with self._autocast():
            out["image"] = self.generator.superresolution(out["image_raw"], out["feature_image"], ws,
                                                          noise_mode=sr_noise).float()
        return out

    def _refine_and_fuse(self, ws, ws_feat, x_feat, img_feat, c, planes_w):
        """Refined (F) tri-planes from aligned features, visibility mask of their surface, mix with W.
        Returns (mixed planes, mask dict, F planes)."""
        res = self.config.afa_resolution
        planes_f = self._backbone_from(ws_feat, x_feat, img_feat, res)
        # Only the depth and rays of the F render are needed for the mask: a depth-only render
        # (no colour features, no super-resolution) gives the same depth at a third of the cost.
        render_f = self._render(planes_f, ws, c, features=False)
        m = visibility_mask(render_f["ray_origins"], render_f["ray_directions"], render_f["image_depth"],
                            blur_sigma=self.config.mask_blur_sigma, threshold=self.config.mask_threshold,
                            box_warp=float(self.generator.rendering_kwargs["box_warp"]))
        n = planes_w.shape[0]
        mixed = occlusion_aware_mix(planes_w.view(n, 3, -1, *planes_w.shape[-2:]),
                                    planes_f.view(n, 3, -1, *planes_f.shape[-2:]), m["mask"])
        return mixed.reshape(planes_w.shape), m, planes_f

    @torch.no_grad()
    def __call__(self, image: ImageInput, camera: Any, return_intermediates: bool = False) -> GOAEOutput:
        """Invert aligned 512x512 portrait(s) taken with EG3D camera label(s) `camera` ([B,25] or [25]).

        With `return_intermediates`, `features` also holds every boundary of the method (W tri-planes
        and render, AFA output, F tri-planes, the mask stages) for inspection and parity tests.
        """
        x_enc, x_512 = self.preprocess(image)
        c = self._camera(camera, x_enc.shape[0])
        res = self.config.afa_resolution
        ws = self.encode(x_enc)
        x_rec, img_rec = self._backbone_to(ws, res)
        planes_w = self._backbone_from(ws, x_rec, img_rec, res)
        render_w = self._render(planes_w, ws, c)
        if not return_intermediates:  # free the big render intermediates before the next stages
            render_w = {"image": render_w["image"]}
        with self._autocast():
            afa = {k: v.float() for k, v in self.afa(x_512, render_w["image"], x_rec).items()}
        planes, mask, planes_f = self._refine_and_fuse(ws, ws, afa["feature_map_adain"], img_rec, c, planes_w)
        if not return_intermediates:
            del planes_w, planes_f
        final = self._render(planes, ws, c)
        feats = {"x_rec": x_rec, "adain_rec": afa["feature_map_adain"]}
        if return_intermediates:
            feats.update({"x_enc": x_enc, "img_rec": img_rec, "planes_w": planes_w, "planes_f": planes_f,
                          "gamma": afa["gamma"], "beta": afa["beta"], "afa_features": afa["features"],
                          **{f"render_w.{k}": v for k, v in render_w.items()},
                          **{f"mask.{k}": v for k, v in mask.items()}})
        return GOAEOutput(ws=ws, planes=planes, image=final["image"], image_raw=final["image_raw"],
                          image_depth=final["image_depth"], camera=c, mask=mask["mask"], features=feats)

    @torch.no_grad()
    def render_view(self, result: GOAEOutput, camera: Any, ws: torch.Tensor | None = None,
                    planes: torch.Tensor | None = None, superresolution: bool = True,
                    neural_rendering_resolution: int | None = None) -> dict[str, torch.Tensor]:
        """Render cached tri-planes at other camera(s) without re-encoding.

        `camera` is [25] / [B,25] (one per inversion) or [V,25] with a single inversion (V views of it).
        `neural_rendering_resolution` (e.g. 64): explicit preview mode, fewer rays (the volume rendering
        dominates on a CPU), the super-resolution still outputs full size. None = the model's own (128).
        """
        planes = result.planes if planes is None else planes
        ws = result.ws if ws is None else ws
        c = torch.as_tensor(camera, dtype=torch.float32).reshape(-1, 25).to(planes.device) \
            if not isinstance(camera, torch.Tensor) else camera.float().reshape(-1, 25).to(planes.device)
        if planes.shape[0] == 1 and c.shape[0] > 1:
            planes = planes.expand(c.shape[0], *planes.shape[1:])
            ws = ws.expand(c.shape[0], *ws.shape[1:])
        elif c.shape[0] == 1 and planes.shape[0] > 1:
            c = c.expand(planes.shape[0], 25)
        return self._render(planes, ws, c, superresolution=superresolution,
                            neural_rendering_resolution=neural_rendering_resolution)

    @torch.no_grad()
    def edit(self, result: GOAEOutput, offset: torch.Tensor) -> GOAEOutput:
        """Apply a W+ offset ([14,w] or [B,14,w]) the way the paper edits (official `Net.edit`).

        The AFA features of the original inversion are kept and shifted by the change the edit makes
        to the generator features; the occlusion-aware mix then uses the edited W tri-planes.
        """
        res = self.config.afa_resolution
        offset = offset.to(result.ws.device, result.ws.dtype)
        edit_ws = result.ws + (offset if offset.ndim == 3 else offset[None])
        c = result.camera
        x_edit, img_edit = self._backbone_to(edit_ws, res)
        planes_w_edit = self._backbone_from(edit_ws, x_edit, img_edit, res)
        f_edit = result.features["adain_rec"] + (x_edit - result.features["x_rec"])
        # As in the official code, the refined planes are synthesised with the un-edited codes.
        planes, mask, _ = self._refine_and_fuse(edit_ws, result.ws, f_edit, img_edit, c, planes_w_edit)
        final = self._render(planes, edit_ws, c)
        return GOAEOutput(ws=edit_ws, planes=planes, image=final["image"], image_raw=final["image_raw"],
                          image_depth=final["image_depth"], camera=c, mask=mask["mask"], features=result.features)


def load_pipeline(weights: str | None = None, seed: int = 0, device: str | torch.device = "cpu") -> GOAEPipeline:
    """Weights from a pipeline folder or Hub repo id (default: $GOAE_WEIGHTS), or 'random'.

    Raises goae.hub.WeightsNotFoundError, with the commands to get or convert the weights, when none
    are given or they cannot be found (e.g. offline and not in the Hub cache).
    """
    import os

    from goae.hub import HOW_TO_GET_WEIGHTS, WeightsNotFoundError, resolve_pretrained

    weights = weights or os.environ.get("GOAE_WEIGHTS")
    if not weights:
        raise WeightsNotFoundError("no weights given (pass a pipeline folder or Hub repo id, or 'random' to try "
                                   "the real architecture on random weights). " + HOW_TO_GET_WEIGHTS.format(repo="<repo_id>"))
    if weights in ("random", "random-small"):  # one mechanism for the CLI and the app (goae.presets)
        from goae.presets import random_pipeline
        pipe = random_pipeline(weights, seed=seed)
    else:
        folder = resolve_pretrained(weights)
        pipe = GOAEPipeline.from_pretrained(str(folder), low_cpu_mem_usage=False)
        pipe.weights_label = str(weights)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
