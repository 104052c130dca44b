"""Training configuration: YAML files over the schema `configs/goae_ffhq.yaml`, plus `--set` overrides.

The paper's setting is the schema: every key that exists is listed there with its default, so a
typo (`--set train.bach_size=4`) is an error that names the key instead of a silently ignored value.
`model.encoder` and `model.afa` are free-form (constructor kwargs of GOAEncoder / AFA).

`model.domain` (goae.domains: human | cat) is resolved here once: a pipeline folder's own domain
(model_index.json) or the preset's decides it when the key is null, a bare EG3D generator folder means
human unless the key says cat, and a key that disagrees with the folder or preset is a ConfigError.
The loaded config always holds the resolved name, so config.json and checkpoints record it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "configs" / "goae_ffhq.yaml"
FREE_FORM = {"model.encoder", "model.afa"}  # dicts of constructor kwargs, not checked key by key
TRAIN_PRESETS = ("small", "small-cat")  # goae.presets architectures model.preset may name (random weights)


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
    config["model"]["domain"] = resolve_domain(config["model"])
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
        raise ConfigError("set exactly one of model.generator (a generator/pipeline folder) and model.preset "
                          f"({' or '.join(map(repr, TRAIN_PRESETS))})")
    if config["model"]["preset"] not in (None, *TRAIN_PRESETS):
        raise ConfigError(f"model.preset must be one of {list(TRAIN_PRESETS)} or null, got {config['model']['preset']!r}")
    from goae.domains import DOMAINS

    if config["model"]["domain"] not in (None, *DOMAINS):
        raise ConfigError(f"model.domain must be one of {sorted(DOMAINS)} or null (the generator's), "
                          f"got {config['model']['domain']!r}")
    for name in ("train.batch_size", "train.accum_steps", "encoder_stage.max_steps", "afa_stage.max_steps",
                 "log.every", "log.ckpt_every", "log.keep", "data.workers", "data.synthetic_per_batch"):
        low = 0 if name.endswith(("max_steps", "workers", "synthetic_per_batch")) else 1
        if not isinstance(get(config, name), int) or isinstance(get(config, name), bool) or get(config, name) < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {get(config, name)!r}")
    sig = config["afa_stage"]["mask_blur_sigma"]
    if not (isinstance(sig, list) and len(sig) == 2 and 0 < sig[0] <= sig[1]):
        raise ConfigError(f"afa_stage.mask_blur_sigma must be [low, high] with 0 < low <= high, got {sig!r}")


def check_partition(config: dict, world: int) -> None:
    """Each global batch (real photos and synthetic samples) splits evenly over processes x accumulation
    steps: every rank runs the same micro-batch sizes, so the run is the same at any world size."""
    accum = config["train"]["accum_steps"]
    n_parts = world * accum
    for name in ("train.batch_size", "data.synthetic_per_batch"):
        count = get(config, name)
        if count % n_parts:
            raise ConfigError(f"{name}={count} must be divisible by processes x accum_steps = {world} x {accum} = "
                              f"{n_parts}: set it to a multiple of {n_parts} (--set {name}=...) or change accum_steps")


def get(config: dict, name: str) -> Any:
    node: Any = config
    for part in name.split("."):
        node = node[part]
    return node


def generator_domain(model: dict) -> tuple[str | None, str]:
    """(the domain model.preset / a model.generator pipeline folder fixes, or None; what fixes it, for messages).
    A bare EG3D generator folder (config.json, no model_index.json) fixes none: it records no domain."""
    if model.get("preset") is not None:
        from goae.presets import preset

        return preset(model["preset"]).domain, f"model.preset {model['preset']!r}"
    if model.get("generator") is None:
        return None, "no generator"
    return pipeline_folder_domain(model["generator"], "model.generator")


def pipeline_folder_domain(folder: str | Path, key: str) -> tuple[str | None, str]:
    """(domain recorded in a pipeline folder's model_index.json (human when it predates domains), or None when
    the folder holds no readable model_index.json; a description for messages)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return None, f"{key} {folder} (no model_index.json: a bare generator folder)"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None, f"{key} {folder}"  # the pipeline loader reports a damaged folder with its own message
    if not isinstance(data, dict):
        return None, f"{key} {folder}"
    from goae.domains import DEFAULT_DOMAIN

    domain = data.get("domain", DEFAULT_DOMAIN)
    return domain, f"{key} {folder} (pipeline folder, domain in its model_index.json)"


def resolve_domain(model: dict) -> str:
    """The run's domain name: model.domain if set (it must agree with a pipeline folder or preset), else the
    generator's, else human (a bare generator folder, as every run before domains existed)."""
    from goae.domains import DEFAULT_DOMAIN, DOMAINS, domain_of_pivot

    wanted = model.get("domain")
    if wanted is not None and wanted not in DOMAINS:
        raise ConfigError(f"model.domain must be one of {sorted(DOMAINS)} or null, got {wanted!r}")
    fixed, where = generator_domain(model)
    if fixed is not None and fixed not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {fixed!r}; goae knows {sorted(DOMAINS)}")
    if wanted is not None and fixed is not None and wanted != fixed:
        hint = (" (model.preset 'small-cat' is the cat one)" if model.get("preset") == "small" else
                " (model.preset 'small' is the human one)" if model.get("preset") == "small-cat" else
                f"; use the {wanted} generator's folder, or drop model.domain to train for {fixed!r}")
        raise ConfigError(f"model.domain is {wanted!r} but {where} is a {fixed} generator: it cannot train "
                          f"a {wanted} encoder{hint}")
    if wanted is None and fixed is None and model.get("generator") is not None:
        pivot = bare_generator_pivot(model["generator"])
        if (implied := domain_of_pivot(pivot)) is not None and implied.name != DEFAULT_DOMAIN:
            raise ConfigError(f"model.generator {model['generator']} has the camera pivot {list(pivot)} of EG3D's "
                              f"{implied.dataset} model, so it is probably not a {DEFAULT_DOMAIN} generator: set "
                              f"model.domain: {implied.name} (--domain {implied.name}), or model.domain: "
                              f"{DEFAULT_DOMAIN} to override")
    return wanted or fixed or DEFAULT_DOMAIN


def bare_generator_pivot(folder: str | Path) -> list | None:
    """avg_camera_pivot of a bare EG3D generator folder's config.json (None when absent or unreadable)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())["rendering_kwargs"]["avg_camera_pivot"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_domain(domain: str, folder_domain: str | None, where: str) -> None:
    """ConfigError when a loaded pipeline's own domain (pipe.config.domain) is not the run's."""
    from goae.domains import DEFAULT_DOMAIN

    folder_domain = folder_domain or DEFAULT_DOMAIN
    if folder_domain != domain:
        raise ConfigError(f"{where} is a pipeline of the {folder_domain!r} domain but this run trains the {domain!r} "
                          f"domain (model.domain): use a {domain} folder, or set model.domain={folder_domain}")
