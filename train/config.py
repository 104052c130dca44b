"""Training configuration: YAML files over the schema `configs/goae_ffhq.yaml`, plus `--set` overrides.

The paper's setting is the schema: every key that exists is listed there with its default, so a
typo (`--set train.bach_size=4`) is an error that names the key instead of a silently ignored value.
`model.encoder` and `model.afa` are free-form (constructor kwargs of GOAEncoder / AFA).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "configs" / "goae_ffhq.yaml"
FREE_FORM = {"model.encoder", "model.afa"}  # dicts of constructor kwargs, not checked key by key


class ConfigError(ValueError):
    """Unknown key, wrong type or malformed override in a training configuration."""


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(base: dict, new: dict, where: str, prefix: str = "") -> None:
    for key, value in new.items():
        name = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {name!r} (in {where}); known keys here: {known}")
        old = base[key]
        if name in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} must be a mapping of constructor kwargs (in {where})")
            base[key] = {**old, **value}
        elif isinstance(old, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{name} is a section; give its keys ({', '.join(old)}) not {value!r} (in {where})")
            _merge(old, value, where, name + ".")
        else:
            base[key] = _check_type(name, old, value, where)


def _check_type(name: str, old: Any, value: Any, where: str) -> Any:
    if old is None or value is None:
        return value
    if isinstance(value, str) and isinstance(old, (int, float)) and not isinstance(old, bool):
        try:  # PyYAML reads "1e-6" (no dot) as a string
            value = float(value) if isinstance(old, float) or not value.lstrip("-").isdigit() else int(value)
        except ValueError:
            pass
    if isinstance(old, bool) or isinstance(value, bool):
        if isinstance(old, bool) and isinstance(value, bool):
            return value
    elif isinstance(old, (int, float)) and isinstance(value, (int, float)):
        return float(value) if isinstance(old, float) else value
    elif type(old) is type(value):
        return value
    raise ConfigError(f"{name} must be a {type(old).__name__} like {old!r}, got {value!r} (in {where})")


def parse_override(item: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, the value read as YAML (numbers, lists, null...)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key.sub=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                extra: dict | None = None) -> dict:
    """Schema defaults <- YAML file <- `extra` (CLI flags) <- `--set` overrides; validated."""
    config = copy.deepcopy(_read_yaml(SCHEMA_PATH))
    if path is not None and Path(path).resolve() != SCHEMA_PATH:
        _merge(config, _read_yaml(path), str(path))
    if extra:
        _merge(config, extra, "command-line flags")
    for item in overrides or []:
        _merge(config, parse_override(item), f"--set {item}")
    validate(config)
    return config


def validate(config: dict) -> None:
    """Checks of values (not just keys) that would otherwise fail deep inside training."""
    choices = {"stage": ("encoder", "afa", "all"), "train.precision": ("fp32", "bf16", "fp16"),
               "train.device": ("auto", "cpu", "cuda"), "train.module_mode": ("train", "eval"),
               "train.render": ("sr", "raw"), "losses.lpips": ("pretrained", "random"),
               "losses.id": ("pretrained", "random"), "encoder_stage.optimizer": ("ranger", "radam", "adam"),
               "afa_stage.optimizer": ("ranger", "radam", "adam"),
               "encoder_stage.scheduler": ("constant", "cosine"), "afa_stage.scheduler": ("constant", "cosine"),
               "model.afa_resolution": (32, 64)}
    for name, allowed in choices.items():
        value = get(config, name)
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
    if (config["model"]["generator"] is None) == (config["model"]["preset"] is None):
        raise ConfigError("set exactly one of model.generator (a generator/pipeline folder) and model.preset ('small')")
    if config["model"]["preset"] not in (None, "small"):
        raise ConfigError(f"model.preset must be 'small' or null, got {config['model']['preset']!r}")
    for name in ("train.batch_size", "train.accum_steps", "encoder_stage.max_steps", "afa_stage.max_steps",
                 "log.every", "log.ckpt_every", "log.keep", "data.workers"):
        low = 0 if name.endswith(("max_steps", "workers")) else 1
        if not isinstance(get(config, name), int) or isinstance(get(config, name), bool) or get(config, name) < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {get(config, name)!r}")
    sig = config["afa_stage"]["mask_blur_sigma"]
    if not (isinstance(sig, list) and len(sig) == 2 and 0 < sig[0] <= sig[1]):
        raise ConfigError(f"afa_stage.mask_blur_sigma must be [low, high] with 0 < low <= high, got {sig!r}")


def get(config: dict, name: str) -> Any:
    node: Any = config
    for part in name.split("."):
        node = node[part]
    return node
