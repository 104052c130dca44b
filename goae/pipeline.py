"""GOAEPipeline: aligned portrait + camera -> refined tri-planes -> renders, in one encoder pass.

A thin orchestration of three components (diffusers style): the EG3D `generator`, the GOAE
`encoder` (Swin-V2 -> canonical W+) and `afa` (adaptive feature alignment). Data flow of the paper
(and of the official `infer.py`):

    encode  : ws = encoder(x_256) + w_avg                      canonical latent space, no camera
    render  : W tri-planes -> first reconstruction at the input camera
    refine  : AFA(residual input/reconstruction) modulates the generator's 32x32 features
    fuse    : occlusion-aware mix of refined (F) and original (W) tri-planes
    render  : any camera from the cached mixed tri-planes

The mixed tri-planes are the cache: `render_view` re-uses them without re-encoding. `pipe(photo)` also
aligns the photo and estimates its camera with the pipeline's domain (goae.domains) first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image

from goae import fast as fastpath
from goae.models.afa import AFA
from goae.models.eg3d import EG3DGenerator, RenderOutput
from goae.models.encoder import GOAEncoder
from goae.models.goae import GOAE
from goae.align import load_image
from goae.camera import camera_label_degrees, orbit_cameras, yaw_pitch_from_label
from goae.domains import DEFAULT_DOMAIN, Domain, get_domain, pivot_of
from goae.edit import DIRECTIONS_FOLDER
from goae.io import atomic_dir
from goae.paths import default_weights_folder
from goae.presets import RANDOM_WEIGHTS, preset
from goae.runtime import tf32
from goae.weights.cards import Provenance, write_model_card
from goae.weights.checks import check_finite, check_pipeline_folder
from goae.weights.errors import WeightsNotFoundError
from goae.weights.resolve import HOW_TO_GET_WEIGHTS, resolve_pretrained

_REDUCED_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}

ImageInput = Image.Image | np.ndarray | torch.Tensor | str | os.PathLike | Sequence[Image.Image | np.ndarray | str]
Progress = Callable[[float, str], Any]  # progress(fraction of the call done, description of the stage starting)

# The stages of one call, as `progress` and the progress bar report them: (name, description, share of the
# time). Shares are rough CPU proportions; "align" runs only when the pipeline aligns the photos itself.
STAGES = (("align", "Aligning the face", 0.10), ("encode", "Encoding (Swin-V2 → W+)", 0.15),
          ("render_w", "Rendering the first reconstruction", 0.20), ("refine", "Refining (AFA)", 0.15),
          ("fuse", "Refined tri-planes", 0.10), ("render", "Final render and occlusion-aware mix", 0.30))
CACHE_KEYS = ("ws", "planes", "camera")  # what a kept result needs; the edit features are optional


@dataclass
class GOAEOutput(BaseOutput):
    """Result of one inversion (batched along dim 0).

    ws:          [B,14,w_dim] W+ codes in the canonical latent space (w_avg included).
    planes:      [B,96,256,256] occlusion-aware mixed tri-planes: the cache for every other view.
    image:       [B,3,512,512] the reconstruction, in [-1, 1]: the refined (F) tri-planes rendered at the input
                 camera, as the official forward returns it and its infer.py saves it (an edit: the mixed
                 tri-planes', as the official Net.edit renders it). Other views render `planes`.
    image_raw:   [B,3,128,128] neural-rendering RGB before super-resolution, in [-1, 1].
    image_depth: [B,1,128,128] ray depth (distance along the ray from the camera, world units).
    camera:      [B,25] the EG3D camera label the photo was inverted with.
    mask:        [B,1,256,256] occlusion-aware mix weight of the refined features (1 = seen by the input camera).
    edit_features: what `edit` needs to refine an edited code the way the paper does: the generator
                 features at the AFA level (x_rec) and their AFA-aligned version (adain_rec).
    intermediates: with `return_intermediates=True`, every boundary of the method (else None).
    images:      the reconstructions as `output_type` asked ('pil' list, 'np', 'pt'; None for None).
    yaw_pitch:   [(yaw, pitch)] degrees from frontal of each `camera` (the domain's label convention).
    When the pipeline aligned the photos itself (`pipe(photo)`, no camera given):
    aligned:     the aligned 512x512 crops that were inverted (PIL images).
    face_box:    [(l, t, r, b)] the region of each source photo that its crop covers (source pixels).
    alignment:   the aligner's full records (goae.align.AlignedFace / AlignedCat: face_index, faces found,
                 landmarks or the cat's box, photo size), e.g. for goae.export.save_inversion.

    `to_cache()` / `GOAEOutput.from_cache(entry, device)` keep a result as compact CPU tensors and bring
    it back as what render_view, preview_view and edit read.
    """

    ws: torch.Tensor
    planes: torch.Tensor
    image: torch.Tensor
    image_raw: torch.Tensor
    image_depth: torch.Tensor
    camera: torch.Tensor
    mask: torch.Tensor
    edit_features: dict[str, torch.Tensor]
    intermediates: dict[str, torch.Tensor] | None = None
    images: list[Image.Image] | np.ndarray | torch.Tensor | None = None
    yaw_pitch: list[tuple[float, float]] | None = None
    aligned: list[Image.Image] | None = None
    face_box: list[tuple[float, float, float, float]] | None = None
    alignment: list | None = None

    def to_cache(self, edit_features: bool = True) -> dict[str, torch.Tensor]:
        """What views, videos, meshes and edits need of this result, as contiguous CPU tensors that own their
        memory (~30 MB per photo at full size, mostly the tri-planes; safetensors can store them):
        ws, planes, camera, and with edit_features the x_rec / adain_rec that `edit` needs."""
        keep = {k: getattr(self, k) for k in CACHE_KEYS}
        if edit_features:
            keep.update(self.edit_features or {})
        return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in keep.items()}

    @classmethod
    def from_cache(cls, entry: dict[str, torch.Tensor], device: str | torch.device | None = None) -> "GOAEOutput":
        """A `to_cache()` entry (on `device`, default where it is) as the GOAEOutput that render_view,
        preview_view and edit read; the images and mask are not kept, so they are None."""
        missing = [k for k in CACHE_KEYS if not isinstance(entry.get(k) if isinstance(entry, dict) else None,
                                                          torch.Tensor)]
        if missing:
            raise ValueError(f"not a GOAEOutput cache entry: no tensor {', '.join(missing)} (make entries with "
                             "result.to_cache())")
        t = {k: v.to(device) if device is not None else v for k, v in entry.items() if isinstance(v, torch.Tensor)}
        n = t["ws"].shape[0]
        if t["ws"].ndim != 3 or t["planes"].ndim != 4 or tuple(t["camera"].shape) != (n, 25) \
                or t["planes"].shape[0] != n:
            raise ValueError(f"cache entry shapes do not fit together: ws {tuple(t['ws'].shape)}, planes "
                             f"{tuple(t['planes'].shape)}, camera {tuple(t['camera'].shape)} (want [B,num_ws,w], "
                             "[B,96,H,W], [B,25])")
        return cls(ws=t["ws"], planes=t["planes"], image=None, image_raw=None, image_depth=None, camera=t["camera"],
                   mask=None, edit_features={k: t[k] for k in ("x_rec", "adain_rec") if k in t})


@dataclass
class GOAEViewOutput(RenderOutput):
    """A render of cached tri-planes (`render_view`): the RenderOutput fields, plus `images` in the
    requested output_type."""

    images: list[Image.Image] | np.ndarray | torch.Tensor | None = None


OUTPUT_TYPES = ("pil", "np", "pt", None)


def to_output_type(image: torch.Tensor, output_type: str | None):
    """Images [B,3,H,W] in [-1, 1] -> 'pil' (list of RGB images), 'np' (float32 [B,H,W,3] in [0, 1]),
    'pt' (float32 [B,3,H,W] in [0, 1]) or None (nothing)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if output_type is None:
        return None
    x = ((image.detach().float() + 1) / 2).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


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


def _photo_list(image: Any) -> list:
    """The photos of one call as a list: a list or tuple, a [B,...] array or tensor, or one photo."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("no images given (an empty list)")
        return list(image)
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4:
        if image.shape[0] == 0:
            raise ValueError("no images given (a batch of 0)")
        return list(image)
    return [image]


_PHOTO_TYPES = (Image.Image, np.ndarray, torch.Tensor, str, os.PathLike, bytes)


def _check_photo(photo: Any, where: str) -> Any:
    """One photo as the aligner reads it: a tensor [3,H,W] (uint8, or float in [-1, 1] as everywhere in the
    pipeline) becomes an HxWx3 uint8 array; every other accepted type goes as it is."""
    if not isinstance(photo, _PHOTO_TYPES):
        raise TypeError(f"{where}is of type {type(photo).__name__}: pass a PIL image, a numpy array (HxWx3), a torch "
                        "tensor ([3,H,W] or [B,3,H,W], uint8 or float in [-1, 1]), a file path, or a list of these")
    if not isinstance(photo, torch.Tensor):
        return photo
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"{where}is a tensor of shape {tuple(photo.shape)}: image tensors are [3,H,W] or [B,3,H,W]")
    if photo.is_floating_point():
        lo, hi = float(photo.min()), float(photo.max())
        if not (-1.001 <= lo and hi <= 1.001):  # NaN fails too
            raise ValueError(f"{where}is a float tensor with values in [{lo:.4g}, {hi:.4g}]: float images are in "
                             "[-1, 1] here (uint8 tensors are read as 0..255)")
        photo = ((photo.float() + 1) * 127.5).round().clamp(0, 255)
    elif photo.dtype != torch.uint8:
        raise TypeError(f"{where}is a {photo.dtype} tensor: pass uint8 (0..255) or float in [-1, 1]")
    return photo.to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _in_batch(error: ValueError, i: int, n: int) -> ValueError:
    """The same error, saying which photo of a batch it is about."""
    try:
        return type(error)(f"photo {i + 1} of {n}: {error}")
    except TypeError:  # an error type that needs more than a message
        return error


class _StageReport:
    """Reports the stages of one call, as each starts, to `progress(fraction, description)` and to the
    pipeline's progress bar (diffusers' `progress_bar`, off unless `set_progress_bar_config(disable=False)`)."""

    def __init__(self, pipe: "GOAEPipeline", names: Sequence[str], progress: Progress | None):
        self.stages = [s for s in STAGES if s[0] in names]
        self.progress, self.started = progress, 0
        self.bar = pipe.progress_bar(total=len(self.stages))

    def __call__(self, name: str) -> None:
        names = [s[0] for s in self.stages]
        i = names.index(name)
        if self.started:
            self.bar.update(1)
        self.started += 1
        done = sum(s[2] for s in self.stages[:i]) / sum(s[2] for s in self.stages)
        self.bar.set_description(self.stages[i][1], refresh=False)
        if self.progress is not None:
            self.progress(done, self.stages[i][1])

    def close(self) -> None:
        if self.started:
            self.bar.update(1)
        self.bar.close()


# diffusers' DiffusionPipeline methods that cannot work on GOAE: each is replaced by one line saying why, so that
# help(GOAEPipeline) shows goae's interface rather than pages about UNets and offloading.
_NO_ATTENTION_SLICING = "GOAE has no UNet attention to slice (the Swin-V2 encoder attends within small windows)"
_NO_XFORMERS = "GOAE's Swin-V2 window attention does not use xformers; for speed see enable_fast_path"
_NO_OFFLOAD = ("the generator runs through methods other than forward, which diffusers' offload hooks "
               "(model_cpu_offload_seq) do not follow; keep the pipeline on one device with pipe.to(device)")
NOT_IN_GOAE = {
    "enable_attention_slicing": _NO_ATTENTION_SLICING, "disable_attention_slicing": _NO_ATTENTION_SLICING,
    "set_attention_slice": _NO_ATTENTION_SLICING, "enable_xformers_memory_efficient_attention": _NO_XFORMERS,
    "disable_xformers_memory_efficient_attention": _NO_XFORMERS, "set_use_memory_efficient_attention_xformers": _NO_XFORMERS,
    "enable_model_cpu_offload": _NO_OFFLOAD, "enable_sequential_cpu_offload": _NO_OFFLOAD,
    "enable_group_offload": _NO_OFFLOAD,
    "from_pipe": "goae has one pipeline class: build another with GOAEPipeline(generator=..., encoder=..., afa=...)",
    "download": ("use GOAEPipeline.from_pretrained(repo_id), which checks the folder before building anything "
                 "(or `hf download repo_id` to fetch it)"),
    "register_for_auto_class": "goae pipelines load with their own code (GOAEPipeline.from_pretrained), not remote code",
}


def _not_in_goae(name: str, why: str):
    def method(*args, **kwargs):
        raise NotImplementedError(f"GOAEPipeline.{name} is not available: {why}.")

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Not in goae: {why}."
    return method


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub could not be reached or refused a call; the message says what to do."""


@contextlib.contextmanager
def _hub_errors(what: str, repo_id: str):
    """Network failures and Hub refusals of a Hub call -> one HubUnavailableError line (not a traceback of
    httpx internals)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    later = (f"or save it now with pipe.save_pretrained(folder) and upload it later with "
             f"`hf upload {repo_id} folder`")
    # huggingface_hub's HTTP client is httpx (or its successor httpx2); requests' errors are OSErrors.
    transport = tuple(m.TransportError for m in (sys.modules.get("httpx"), sys.modules.get("httpx2")) if m)
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubUnavailableError(f"{what}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, "
                                  + later) from None
    except HfHubHTTPError as e:  # an OSError too: before the network errors
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            why = f"the Hub refused the token (HTTP {status}); log in with `hf auth login` or pass token=, then try again"
        else:
            why = f"the Hub at {constants.ENDPOINT} answered HTTP {status}; try again later"
        raise HubUnavailableError(f"{what}: {why}, {later}") from None
    except (*transport, OSError) as e:
        if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
            raise  # local files, not the network
        raise HubUnavailableError(f"{what}: the Hugging Face Hub at {constants.ENDPOINT} cannot be reached "
                                  f"({type(e).__name__}); check the network (or HF_ENDPOINT), then try again, "
                                  + later) from None


class DiffusersBase(DiffusionPipeline):
    """diffusers' DiffusionPipeline as goae uses it (loading, saving, devices, configs); its methods that
    cannot work on GOAE raise NotImplementedError with one line that says why."""

    def __dir__(self):
        return [n for n in super().__dir__() if n not in NOT_IN_GOAE]


for _name, _why in NOT_IN_GOAE.items():
    setattr(DiffusersBase, _name, _not_in_goae(_name, _why))


class GOAEPipeline(DiffusersBase):
    """GOAE inversion pipeline: a photo -> its 3D head (refined EG3D tri-planes), renderable from any view.

        pipe = GOAEPipeline.from_pretrained(folder_or_repo_id)     # or from_preset('ffhq'), load_pipeline(...)
        out = pipe(Image.open("examples/astronaut.png"))           # aligns, estimates the camera, inverts
        out.images[0], out.aligned[0], out.yaw_pitch[0], out.face_box[0]
        pipe.render_view(out, pipe.view_camera(30, 0)).images[0]   # another view from the kept tri-planes

    goae's interface:
      __call__(image, camera=None, ...)   invert photos (aligned here) or prepared crops with their cameras;
                                          progress=callable(fraction, description) reports each stage
      render_view / preview_view          render the kept tri-planes at other cameras (full / fast preview)
      edit(result, offset)                a W+ edit, refined the way the paper does (goae.edit for directions)
      view_camera, orbit_cameras          EG3D camera labels of views around the head (`orbit_pivot`)
      domain                              what the weights invert (goae.domains: human / cat) and its aligner
      enable_fast_path / disable_fast_path / to(dtype)   bf16 / fp16 / compiled inference
      from_pretrained, from_preset, from_random, save_pretrained, push_to_hub   weights and folders
      preprocess, camera_tensor, encode, method          the steps, for training and inspection
    GOAEOutput.to_cache() / GOAEOutput.from_cache(entry) keep a result and bring it back.
    Inherited diffusers methods that cannot work here (attention slicing, xformers, offloading, from_pipe,
    download) raise NotImplementedError saying why.
    """

    # No model_cpu_offload_seq: the generator runs through methods other than forward, so diffusers'
    # offload hooks would not move it (enable_model_cpu_offload says so and stops).
    weights_label: str = "unlabelled"  # where the weights came from (a folder, a repo id, or "random (seed N)")
    directions_dir: Path | None = None  # edit directions that travel with the weights (folder/directions)

    def __init__(self, generator: EG3DGenerator, encoder: GOAEncoder, afa: AFA,
                 afa_resolution: int = 32, mask_blur_sigma: float = 1.5, mask_threshold: float = 0.35,
                 deterministic: bool = True, domain: str = DEFAULT_DOMAIN):
        super().__init__()
        domain = get_domain(domain).name  # a clear error for an unknown name; None -> human
        self.register_modules(generator=generator, encoder=encoder, afa=afa)
        # deterministic=True: no stratified jitter and det. importance sampling, so one photo always
        # gives the same result (the official code jitters; the difference is sampling noise).
        # domain: what the weights invert ('human', 'cat'), so the CLI and app pick the aligner, the
        # cameras and the edit directions that belong to it (goae.domains).
        self.register_to_config(afa_resolution=afa_resolution, mask_blur_sigma=mask_blur_sigma,
                                mask_threshold=mask_threshold, deterministic=deterministic, domain=domain)
        self.set_progress_bar_config(disable=True)  # quiet unless asked: set_progress_bar_config(disable=False)

    @classmethod
    def from_random(cls, seed: int = 0, generator: EG3DGenerator | None = None, encoder: GOAEncoder | None = None,
                    afa: AFA | None = None, **config) -> "GOAEPipeline":
        """The released architecture (EG3D FFHQ-512, Swin-V2 encoder, AFA), or the components given, on
        seeded random weights.

        For trying and testing goae where no checkpoint can be downloaded: the code paths, shapes and
        costs are the real ones, the pictures are not faces. `w_avg` is set the way EG3D tracks it,
        as the mean mapping output (here over 512 seeded z at the canonical camera).
        """
        torch.manual_seed(seed)
        if generator is None:  # the released generator of the domain
            p = preset(get_domain(config.get("domain")).preset)
            generator = EG3DGenerator.from_official_kwargs(p.generator, p.neural_rendering_resolution)
        encoder = encoder or GOAEncoder()
        afa = afa or AFA()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(512, generator.z_dim, generator=g)
            c = get_domain(config.get("domain")).input_camera(0.0, 0.0).expand(512, 25)
            w = generator.mapping(z, c)[:, 0]
            generator.w_avg.copy_(w.mean(0))
        pipe = cls(generator=generator.eval(), encoder=encoder.eval(), afa=afa.eval(), **config)
        pipe.weights_label = f"random (seed {seed})"
        return pipe

    @classmethod
    def from_preset(cls, name: str = "ffhq", seed: int = 0) -> "GOAEPipeline":
        """A named architecture (goae.presets: 'ffhq' / 'afhq', the released ones, or 'small' / 'small-cat')
        on seeded random weights, with the preset's domain."""
        p = preset(name)
        torch.manual_seed(seed)  # module initialisation below draws from the global generator
        generator = EG3DGenerator.from_official_kwargs(p.generator, p.neural_rendering_resolution, **p.generator_extra)
        pipe = cls.from_random(seed=seed, generator=generator, encoder=GOAEncoder(**p.encoder), afa=AFA(**p.afa),
                               domain=p.domain)
        pipe.weights_label = f"random {name} (seed {seed})"
        return pipe

    # ----------------------------------------------------------------------------- loading, saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, torch_dtype: torch.dtype | None = None,
                        dtype: torch.dtype | None = None, show_progress: bool = False, **kwargs) -> "GOAEPipeline":
        """A pipeline folder or Hub repo id (diffusers' loader), checked before any module is built.

        torch_dtype / dtype: torch.bfloat16 or torch.float16 run the pipeline at that precision (the
        fast path: weights stay float32 and the numerically fragile steps fp32, outputs float32, see
        goae.fast); float32 / None is the parity path. fp16 needs CUDA: on a CPU use bfloat16, or load,
        move to the GPU and then `pipe.to(torch.float16)`. show_progress: diffusers' loading bar.
        """
        from diffusers.utils import is_accelerate_available, logging as dlogging

        want = dtype if dtype is not None else torch_dtype
        if want is not None and want != torch.float32 and want not in _REDUCED_DTYPES:
            raise ValueError(f"torch_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {want}")
        folder = resolve_pretrained(pretrained_model_name_or_path, revision=kwargs.pop("revision", None))
        check_pipeline_folder(folder)
        # Without accelerate diffusers would warn and fall back to this anyway.
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        bars = dlogging.is_progress_bar_enabled()
        dlogging.enable_progress_bar() if show_progress else dlogging.disable_progress_bar()
        try:
            pipe = super().from_pretrained(str(folder), **kwargs)
        finally:
            dlogging.enable_progress_bar() if bars else dlogging.disable_progress_bar()
        for name in ("generator", "encoder", "afa"):  # headers were checked; values only exist now
            check_finite(getattr(pipe, name), name)
        pipe.set_progress_bar_config(disable=True)
        pipe.weights_label = str(pretrained_model_name_or_path)
        pipe.provenance = Provenance(note=f"re-saved from {pretrained_model_name_or_path}")
        if (folder / DIRECTIONS_FOLDER).is_dir():
            pipe.directions_dir = folder / DIRECTIONS_FOLDER
        if want is not None:
            pipe.to(want)
        return pipe

    @property
    def provenance(self) -> Provenance:
        """What the weights were made from (written into the model card by save_pretrained)."""
        return getattr(self, "_provenance", None) or Provenance(note=f"weights: {self.weights_label}")

    @provenance.setter
    def provenance(self, value: Provenance) -> None:
        self._provenance = value

    def to(self, *args, **kwargs) -> "GOAEPipeline":
        """diffusers' `to(device)`; a dtype (bf16 / fp16) switches the fast path on at that precision and
        float32 switches it off, instead of casting the weights (see from_pretrained)."""
        args = list(args)
        dtype = kwargs.pop("dtype", None)
        for a in [a for a in args if isinstance(a, torch.dtype)]:
            dtype = a
            args.remove(a)
        if args or kwargs:
            super().to(*args, **kwargs)  # the device first: fp16 is checked against where it will run
        if dtype is not None:
            if dtype == torch.float32:
                self.disable_fast_path()
            elif dtype == torch.float16 and self.device.type != "cuda":
                raise fastpath.FastPathError("torch.float16 needs CUDA (CPUs have no fast fp16): on a CPU use "
                                             "torch.bfloat16; for a GPU, move the pipeline there first "
                                             "(pipe.to('cuda', torch.float16))")
            elif dtype in _REDUCED_DTYPES:
                fast = self.fast_path
                self.enable_fast_path(_REDUCED_DTYPES[dtype], channels_last=fast.channels_last if fast else True,
                                      compile=fast.compile_backend if fast and fast.compile else False,
                                      keep_fp32_weights=fast.fp32_weights if fast else True)
            else:
                raise ValueError(f"GOAEPipeline runs in float32, bfloat16 or float16, not {dtype}")
        return self

    def save_pretrained(self, save_directory: str | Path, provenance: Provenance | None = None,
                        repo_hint: str | None = None, **kwargs) -> Path:
        """Write the pipeline folder atomically: model_index.json, one folder per component, the model
        card (README.md, with the weights' licence) and the edit directions that came with the weights.
        An existing folder is replaced only if it is a goae pipeline folder (or empty)."""
        out = Path(save_directory)
        if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
            raise FileExistsError(f"{out} exists and is not a pipeline folder: refusing to replace what it holds")
        if kwargs.pop("push_to_hub", False):
            raise ValueError("use pipe.push_to_hub(repo_id): it uploads the folder with its model card")
        reduced = fastpath.stored_weights_dtype(self)
        if reduced != torch.float32:
            raise fastpath.FastPathError(f"the encoder and AFA weights are stored in {fastpath.dtype_name(reduced)} "
                                         "(enable_fast_path(keep_fp32_weights=False)): saving them would lose "
                                         "precision; save the pipeline as loaded, before the fast path")
        with atomic_dir(out, overwrite=True) as tmp:
            super().save_pretrained(str(tmp), safe_serialization=True, **kwargs)
            if self.directions_dir is not None and self.directions_dir.is_dir():
                shutil.copytree(self.directions_dir, tmp / DIRECTIONS_FOLDER)
            card = dataclasses.replace(provenance or self.provenance, domain=self.domain.name)
            write_model_card(tmp, "pipeline", card, repo_hint=repo_hint or out.name)
        return out

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, **kwargs):
        """Upload the saved folder (weights, model card, directions) to a Hub model repo. Without a network
        (or with the Hub refusing) raises HubUnavailableError, one line saying what to do."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with _hub_errors(f"push_to_hub({repo_id!r})", repo_id):
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            with tempfile.TemporaryDirectory(prefix="goae-push-") as tmp:
                folder = self.save_pretrained(Path(tmp) / "pipeline", repo_hint=repo_id)
                return api.upload_folder(repo_id=repo_id, folder_path=str(folder), create_pr=create_pr,
                                         commit_message=commit_message or "Upload goae pipeline", **kwargs)

    # ----------------------------------------------------------------------------- fast paths
    @property
    def fast_path(self) -> fastpath.FastPath | None:
        """The active `goae.fast.FastPath`, or None on the plain fp32 (parity) path."""
        return getattr(self, "_fast_path", None)

    def enable_fast_path(self, precision: str = "auto", channels_last: bool = True,
                         compile: bool | str = False, keep_fp32_weights: bool = True) -> "GOAEPipeline":
        """Faster inference for `__call__`, `render_view` and `edit` (outputs stay float32).

        precision: 'bf16' / 'fp16' (CUDA) run the networks under torch.autocast, with the fragile
        steps kept in fp32 (see goae.fast); 'auto' = bf16 where the device has fast bf16, else fp32.
        channels_last: NHWC convolutions where they are faster (CPUs); GPUs keep NCHW. False: NCHW everywhere.
        compile: torch.compile the modules the forward runs (goae.fast.compiled_modules: encoder, synthesis
        blocks, renderer, super-resolution, AFA); True = inductor (needs a C++ compiler on a CPU; the first
        call of each shape then takes minutes), or a torch.compile backend name. On CUDA a fast path lets
        cuDNN convolutions use TF32. keep_fp32_weights=False: the encoder's and AFA's weights that only
        run in the reduced precision are stored in it (outputs identical, ~0.2 GB less at full size);
        the fp32 path then needs the pipeline loaded again (disable_fast_path and save_pretrained refuse).
        Returns self.
        """
        backend = compile if isinstance(compile, str) else "inductor"
        precision = fastpath.resolve_precision(precision, self.device)
        fast = fastpath.FastPath(precision=precision, channels_last=bool(channels_last), compile=bool(compile),
                                 device_type=self.device.type, compile_backend=backend,
                                 fp32_weights=bool(keep_fp32_weights) or precision == "fp32")
        fastpath.store_weights(self, fast)
        fastpath.apply(self, fast)
        self._fast_path = fast
        return self

    def disable_fast_path(self) -> "GOAEPipeline":
        """Back to the plain fp32 path (the parity path). Returns self. FastPathError where
        enable_fast_path(keep_fp32_weights=False) dropped the fp32 weights."""
        fastpath.store_weights(self, None)
        fastpath.reset(self)
        self._fast_path = None
        return self

    def _active_fast_path(self) -> fastpath.FastPath | None:
        fast = self.fast_path
        if fast is not None and fast.device_type != self.device.type:  # moved with .to() after enable_fast_path
            fast = self._fast_path = dataclasses.replace(fast, device_type=self.device.type)
        return fast

    def _autocast(self):
        fast = self._active_fast_path()
        return contextlib.nullcontext() if fast is None else fast.autocast()

    def _backbone_autocast(self):
        fast = self._active_fast_path()
        return contextlib.nullcontext() if fast is None else fast.backbone_autocast()

    def _tf32(self):
        """The TF32 policy (goae.fast.FastPath.tf32_convolutions) for one call: off on the parity path."""
        fast = self._active_fast_path()
        return tf32(matmul=False, convolutions=fast is not None and fast.tf32_convolutions)

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
                raise ValueError(f"with camera= the images are aligned 512x512 crops, got {im.size}: leave camera "
                                 "out and pipe(photo) aligns the photo and estimates its camera")
        u8_512 = np.stack([np.asarray(im) for im in pil])
        u8_enc = np.stack([np.asarray(im.resize((r, r), Image.BICUBIC)) for im in pil])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return to_t(u8_enc).to(self.device), to_t(u8_512).to(self.device)

    def camera_tensor(self, camera: Any, batch: int) -> torch.Tensor:
        """EG3D camera label(s) ([25], [1,25] or [batch,25], array or tensor) -> [batch, 25] on the device."""
        what = ("camera= takes EG3D camera labels, 25 numbers per image ([25], [1,25] or [B,25]: cam2world 4x4 + "
                "normalised intrinsics 3x3, e.g. pipe.domain.input_camera(yaw, pitch)); leave it out to align the "
                "photo and estimate its camera")
        try:
            c = camera if isinstance(camera, torch.Tensor) else torch.as_tensor(np.asarray(camera, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}; got {type(camera).__name__} ({e})") from None
        if c.numel() == 0 or c.numel() % 25 or (c.ndim > 1 and c.shape[-1] != 25):
            raise ValueError(f"{what}; got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError(f"{what}; got non-finite values")
        c = c.float().reshape(-1, 25).to(self.device)
        if c.shape[0] == 1 and batch > 1:
            c = c.expand(batch, 25)
        if c.shape[0] != batch:
            raise ValueError(f"{c.shape[0]} cameras given for {batch} images")
        return c

    @property
    def method(self) -> GOAE:
        """The GOAE forward (goae.models.goae) over this pipeline's components, at its precision."""
        cfg = self.config
        return GOAE(self.generator, self.encoder, self.afa, afa_resolution=cfg.afa_resolution,
                    mask_blur_sigma=cfg.mask_blur_sigma, mask_threshold=cfg.mask_threshold,
                    deterministic=cfg.deterministic, autocast=self._autocast,
                    backbone_autocast=self._backbone_autocast)

    # ----------------------------------------------------------------------------- domain and cameras
    @property
    def domain(self) -> Domain:
        """What these weights invert (goae.domains): its aligner, input camera and edit directions."""
        return get_domain(getattr(self.config, "domain", None))

    @property
    def orbit_pivot(self) -> tuple[float, float, float]:
        """The point new views turn around: the generator's avg_camera_pivot ((0, 0, 0.2) for FFHQ,
        (0, 0, -0.06) for AFHQ cats)."""
        return pivot_of(self.generator, self.domain)

    def view_camera(self, yaw_degrees, pitch_degrees=0.0) -> torch.Tensor:
        """[N, 25] labels of views at (yaw, pitch) degrees from frontal, turning around `orbit_pivot`."""
        return camera_label_degrees(yaw_degrees, pitch_degrees, lookat=self.orbit_pivot)

    def orbit_cameras(self, n_frames: int, **kwargs) -> torch.Tensor:
        """[n_frames, 25] labels of the turntable orbit (goae.camera.orbit_cameras) around `orbit_pivot`."""
        return orbit_cameras(n_frames, lookat=self.orbit_pivot, **kwargs)

    # ----------------------------------------------------------------------------- inversion
    def encode(self, x_enc: torch.Tensor) -> torch.Tensor:
        """Encoder pass into the canonical latent space: W+ offsets from w_avg, plus w_avg."""
        return self.method.encode(x_enc)[0]

    @torch.no_grad()
    def __call__(self, image: ImageInput, camera: Any = None, *, aligned: bool | None = None,
                 face_index: int | Sequence[int | None] | None = None, box: Sequence[float] | None = None,
                 yaw: float | None = None, pitch: float | None = None, progress: Progress | None = None,
                 return_intermediates: bool = False, output_type: str | None = "pil",
                 return_dict: bool = True) -> GOAEOutput | tuple:
        """Invert photo(s): a PIL image, a numpy array, a torch tensor ([3,H,W] / [B,3,H,W], float in [-1, 1] or
        uint8), a file path, or a list of these (a batch).

        Without `camera`, each photo is aligned with the pipeline's domain (`pipe.domain.align`: the face is
        found and cropped, its camera estimated; the AFHQ camera for cats) and the result also holds
        `aligned`, `face_box` and `alignment`. face_index picks a face (0-based, left to right; one per photo
        in a list); None takes the largest, as the CLI and the app do. box / yaw / pitch: for cats (the head's
        box in source pixels when the detector misses; the camera in degrees, not estimated for cats).
        With `camera` (EG3D labels, [25] or [B,25]), the images are taken as aligned 512x512 crops
        (prepared crops and datasets); aligned=True says so too and needs the camera.

        progress: called as each stage starts with (fraction of the call done, description): a
        gradio.Progress fits as it is; stage names and shares are goae.pipeline.STAGES. The pipeline's
        progress bar (`set_progress_bar_config(disable=False)`) shows the same stages.
        `images` holds the reconstructions as output_type ('pil', 'np', 'pt' in [0, 1], or None);
        `image` etc. are the [-1, 1] tensors. return_dict=False: (images, ws, planes), the cache that
        `render_view(None, camera, ws=ws, planes=planes)` renders. With `return_intermediates`,
        `intermediates` holds every boundary of the method (W tri-planes and render, AFA output, F
        tri-planes, the mask stages) for inspection and parity tests.
        """
        if output_type not in OUTPUT_TYPES:  # before any work
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if aligned is None:
            aligned = camera is not None
        if aligned and camera is None:
            raise ValueError("aligned=True: give the crops' camera too (camera=[B,25] EG3D labels, e.g. "
                             "pipe.domain.input_camera(yaw, pitch)), or leave aligned out to align the photo and "
                             "estimate its camera")
        if not aligned and camera is not None:
            raise ValueError("aligned=False with a camera: camera= is for aligned crops; leave camera out to align "
                             "the photo and estimate its camera")
        given = [n for n, v in (("face_index", face_index), ("box", box), ("yaw", yaw), ("pitch", pitch))
                 if v is not None]
        if aligned and given:
            raise ValueError(f"{', '.join(given)}: only when the pipeline aligns the photo; with camera= the "
                             "images are already aligned crops")
        stages = [s[0] for s in STAGES if aligned is False or s[0] != "align"]
        report = _StageReport(self, stages, progress)
        try:
            alignment = None
            if aligned:
                x_enc, x_512 = self.preprocess(image if isinstance(image, torch.Tensor) else self._crops(image))
            else:
                report("align")
                alignment = self._align(image, face_index, box=box, yaw=yaw, pitch=pitch)
                x_enc, x_512 = self.preprocess([a.image for a in alignment])
                camera = np.stack([np.asarray(a.camera, dtype=np.float32) for a in alignment])
            c = self.camera_tensor(camera, x_enc.shape[0])
            with self._tf32():
                fwd = self.method(x_512, x_enc, c, intermediates=return_intermediates, on_stage=report)
        finally:
            report.close()
        inter = None
        if return_intermediates:
            inter = {"x_enc": x_enc, "img_rec": fwd.img_rec, "planes_w": fwd.planes_w, "planes_f": fwd.planes_f,
                     "gamma": fwd.afa["gamma"], "beta": fwd.afa["beta"], "afa_features": fwd.afa["features"],
                     **{f"render_w.{k}": v for k, v in fwd.render_w.items()},
                     **{f"mask.{k}": v for k, v in fwd.mask.items()}}
        yaw_r, pitch_r = yaw_pitch_from_label(c.detach().cpu(), lookat=self.domain.label_lookat)
        out = GOAEOutput(ws=fwd.ws, planes=fwd.planes, image=fwd.final.image, image_raw=fwd.final.image_raw,
                         image_depth=fwd.final.image_depth, camera=c, mask=fwd.mask["mask"],
                         edit_features={"x_rec": fwd.x_rec, "adain_rec": fwd.afa["feature_map_adain"]},
                         intermediates=inter, images=to_output_type(fwd.final.image, output_type),
                         yaw_pitch=[(float(np.degrees(y)), float(np.degrees(p))) for y, p in zip(yaw_r, pitch_r)],
                         aligned=None if alignment is None else [a.image for a in alignment],
                         face_box=None if alignment is None else [tuple(float(v) for v in a.box) for a in alignment],
                         alignment=alignment)
        return out if return_dict else (out.images, out.ws, out.planes)

    def _crops(self, image: ImageInput) -> list:
        """Aligned crops given as photos: each as preprocess reads it (paths decoded and checked)."""
        photos = _photo_list(image)
        out = []
        for i, im in enumerate(photos):
            im = _check_photo(im, f"image {i + 1} of {len(photos)} " if len(photos) > 1 else "the image ")
            out.append(load_image(im) if isinstance(im, (str, os.PathLike, bytes)) else im)
        return out

    def _align(self, image: ImageInput, face_index, **options) -> list:
        """Each photo aligned by the domain's aligner (its errors say what is wrong and what to do)."""
        photos = _photo_list(image)
        n = len(photos)
        if isinstance(face_index, (list, tuple)):
            if len(face_index) != n:
                raise ValueError(f"face_index has {len(face_index)} entries for {n} photos: give one per photo "
                                 "(None for the largest face) or a single index")
            indices = list(face_index)
        else:
            indices = [face_index] * n
        options = {k: v for k, v in options.items() if v is not None}
        out = []
        for i, (photo, index) in enumerate(zip(photos, indices)):
            try:
                photo = _check_photo(photo, f"photo {i + 1} of {n} " if n > 1 else "the photo ")
                out.append(self.domain.align(photo, face_index=index, **options))
            except ValueError as e:  # AlignError, DomainError, a bad box: all ValueErrors
                if n == 1:
                    raise
                raise _in_batch(e, i, n) from e
        return out

    @torch.no_grad()
    def render_view(self, result: GOAEOutput | None, camera: Any, ws: torch.Tensor | None = None,
                    planes: torch.Tensor | None = None, superresolution: bool = True,
                    neural_rendering_resolution: int | None = None, output_type: str | None = "pil",
                    return_dict: bool = True) -> GOAEViewOutput | tuple:
        """Render cached tri-planes at other camera(s) without re-encoding.

        The cache is `result` (a GOAEOutput) or `ws` + `planes`. `images` as in `__call__` (of the
        super-resolved image; of image_raw without super-resolution); return_dict=False: (images,).

        `camera` is [25] / [B,25] (one per inversion) or [V,25] with a single inversion (V views of it).
        `neural_rendering_resolution` (e.g. 64): explicit preview mode, fewer rays (the volume rendering
        dominates on a CPU), the super-resolution still outputs full size. None = the model's own (128).
        """
        if result is None and (planes is None or ws is None):
            raise ValueError("render_view needs a GOAEOutput or both ws and planes")
        planes = result.planes if planes is None else planes
        ws = result.ws if ws is None else ws
        c = torch.as_tensor(camera, dtype=torch.float32).reshape(-1, 25).to(planes.device) \
            if not isinstance(camera, torch.Tensor) else camera.float().reshape(-1, 25).to(planes.device)
        if planes.shape[0] == 1 and c.shape[0] > 1:
            planes = planes.expand(c.shape[0], *planes.shape[1:])
            ws = ws.expand(c.shape[0], *ws.shape[1:])
        elif c.shape[0] == 1 and planes.shape[0] > 1:
            c = c.expand(planes.shape[0], 25)
        with self._tf32():
            view = self.method.render(planes, ws, c, superresolution=superresolution,
                                      neural_rendering_resolution=neural_rendering_resolution)
        images = to_output_type(view.image if superresolution else view.image_raw, output_type)
        out = GOAEViewOutput(**view, images=images)
        return out if return_dict else (out.images,)

    @torch.no_grad()
    def preview_view(self, result: GOAEOutput | None, camera: Any, ws: torch.Tensor | None = None,
                     planes: torch.Tensor | None = None, resolution: int = 64, output_type: str | None = "pil",
                     return_dict: bool = True) -> GOAEViewOutput | tuple:
        """A fast approximate view for interactive use (a slider being dragged): the neural rendering at
        resolution^2 without super-resolution, upsampled (bilinear) to the output size. `image` and
        `image_depth` are at the output size; the full `render_view` follows when the slider stops."""
        view = self.render_view(result, camera, ws=ws, planes=planes, superresolution=False,
                                neural_rendering_resolution=resolution, output_type=None)
        size = (self.generator.img_resolution,) * 2
        image = F.interpolate(view.image_raw, size=size, mode="bilinear", align_corners=False)
        depth = F.interpolate(view.image_depth, size=size, mode="bilinear", align_corners=False)
        out = GOAEViewOutput(**{**view, "image_depth": depth}, image=image, images=to_output_type(image, output_type))
        return out if return_dict else (out.images,)

    @torch.no_grad()
    def edit(self, result: GOAEOutput, offset: torch.Tensor, output_type: str | None = "pil",
             return_dict: bool = True) -> GOAEOutput | tuple:
        """Apply a W+ offset ([14,w] or [B,14,w]) the way the paper edits (official `Net.edit`).

        The AFA features of the original inversion are kept and shifted by the change the edit makes
        to the generator features; the occlusion-aware mix then uses the edited W tri-planes.
        """
        f = result.edit_features or {}
        if "x_rec" not in f or "adain_rec" not in f:
            raise ValueError("this result has no edit features (a cache entry made with to_cache(edit_features="
                             "False)): edit the result of pipe(...), or keep its entry with the features")
        with self._tf32():
            fwd = self.method.edit(result.ws, offset.to(result.ws.device, result.ws.dtype), result.camera,
                                   f["x_rec"], f["adain_rec"])
        out = GOAEOutput(ws=fwd.ws, planes=fwd.planes, image=fwd.final.image, image_raw=fwd.final.image_raw,
                         image_depth=fwd.final.image_depth, camera=result.camera, mask=fwd.mask["mask"],
                         edit_features=f, images=to_output_type(fwd.final.image, output_type))
        return out if return_dict else (out.images, out.ws, out.planes)


def load_pipeline(weights: str | None = None, seed: int = 0, device: str | torch.device = "cpu") -> GOAEPipeline:
    """Weights from a pipeline folder or Hub repo id (default: $GOAE_WEIGHTS, else the folder that
    `goae download` fills), or 'random' / 'random-small'.

    Raises goae.weights.errors.WeightsNotFoundError, with the commands to get or convert the weights, when none
    are given or they cannot be found (e.g. offline and not in the Hub cache).
    """
    # Nothing configured: the folder `goae download` converts the official weights into, if it is there.
    weights = weights or os.environ.get("GOAE_WEIGHTS") or (str(f) if (f := default_weights_folder()) else None)
    if not weights:
        raise WeightsNotFoundError("no weights given (pass a pipeline folder or Hub repo id, or 'random' to try "
                                   "the real architecture on random weights). " + HOW_TO_GET_WEIGHTS.format(repo="<repo_id>"))
    if weights in RANDOM_WEIGHTS:  # one mechanism for the CLI and the app
        pipe = GOAEPipeline.from_preset(RANDOM_WEIGHTS[weights], seed=seed)
        pipe.weights_label = f"{weights} (seed {seed})"
    else:
        pipe = GOAEPipeline.from_pretrained(weights)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
