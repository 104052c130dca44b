"""Official checkpoints -> goae models, checked: the EG3D generator from its network pickle, the GOAE encoder
and AFA from their .pt state dicts.

Every architecture is checked against goae's (`goae.weights.checks.BOUNDS`) and every state dict against the
model built on the meta device (keys and shapes) before a real model exists; NaN/Inf weights are refused.
GOAE checkpoints saved differently from encoder_FFHQ.pt / afa_FFHQ.pt are read through a small table of
named key-mapping rules (`load_goae_checkpoint`), each reported so that the converter can record it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from goae.weights.checks import (check_config, check_finite, check_state_dict, describe_mismatch, meta_module, preview,
                                 shape_map)
from goae.weights.errors import NonFiniteWeightsError, StateDictMismatchError, UnsupportedArchitectureError
from goae.weights.unpickle import flat_state_dict, read_official_generator, read_torch_file

# ----------------------------------------------------------------------------- EG3D


_GENERATOR_CLASS = "TriPlaneGenerator"
_REQUIRED_KWARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "rendering_kwargs")


def load_official_generator(pkl_path: str | os.PathLike, key: str = "G_ema"):
    """Official network pickle -> goae `EG3DGenerator` (eval mode) with the pickled weights."""
    off = read_official_generator(pkl_path, key)  # validate the file before touching the model code
    from goae.models.eg3d import EG3DGenerator, split_official_kwargs  # lazily: the model code is only for loading

    what = f"{pkl_path} ({key})"
    if off.class_name.rsplit(".", 1)[-1] != _GENERATOR_CLASS:
        raise UnsupportedArchitectureError(f"{what} is a {off.class_name!r}, not EG3D's {_GENERATOR_CLASS} "
                                           f"(a StyleGAN2/StyleGAN3 or other network pickle?)")
    # GOAE copies rendering_kwargs from the pickled object (it is the same dict as the kwarg).
    kwargs = dict(off.init_kwargs, rendering_kwargs=off.rendering_kwargs or off.init_kwargs.get("rendering_kwargs", {}))
    missing = [k for k in _REQUIRED_KWARGS if kwargs.get(k) in (None, {})]
    if missing:
        raise UnsupportedArchitectureError(f"{what} lacks the EG3D constructor kwargs {missing}")
    # Check the numbers before building anything: a 1 KB pickle with w_dim 16384 is 5 GB of model.
    config, synthesis = split_official_kwargs(kwargs)
    config.update(synthesis_kwargs=synthesis, neural_rendering_resolution=off.neural_rendering_resolution)
    check_config("generator", config, where=f"{what} constructor kwargs", error=UnsupportedArchitectureError)

    def build():
        return EG3DGenerator.from_official_kwargs(kwargs, neural_rendering_resolution=off.neural_rendering_resolution)

    expected = shape_map(meta_module(build, f"{what} constructor kwargs", UnsupportedArchitectureError))
    check_state_dict(off.state_dict, expected, what)
    check_finite(off.state_dict, what, NonFiniteWeightsError)
    G = build()
    G.load_state_dict(off.state_dict, strict=True)
    return G.eval()



# ----------------------------------------------------------------------------- GOAE .pt state dicts


def load_official_state_dict(
    pt_path: str | os.PathLike, expected_keys: Mapping[str, Sequence[int]] | None = None, what: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a flat official state dict (encoder_FFHQ.pt / afa_FFHQ.pt) with torch.load(weights_only=True)
    and, if `expected_keys` ({key: shape}) is given, check keys and shapes against it (no key mapping:
    see `load_goae_checkpoint` for that)."""
    path, size, obj = read_torch_file(pt_path)
    what = what or str(path)
    sd = flat_state_dict(obj, path, size)
    if expected_keys is not None:
        check_state_dict(sd, expected_keys, what)
    check_finite(sd, what, NonFiniteWeightsError)
    return sd


def load_goae_checkpoints(
    encoder_pt: str | os.PathLike,
    afa_pt: str | os.PathLike,
    encoder_shapes: Mapping[str, Sequence[int]] | None = None,
    afa_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Load encoder_FFHQ.pt and afa_FFHQ.pt, validated against the model instances' shape maps
    (`shape_map(encoder)`, `shape_map(afa)`), so tiny configs validate the same way as the release."""
    enc = load_official_state_dict(encoder_pt, encoder_shapes, f"encoder checkpoint {encoder_pt}")
    afa = load_official_state_dict(afa_pt, afa_shapes, f"AFA checkpoint {afa_pt}")
    return enc, afa


# ----------------------------------------------------------------------------- key mapping
#
# Users of the official release report keys in the cat checkpoints that do not match the released code, and
# we cannot see those files, so instead of guessing renames we accept the few ways a *correct* checkpoint of
# goae's architecture is commonly stored. Each rule below is applied only when the file has exactly that
# form, the result must then match the model built on the config in every key and shape (else
# StateDictMismatchError, nothing written), and every applied rule is printed and recorded in the card.

# (a) A model wrapped in torch.nn.DataParallel / DistributedDataParallel saves every key under `module.`.
_DATAPARALLEL_PREFIX = "module."
# (b) Training scripts often save {'state_dict': sd} or {'model': sd}, or name the part ({'encoder': sd}).
# Only a single-entry dict is unwrapped (a dict with an optimizer or an epoch beside the weights is not a
# release), and only under a name that fits the part: {'afa': ...} in an encoder file is another file.
_WRAPPER_KEYS = {"encoder": ("state_dict", "model", "encoder"), "afa": ("state_dict", "model", "afa")}
# (c) Swin-V2 buffers computed from the architecture (goae/models/swin_v2.py registers them like the official
# Swin-V2 code; timm's Swin-V2 registers the first two with persistent=False, so such a save lacks them).
_DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")
# (d) GOAEncoder's `mlp_layer` (official `get_mlp_layer`): each of these Sequentials holds mlp_layer Linear
# layers at indices 0, 2, ..., 2 * (mlp_layer - 1) (a LeakyReLU between them). The file's keys say which
# depth it was trained with, an architecture setting like the pickle's kwargs.
_MLP_MAPPERS = tuple(f"mapper_{n}" for n in (
    "base_spatial", "base_channel", "query_spatial_coarse", "query_channel_coarse", "query_spatial_mid",
    "query_channel_mid", "query_spatial_fine", "query_channel_fine"))
_DERIVED_ATOL = 1e-5  # float tables computed by other code round differently; another window differs by > 0.01


@dataclass
class GOAECheckpoint:
    """A GOAE encoder/AFA checkpoint read through the key mapping: weights with goae's key names, the config
    they fit (`mlp_layer` may come from the file) and one line per rule applied."""

    state_dict: dict[str, torch.Tensor]
    config: dict
    key_mapping: list[str] = field(default_factory=list)


def component_class(component: str):
    # lazily, like the generator: reading and checking a checkpoint needs no model code
    if component == "encoder":
        from goae.models.encoder import GOAEncoder

        return GOAEncoder
    if component == "afa":
        from goae.models.afa import AFA

        return AFA
    raise ValueError(f"component must be 'encoder' or 'afa', got {component!r}")


def mlp_layers_in(keys) -> int | None:
    """GOAEncoder's mlp_layer implied by a state dict's `mapper_*` keys, or None when they do not form
    the official get_mlp_layer pattern (the same depth in all eight mappers)."""
    keys = set(keys)
    depths = set()
    for name in _MLP_MAPPERS:
        idx = sorted(int(k[len(name) + 1:-len(".weight")]) for k in keys
                     if k.startswith(name + ".") and k.endswith(".weight") and k[len(name) + 1:-len(".weight")].isdigit())
        if not idx or idx != list(range(0, 2 * len(idx), 2)):
            return None
        depths.add(len(idx))
    return depths.pop() if len(depths) == 1 else None


def _same_values(found: torch.Tensor, expected: torch.Tensor) -> bool:
    if expected.is_floating_point():
        return bool(torch.allclose(found.to(torch.float64), expected.to(torch.float64), rtol=0.0, atol=_DERIVED_ATOL))
    return bool(torch.equal(found.to(expected.dtype), expected))


def load_goae_checkpoint(pt_path: str | os.PathLike, component: str, config: Mapping[str, Any] | None = None) -> GOAECheckpoint:
    """Read an official GOAE encoder or AFA checkpoint (`component` 'encoder' / 'afa') for the model built on
    `config` (default: the released one), through the key-mapping rules above. Raises StateDictMismatchError
    (missing / unexpected keys as for a flat file) when the result does not match exactly."""
    cls = component_class(component)
    title = "encoder" if component == "encoder" else "AFA"
    config = dict(config or {})
    check_config(component, config, where=f"{component} config", error=UnsupportedArchitectureError)
    path, size, obj = read_torch_file(pt_path)
    what, label = f"{title} checkpoint {pt_path}", f"{title} checkpoint {path.name}"
    applied: list[str] = []

    # (b) a single-entry wrapper dict
    hint = ""
    if isinstance(obj, dict) and len(obj) == 1:
        (key, inner), = obj.items()
        if key in _WRAPPER_KEYS[component] and isinstance(inner, dict):
            obj = inner
            applied.append(f"took the weights from its single entry {key!r} (a training script's wrapper around the state dict)")
        elif isinstance(key, str) and any(key in names for names in _WRAPPER_KEYS.values()):
            hint = f"; its single entry {key!r} is not a name for the {title} weights (the other file?)"
    elif isinstance(obj, dict) and any(not isinstance(v, torch.Tensor) for v in obj.values()):
        hint = (f"; goae reads a flat state dict or a single-entry wrapper "
                f"({' / '.join(repr(k) for k in _WRAPPER_KEYS[component])}), not a training checkpoint with other entries")
    sd = flat_state_dict(obj, path, size, hint)

    # (a) the DataParallel prefix, on every key (goae's own keys never start with it)
    if sd and all(k.startswith(_DATAPARALLEL_PREFIX) for k in sd):
        sd = {k[len(_DATAPARALLEL_PREFIX):]: v for k, v in sd.items()}
        applied.append(f"removed the {_DATAPARALLEL_PREFIX!r} prefix from {len(sd)} keys (a DataParallel save)")

    # (d) the encoder's MLP depth, read from the file
    if component == "encoder":
        n = mlp_layers_in(sd)
        said = config.get("mlp_layer", 2)
        if n is not None and n != said:
            config["mlp_layer"] = n
            check_config(component, config, where=f"{what} (mlp_layer read from its keys)", error=UnsupportedArchitectureError)
            applied.append(f"read mlp_layer {n} from its keys (each mapper_* MLP has {n} Linear layers; the config said {said})")

    model = meta_module(lambda: cls(**config), f"{component} config", UnsupportedArchitectureError)
    reference = model.state_dict()  # parameters on the meta device, buffers real
    derived = [k for k in reference if k.rsplit(".", 1)[-1] in _DERIVED_BUFFERS]

    # (c) Swin-V2 buffers the file does not hold: fixed functions of the architecture, taken from the model
    filled = [k for k in derived if k not in sd]
    if filled:
        for k in filled:
            sd[k] = reference[k].clone()
        kinds = sorted({k.rsplit(".", 1)[-1] for k in filled})
        applied.append(f"filled {len(filled)} Swin-V2 buffers it lacks ({', '.join(kinds)}) from the model built on the "
                       f"config: they are fixed by the architecture (a save with non-persistent buffers, as timm's Swin-V2); "
                       f"the file cannot confirm the config's window sizes")

    after = f" (after {len(applied)} key-mapping rule(s): {'; '.join(applied)})" if applied else ""
    mismatch = describe_mismatch(shape_map(sd), shape_map(reference))
    if mismatch:
        raise StateDictMismatchError(f"{what} does not match the model{after}; {mismatch}")
    check_finite(sd, what, NonFiniteWeightsError)
    differ = [k for k in derived if k not in filled and not _same_values(sd[k], reference[k])]
    if differ:
        raise StateDictMismatchError(
            f"{what}: {len(differ)} Swin-V2 buffers hold other values than the config's architecture gives "
            f"({preview(differ, 3)}); they are fixed by img_size / window_size / pretrained_window_sizes, so the "
            f"file is for a different encoder configuration (not something a key mapping can fix)")
    return GOAECheckpoint(sd, config, [f"{label}: {line}" for line in applied])

