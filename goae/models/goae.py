"""GOAE, the method, written once (Yuan et al., ICCV 2023; official `Net.forward` / `Net.edit`).

    encode     x_enc -> ws = encoder offsets + w_avg                the canonical latent space (no camera)
    synthesize ws -> generator features at the AFA level (x_rec, img_rec) -> W tri-planes
    render     W tri-planes at the input camera -> first reconstruction
    refine     AFA(input, reconstruction, x_rec): residual-aligned features (gamma * x_rec + beta)
    fuse       F tri-planes from the refined features; their render at the input camera is the
               reconstruction (what the official infer.py saves); the visibility mask of their surface
               seen from there; occlusion-aware `mix` of F (visible) and W (occluded) tri-planes
    render     the mixed tri-planes (the cache) at any camera: views, videos, meshes, edits

`GOAE` holds references to the three components and is differentiable: `GOAEPipeline` runs it under
no_grad with its pre/post-processing, training runs it with autograd, the benchmarks time its steps.
Precision: `autocast` (a context factory) wraps the network passes (encoder, synthesis, AFA,
super-resolution); the volume rendering and the visibility mask always run in fp32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from .eg3d import EG3DGenerator, RenderOutput
from .occlusion import occlusion_aware_mix, visibility_mask


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-average down (or bilinear up) to size x size; identity when already there."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@dataclass
class GOAEForward(BaseOutput):
    """Every boundary of one GOAE forward (batched along dim 0).

    ws [B,num_ws,w] canonical W+ codes (w_avg included); delta: their offsets from the base code;
    planes [B,96,256,256] mixed tri-planes (the cache); final: the reconstruction at the input camera (the
    F tri-planes' render, as the official forward returns it; `GOAE.forward(reconstruction="mix")` and
    `GOAE.edit`: the mixed tri-planes'); render_w: the W tri-planes' render there;
    planes_w / planes_f: W and refined tri-planes; x_rec / img_rec:
    generator features / skip image at the AFA level; afa: AFA outputs (feature_map_adain, gamma, beta,
    features); mask: visibility-mask stages (mask_hits, mask_thresh, mask).
    """

    ws: torch.Tensor
    delta: torch.Tensor
    planes: torch.Tensor
    final: RenderOutput
    render_w: RenderOutput | None = None
    planes_w: torch.Tensor | None = None
    planes_f: torch.Tensor | None = None
    x_rec: torch.Tensor | None = None
    img_rec: torch.Tensor | None = None
    afa: dict | None = None
    mask: dict | None = None


class GOAE:
    """The GOAE forward over a generator, encoder and AFA (held, not owned: no parameters of its own).

    afa_resolution: generator feature level AFA refines (32 released). mask_blur_sigma, mask_threshold:
    the visibility mask (official: 1.5 at inference, random in training). deterministic: no stratified
    jitter and deterministic importance sampling. neural_rendering_resolution: None = the generator's.
    autocast: context factory for the network passes (None: plain fp32). backbone_autocast: the one for
    the tri-plane synthesis (None: autocast; fp16 keeps it fp32, as the official code runs it).
    """

    GPU_RENDER_BATCH = 8  # images per render call on a GPU (at 512^2, ~1 GB of activations each)

    def __init__(self, generator: EG3DGenerator, encoder, afa, afa_resolution: int = 32,
                 mask_blur_sigma: float = 1.5, mask_threshold: float = 0.35, deterministic: bool = True,
                 neural_rendering_resolution: int | None = None,
                 autocast: Callable[[], ContextManager] | None = None,
                 backbone_autocast: Callable[[], ContextManager] | None = None):
        self.generator, self.encoder, self.afa = generator, encoder, afa
        self.afa_resolution, self.deterministic = int(afa_resolution), bool(deterministic)
        self.mask_blur_sigma, self.mask_threshold = float(mask_blur_sigma), float(mask_threshold)
        self.neural_rendering_resolution = neural_rendering_resolution
        self.autocast = autocast or contextlib.nullcontext
        self.backbone_autocast = backbone_autocast or self.autocast

    # ------------------------------------------------------------------------------------ steps
    def encode(self, x_enc: torch.Tensor, stage: str = "fine") -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder pass into the canonical latent space -> (ws = offsets + w_avg, delta from the base code)."""
        with self.autocast():
            ws, delta = self.encoder.canonical_ws(x_enc, self.generator.w_avg, stage=stage, return_delta=True)
        return ws.float(), delta.float()

    def synthesize(self, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ws -> (x_rec, img_rec) at the AFA level, and the W tri-planes synthesised on from them."""
        with self.backbone_autocast():
            x, img = self.generator.synthesize_until(ws, res=self.afa_resolution)
        x, img = x.float().contiguous(), img.float()  # x may be channels-last inside the generator
        return x, img, self.synthesize_from(ws, x, img)

    def synthesize_from(self, ws: torch.Tensor, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Tri-planes from (possibly refined) features x and skip image img at the AFA level."""
        with self.backbone_autocast():
            return self.generator.synthesize_from(ws, x, img, res=self.afa_resolution).float()

    def render(self, planes: torch.Tensor, ws: torch.Tensor, c: torch.Tensor, superresolution: bool = True,
               neural_rendering_resolution: int | None = None, features: bool = True) -> RenderOutput:
        """Volume rendering (fp32) + super-resolution (under autocast). features=False: depth only."""
        nrr = self.neural_rendering_resolution if neural_rendering_resolution is None else neural_rendering_resolution
        # One image at a time on a CPU: the working set of one render stays in cache (batch-8
        # super-resolution activations are 1 GB each at 512^2 and ran ~35% slower per photo), and
        # every image is bit-identical to rendering it alone. A GPU takes groups of GPU_RENDER_BATCH
        # (many views of one inversion would otherwise all be in memory at once).
        step = 1 if planes.device.type == "cpu" else self.GPU_RENDER_BATCH
        if planes.shape[0] > step:
            parts = [self._render(planes[i:i + step], ws[i:i + step], c[i:i + step], superresolution, nrr, features)
                     for i in range(0, planes.shape[0], step)]
            return RenderOutput(**{k: torch.cat([p[k] for p in parts]) for k in parts[0].keys()})
        return self._render(planes, ws, c, superresolution, nrr, features)

    def _render(self, planes, ws, c, superresolution, nrr, features) -> RenderOutput:
        with torch.autocast(planes.device.type, enabled=False):
            out = self.generator.render_planes(planes.float(), ws, c.float(), neural_rendering_resolution=nrr,
                                               deterministic=self.deterministic, superresolution=False,
                                               features=features)
        if superresolution:
            with self.autocast():
                out["image"] = self.generator.super_resolve(out.image_raw, out.feature_image, ws).float()
        return out

    def refine(self, x: torch.Tensor, reconstruction: torch.Tensor, x_rec: torch.Tensor,
               image_resolution: int | None = None) -> dict[str, torch.Tensor]:
        """AFA: align the generator features x_rec to the residual between the input x and its
        reconstruction (both [B,3,H,W], optionally resized to image_resolution first)."""
        if image_resolution is not None:
            x, reconstruction = resize(x, image_resolution), resize(reconstruction, image_resolution)
        with self.autocast():
            return {k: v.float() for k, v in self.afa(x, reconstruction, x_rec).items()}

    def fuse(self, ws: torch.Tensor, features: torch.Tensor, img: torch.Tensor, c: torch.Tensor,
             planes_w: torch.Tensor, ws_features: torch.Tensor | None = None,
             blur_sigma: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Occlusion-aware fusion where the F render itself is not wanted (edits, `reconstruction="mix"`):
        F tri-planes from the refined `features` (synthesised with `ws_features`, default ws), a depth-only
        render of them at c, then `mix`. Returns (mixed planes, mask stages, F planes)."""
        planes_f = self.synthesize_from(ws if ws_features is None else ws_features, features, img)
        # Only the depth and rays of the F render are needed for the mask: a depth-only render
        # (no colour features, no super-resolution) gives the same depth at a third of the cost.
        depth = self.render(planes_f, ws, c, superresolution=False, features=False)
        mixed, m = self.mix(planes_w, planes_f, depth, blur_sigma)
        return mixed, m, planes_f

    def mix(self, planes_w: torch.Tensor, planes_f: torch.Tensor, render_f: RenderOutput,
            blur_sigma: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The occlusion-aware mix (official `Net.mix_fusion`): the visibility mask of the F surface that
        `render_f` (a render of planes_f at the input camera, its rays and depth) sees, then F where it is
        visible and W where it is occluded. Returns (mixed planes shaped like planes_w, mask stages)."""
        m = visibility_mask(render_f.ray_origins, render_f.ray_directions, render_f.image_depth,
                            blur_sigma=self.mask_blur_sigma if blur_sigma is None else blur_sigma,
                            threshold=self.mask_threshold, box_warp=self.generator.box_warp)
        n = planes_w.shape[0]
        mixed = occlusion_aware_mix(planes_w.view(n, 3, -1, *planes_w.shape[-2:]),
                                    planes_f.view(n, 3, -1, *planes_f.shape[-2:]), m["mask"])
        return mixed.reshape(planes_w.shape), m

    # ------------------------------------------------------------------------------------ the method
    def forward(self, x: torch.Tensor, x_enc: torch.Tensor, c: torch.Tensor, stage: str = "fine",
                superresolution: bool = True, afa_image_resolution: int | None = None,
                blur_sigma: float | None = None, intermediates: bool = True, reconstruction: str = "f",
                on_stage: Callable[[str], None] | None = None) -> GOAEForward:
        """Invert x [B,3,H,W] (encoder input x_enc) taken with cameras c [B,25].

        superresolution=False compares and refines on the neural rendering (cheaper training).
        intermediates=False keeps only what the result needs (inference memory).
        reconstruction: "f" (the official forward) renders the F tri-planes at c, which is the
        reconstruction and whose depth gives the mask; "mix" renders the mixed tri-planes there instead
        (the mask from a depth-only F render), which is what goae's training supervises.
        on_stage(name) is called as each stage starts, for progress reports: "encode", "render_w" (the
        first reconstruction), "refine" (AFA), "fuse" (the F tri-planes), "render" (the final render;
        the occlusion-aware mix follows it)."""
        if reconstruction not in ("f", "mix"):
            raise ValueError(f"reconstruction must be 'f' or 'mix', got {reconstruction!r}")
        report = on_stage or (lambda name: None)
        report("encode")
        ws, delta = self.encode(x_enc, stage)
        report("render_w")
        x_rec, img_rec, planes_w = self.synthesize(ws)
        render_w = self.render(planes_w, ws, c, superresolution=superresolution)
        rec = render_w.image if superresolution else render_w.image_raw
        report("refine")
        afa = self.refine(x, rec, x_rec, afa_image_resolution)
        report("fuse")
        features = afa["feature_map_adain"]
        if not intermediates:  # free the large intermediates before the final render
            render_w, afa = None, {"feature_map_adain": features}
        if reconstruction == "f":
            planes_f = self.synthesize_from(ws, features, img_rec)
            report("render")
            final = self.render(planes_f, ws, c, superresolution=superresolution)
            planes, mask = self.mix(planes_w, planes_f, final, blur_sigma)
        else:
            planes, mask, planes_f = self.fuse(ws, features, img_rec, c, planes_w, blur_sigma=blur_sigma)
            if not intermediates:
                planes_w = planes_f = None
            report("render")
            final = self.render(planes, ws, c, superresolution=superresolution)
        if not intermediates:
            planes_w = planes_f = None
        return GOAEForward(ws=ws, delta=delta, planes=planes, final=final, render_w=render_w, planes_w=planes_w,
                           planes_f=planes_f, x_rec=x_rec, img_rec=img_rec, afa=afa, mask=mask)

    __call__ = forward

    def edit(self, ws: torch.Tensor, offset: torch.Tensor, c: torch.Tensor, x_rec: torch.Tensor,
             adain_rec: torch.Tensor) -> GOAEForward:
        """The paper's editing (official `Net.edit`): ws + offset re-synthesised; the refined features of
        the inversion (adain_rec, for generator features x_rec) shifted by the change the edit makes to
        the generator features; the refined planes synthesised with the un-edited codes, then mixed
        with the edited W tri-planes."""
        edit_ws = ws + (offset if offset.ndim == 3 else offset[None])
        x_edit, img_edit, planes_w = self.synthesize(edit_ws)
        f_edit = adain_rec + (x_edit - x_rec)
        planes, mask, _ = self.fuse(edit_ws, f_edit, img_edit, c, planes_w, ws_features=ws)
        final = self.render(planes, edit_ws, c)
        return GOAEForward(ws=edit_ws, delta=edit_ws - ws, planes=planes, final=final, x_rec=x_edit,
                           img_rec=img_edit, mask=mask)
