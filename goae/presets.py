"""Named architectures on seeded random weights: `ffhq` / `afhq` (the released FFHQ-512 and AFHQ-cats-512
models) and `small` / `small-cat` (the same with every width cut down: seconds per inversion on a CPU).

`small` is the tiny configuration of the parity goldens (shared/parity/goae/tiny_config.json), written here
as overrides of the FFHQ one so that the app and tests need no data files. `GOAEPipeline.from_preset(name,
seed)` builds any of them: for development, tests and demos of the interface, never for real results.
"""
from __future__ import annotations

import copy
from typing import Any, NamedTuple

from goae.models.eg3d import AFHQ512_KWARGS, FFHQ512_KWARGS, FFHQ512_NEURAL_RENDERING_RESOLUTION


class PresetError(ValueError):
    """Unknown preset name."""


def _merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Preset(NamedTuple):
    generator: dict            # official TriPlaneGenerator kwargs
    neural_rendering_resolution: int
    generator_extra: dict      # EG3DGenerator arguments beyond the official kwargs
    encoder: dict              # GOAEncoder kwargs
    afa: dict                  # AFA kwargs
    domain: str                # goae.domains name


# The official TriPlaneGenerator kwargs with w_dim 32, channels <= 128 and 12+12 samples per ray.
_SMALL_OVERRIDES: dict[str, Any] = {
    "z_dim": 32, "w_dim": 32, "sr_num_fp16_res": 0, "channel_base": 4096, "channel_max": 128,
    "sr_kwargs": {"channel_base": 4096, "channel_max": 128},
    "rendering_kwargs": {"gpc_reg_prob": 0.5, "depth_resolution": 12, "depth_resolution_importance": 12},
}
SMALL_GENERATOR: dict[str, Any] = _merged(FFHQ512_KWARGS, _SMALL_OVERRIDES)
SMALL_CAT_GENERATOR: dict[str, Any] = _merged(AFHQ512_KWARGS, _SMALL_OVERRIDES)
SMALL_ENCODER: dict[str, Any] = dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                     window_size=4, pretrained_window_sizes=(3, 3, 3, 2), w_dim=32)
SMALL_AFA: dict[str, Any] = dict(stage_channels=(16, 32, 64), feature_channels=128)
_SMALL_SR = {"sr_channels": [16, 8]}

PRESETS: dict[str, Preset] = {
    "ffhq": Preset(FFHQ512_KWARGS, FFHQ512_NEURAL_RENDERING_RESOLUTION, {}, {}, {}, "human"),
    "afhq": Preset(AFHQ512_KWARGS, FFHQ512_NEURAL_RENDERING_RESOLUTION, {}, {}, {}, "cat"),
    "small": Preset(SMALL_GENERATOR, 64, _SMALL_SR, SMALL_ENCODER, SMALL_AFA, "human"),
    "small-cat": Preset(SMALL_CAT_GENERATOR, 64, _SMALL_SR, SMALL_ENCODER, SMALL_AFA, "cat"),
}
# The names the CLI and the app accept for random weights.
RANDOM_WEIGHTS = {"random": "ffhq", "random-small": "small", "random-cat": "afhq", "random-small-cat": "small-cat"}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
