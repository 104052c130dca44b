"""Whether to trust a weights folder, before anything is built from it, and its weights once loaded.

`check_pipeline_folder` / `check_component_folder` validate a folder (config bounds, safetensors keys and
shapes from the header, parts that fit together), and `check_finite` refuses NaN/Inf weights once loaded; all
raise `WeightsFolderError`. A folder whose recorded domain contradicts its generator's camera pivot loads with
a `DomainMismatchWarning` (the converter's rule: a domain given against the pivot is kept, with a warning).
The converter checks official checkpoints against the same BOUNDS and shapes. Importing it does not import torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import reprlib
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from goae.io import NotARegularFile, check_regular_file, one_line
from goae.weights.errors import DomainMismatchWarning, StateDictMismatchError, WeightsFolderError

# ----------------------------------------------------------------------------- checking a weights folder
#
# A pipeline folder is data from anywhere (a Hub repo, a download, a hand-edited config). diffusers
# builds every module from config.json before it reads a single weight, so a 1 KB config with
# w_dim 16000 costs GBs, and tensors missing from the safetensors file stay uninitialised memory
# (diffusers only warns).
# `check_pipeline_folder` reads only config files and safetensors headers, builds the modules on
# the meta device (parameters without memory), and compares keys and shapes before anything real
# is constructed.

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_MAX_JSON_BYTES = 1 << 20  # config.json / model_index.json are ~1 KB

# The components of a GOAEPipeline folder: model_index.json entry -> (library, class).
COMPONENTS = {
    "generator": ("goae.models.eg3d", "EG3DGenerator"),
    "encoder": ("goae.models.encoder", "GOAEncoder"),
    "afa": ("goae.models.afa", "AFA"),
}

# Allowed values of the numbers in each config (dotted keys reach into dicts, "[n]" is a list of n
# of them; float bounds allow floats). About 2-4x the released FFHQ-512 model (its value in the
# comment): every architecture goae runs fits, while a config that would allocate GBs while being
# built or rendered is refused before any module exists. Missing keys keep the constructor default.
BOUNDS: dict[str, dict[str, tuple]] = {
    "generator": {
        "z_dim": (1, 1024),  # 512
        "w_dim": (1, 1024),  # 512
        "c_dim": (0, 64),  # 25
        "img_resolution": (128, 512),  # 512 (goae's super-resolution modules make 128, 256 or 512)
        "img_channels": (1, 4),  # 3
        "sr_num_fp16_res": (0, 16),  # 4
        "neural_rendering_resolution": (8, 512),  # 128: rays per image = its square
        "sr_channels[2]": (1, 1024),  # default (256, 128)
        "mapping_kwargs.num_layers": (1, 16),  # 2
        "mapping_kwargs.embed_features": (1, 1024),
        "mapping_kwargs.layer_features": (1, 1024),
        "synthesis_kwargs.channel_base": (1, 131072),  # 32768
        "synthesis_kwargs.channel_max": (1, 1024),  # 512
        "synthesis_kwargs.num_fp16_res": (0, 16),  # 0
        "sr_kwargs.channel_base": (1, 131072),
        "sr_kwargs.channel_max": (1, 1024),
        "rendering_kwargs.depth_resolution": (1, 256),  # 48 samples per ray
        "rendering_kwargs.depth_resolution_importance": (0, 256),  # 48
        "rendering_kwargs.image_resolution": (1, 1024),  # 512
    },
    "encoder": {
        "img_size": (32, 1024),  # 256
        "patch_size": (1, 32),  # 4
        "in_chans": (1, 4),  # 3
        "embed_dim": (1, 512),  # 128
        "depths[4]": (1, 32),  # (2, 2, 18, 2)
        "num_heads[4]": (1, 128),  # (4, 8, 16, 32)
        "window_size": (1, 32),  # 16: attention buffers grow with its 4th power
        "pretrained_window_sizes[4]": (0, 64),  # (12, 12, 12, 6)
        "mlp_ratio": (0.0, 16.0),  # 4
        "drop_rate": (0.0, 1.0),
        "drop_path_rate": (0.0, 1.0),
        "w_dim": (1, 1024),  # 512
        "num_ws": (2, 64),  # 14
        "ws_split[3]": (0, 64),  # (3, 3, 7)
        "mlp_layer": (1, 8),  # 2
        "cross_att_heads": (1, 64),  # 4
        "cross_att_ff": (1, 16384),  # default 2 * w_dim
    },
    "afa": {
        "stage_channels[3]": (1, 1024),  # (64, 128, 256)
        "units_per_stage": (1, 16),  # 3
        "feature_channels": (1, 2048),  # 512
        "feature_resolution": (4, 256),  # 32
        "num_heads": (1, 64),  # 4
        "dim_feedforward": (1, 16384),  # default 2 * feature_channels
    },
    "pipeline": {
        "afa_resolution": (4, 256),  # 32: a backbone block resolution
        "mask_blur_sigma": (0.01, 100.0),  # 1.5
        "mask_threshold": (0.0, 1.0),  # 0.35
    },
}
_MAX_ENCODER_GRID = 128  # img_size / patch_size: 64 released; the encoder has (grid^2)^2 / 2 weights


@dataclass(frozen=True)
class PipelineInfo:
    """What `check_pipeline_folder` read: the folder's domain and its W+ shape."""

    domain: str
    num_ws: int
    w_dim: int


def preview(items: Iterable[str], n: int = 5) -> str:
    """The first `n` items, and how many more (for one-line messages)."""
    items = list(items)
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def describe_mismatch(found: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]) -> str | None:
    """One line listing missing, unexpected and mis-shaped keys ({key: shape} maps), or None if equal."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k])} != {tuple(expected[k])}" for k in expected
              if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = [f"{len(missing)} missing keys: {preview(missing, 8)}"] if missing else []
    parts += [f"{len(unexpected)} unexpected keys: {preview(unexpected, 8)}"] if unexpected else []
    parts += [f"{len(shapes)} shape mismatches: {preview(shapes, 4)}"] if shapes else []
    return "; ".join(parts) or None


def check_state_dict(sd: Mapping[str, Any], expected: Mapping[str, Sequence[int]], what: str = "checkpoint",
                     error: type[Exception] = StateDictMismatchError) -> None:
    """Raise `error` (a checkpoint's StateDictMismatchError by default) listing missing, unexpected and mis-shaped keys of `sd` against {key: shape} (one line)."""
    mismatch = describe_mismatch(shape_map(sd), expected)
    if mismatch:
        raise error(f"{what} does not match the model; {mismatch}")


def _number_ok(value: Any, lo: int | float, hi: int | float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(lo, int) and not isinstance(value, int):  # 1e5 in JSON is a float: not an int key
        return False
    return math.isfinite(value) and lo <= value <= hi


def check_config(component: str, config: Mapping[str, Any], where: str | None = None,
                 error: type[Exception] = WeightsFolderError) -> None:
    """Check the numbers of a component's config (BOUNDS[component]); raise `error` naming the key
    and its allowed range. None values are left to the constructor (several keys mean 'default')."""
    where = where or f"{component}/config.json"
    if not isinstance(config, Mapping):
        raise error(f"{where} must hold a JSON object, got {type(config).__name__}")
    for spec, (lo, hi) in BOUNDS[component].items():
        key, _, n = spec.partition("[")
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            continue
        allowed = f"{'a number' if isinstance(lo, float) else 'an integer'} in [{lo}, {hi}]"
        if n:
            n = int(n.rstrip("]"))
            if not isinstance(value, (list, tuple)) or len(value) != n or not all(_number_ok(v, lo, hi) for v in value):
                raise error(f"{where}: '{key}' must be a list of {n} values, each {allowed}; got {short(value)}")
        elif not _number_ok(value, lo, hi):
            raise error(f"{where}: '{key}' must be {allowed}; got {short(value)}")
    if component == "encoder":
        grid = (config.get("img_size") or 256) // (config.get("patch_size") or 4)
        if grid > _MAX_ENCODER_GRID:
            raise error(f"{where}: img_size / patch_size must be at most {_MAX_ENCODER_GRID}; got {grid}")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4


def short(value: Any) -> str:
    """A value quoted in a message, at most 120 characters; reprlib's, so a (pickled) structure that shares
    itself is not expanded 2**n times as plain repr would."""
    text = _REPR.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_META_LOCK = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules without memory for their weights: on this thread, every parameter a module
    registers moves to the meta device (accelerate's init_empty_weights, without the dependency).
    A plain `with torch.device('meta')` cannot build goae's modules: their constructors compute
    small buffers from real values. Buffers stay real, and bounded configs keep them small."""
    import torch

    original = torch.nn.Module.register_parameter
    owner = threading.get_ident()

    def register_parameter(module, name, param):
        original(module, name, param)
        if param is not None and threading.get_ident() == owner:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), param.requires_grad)

    with _META_LOCK:
        torch.nn.Module.register_parameter = register_parameter
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original


def meta_module(build: Callable[[], Any], what: str, error: type[Exception] = WeightsFolderError):
    """`build()` with its parameters on the meta device; any failure of the constructor is `error`."""
    try:
        with parameters_on_meta():
            return build()
    except Exception as e:
        msg = one_line(str(e)) or type(e).__name__
        raise error(f"{what}: cannot build the model from it ({type(e).__name__}: {msg[:300]})") from None


def shape_map(module_or_sd) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a model's state dict, or of a state dict (what the loaders validate against)."""
    sd = module_or_sd.state_dict() if hasattr(module_or_sd, "state_dict") else module_or_sd
    return {k: tuple(v.shape) for k, v in sd.items()}


def _regular_file(path: Path, what: str) -> Path:
    # A FIFO or device would block or never end when read: only regular files (links to them are fine).
    try:
        return check_regular_file(path, what)
    except FileNotFoundError:
        raise WeightsFolderError(f"{path}: {what} is missing") from None
    except NotARegularFile:
        raise WeightsFolderError(f"{path}: {what} is not a regular file") from None
    except OSError as e:
        raise WeightsFolderError(f"{path}: cannot read {what} ({one_line(e)})") from None


def _read_json(path: Path) -> dict:
    _regular_file(path, "the config file")
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise WeightsFolderError(f"{path} is {size} bytes; a config file is at most {_MAX_JSON_BYTES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than json can parse
        raise WeightsFolderError(f"{path} is not valid JSON ({one_line(str(e))[:200]})") from None
    if not isinstance(data, dict):
        raise WeightsFolderError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{key: shape} from a safetensors file's header alone (no tensor data is read). safetensors
    checks that the header's offsets cover the file exactly, so the shapes are backed by real bytes."""
    from safetensors import safe_open

    path = _regular_file(Path(path), "the weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise WeightsFolderError(f"{path} is not a readable safetensors file ({one_line(str(e))[:200]})") from None


def check_component_folder(folder: str | os.PathLike, component: str):
    """Validate one component folder (config.json + diffusion_pytorch_model.safetensors) without
    reading weights; returns the model built on the meta device (for cross-checks)."""
    import importlib

    folder = Path(folder)
    library, class_name = COMPONENTS[component]
    config = _read_json(folder / "config.json")
    if config.get("_class_name", class_name) != class_name:
        raise WeightsFolderError(f"{folder / 'config.json'} is a {config.get('_class_name')!r} config, expected {class_name}")
    check_config(component, config, where=str(folder / "config.json"))
    cls = getattr(importlib.import_module(library), class_name)
    model = meta_module(lambda: cls.from_config(config), str(folder / "config.json"))
    found = safetensors_shapes(folder / WEIGHTS_NAME)
    mismatch = describe_mismatch(found, shape_map(model))
    if mismatch:
        raise WeightsFolderError(f"{folder / WEIGHTS_NAME} does not match its config.json: {mismatch}")
    return model


def check_pipeline_folder(folder: str | os.PathLike) -> PipelineInfo:
    """Validate a GOAEPipeline folder before any module is constructed: model_index.json names
    exactly goae's components, every config is within BOUNDS, every safetensors header has the keys
    and shapes its config implies, and the components fit together. Raises WeightsFolderError.
    Warns (DomainMismatchWarning) when the domain, or its absence, contradicts the generator's pivot."""
    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") != "GOAEPipeline":
        raise WeightsFolderError(f"{folder / 'model_index.json'} is for {index.get('_class_name')!r}, expected GOAEPipeline")
    for key, value in index.items():  # diffusers imports whatever library a [library, class] entry names
        looks_like_component = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            v is None or isinstance(v, str) for v in value)
        if looks_like_component and key not in COMPONENTS:
            raise WeightsFolderError(f"{folder / 'model_index.json'}: unexpected component {key!r} = {short(value)}")
    for name, entry in COMPONENTS.items():
        if list(index.get(name) or []) != list(entry):
            raise WeightsFolderError(f"{folder / 'model_index.json'}: {name!r} must be {list(entry)}, got {short(index.get(name))}")
    check_config("pipeline", index, where=str(folder / "model_index.json"))
    from goae.domains import DEFAULT_DOMAIN, DOMAINS  # lazily: goae.domains imports torch, this module does not

    domain = index.get("domain", DEFAULT_DOMAIN)
    if not isinstance(domain, str) or domain not in DOMAINS:  # a list or a dict is no name either
        raise WeightsFolderError(f"{folder / 'model_index.json'}: domain must be one of {sorted(DOMAINS)}, "
                                 f"got {short(index.get('domain'))}")
    g, e, a = (check_component_folder(folder / name, name) for name in COMPONENTS)
    _check_domain_pivot(folder, domain, "domain" in index, g)
    res = index.get("afa_resolution", 32)
    width = g.feature_channels(res) if res in g.feature_levels else None
    problems = [
        f"afa_resolution {res} is not a generator block resolution" if width is None else None,
        f"encoder w_dim {e.config.w_dim} != generator w_dim {g.w_dim}" if e.config.w_dim != g.w_dim else None,
        f"encoder num_ws {e.config.num_ws} != generator num_ws {g.num_ws}" if e.config.num_ws != g.num_ws else None,
        f"afa feature_resolution {a.config.feature_resolution} != afa_resolution {res}" if a.config.feature_resolution != res else None,
        f"afa feature_channels {a.config.feature_channels} != generator width {width} at {res}"
        if width is not None and a.config.feature_channels != width else None,
    ]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsFolderError(f"{folder}: the components do not fit together: {'; '.join(problems)}")
    return PipelineInfo(domain, g.num_ws, g.w_dim)


def _check_domain_pivot(folder: Path, domain: str, recorded: bool, generator) -> None:
    """The converter keeps a domain given against the generator's pivot, with a warning: a folder it wrote so
    loads, with the same warning. (A folder without a domain predates cats: it stays human, and says so.)"""
    from goae.domains import domain_of_pivot, get_domain  # lazily: torch

    pivot = (getattr(generator, "rendering_kwargs", None) or {}).get("avg_camera_pivot")
    implied = domain_of_pivot(pivot)
    if implied is None or implied.name == domain:
        return
    said = f"says domain '{domain}'" if recorded else f"records no domain, so it loads as '{domain}'"
    warnings.warn(DomainMismatchWarning(
        f"{folder}: model_index.json {said}, but its generator has the avg_camera_pivot {list(pivot)} of EG3D's "
        f"{implied.dataset} model ({implied.generator_file}): photos will be aligned and framed as "
        f"{get_domain(domain).title.lower()}s. If the weights are for {implied.title.lower()}s, set "
        f"\"domain\": \"{implied.name}\" in model_index.json"), stacklevel=3)


def nonfinite_names(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf, in order (None and meta tensors skipped). One host
    sync per device for all of them (a stacked flag vector read once), not one per tensor: a GPU pipeline's
    weight check would otherwise wait on the device hundreds of times."""
    import torch

    names, by_device = [], {}
    for name, t in tensors:
        if t is not None and t.is_floating_point() and not t.is_meta:
            names.append(name)
            by_device.setdefault(t.device, []).append((name, t))
    bad = set()
    for items in by_device.values():
        finite_flags = torch.stack([torch.isfinite(t).all() for _, t in items]).cpu().tolist()
        bad.update(name for (name, _), ok in zip(items, finite_flags) if not ok)
    return [name for name in names if name in bad]


def check_finite(module_or_state_dict, name: str, error: type[Exception] = WeightsFolderError) -> None:
    """Raise `error` if any weight or buffer is NaN or Inf: such a model renders blank images or
    NaN codes far from where the file was damaged, so refuse it where it is loaded."""
    sd = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") else module_or_state_dict
    bad = nonfinite_names(sd.items())
    if bad:
        raise error(f"{name}: NaN or Inf values in {len(bad)} weight tensor(s): {preview(bad)}; "
                    f"the weights are corrupt (a diverged training run or a damaged file)")

