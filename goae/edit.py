"""Semantic edit directions in W+ (InterFaceGAN style) and how GOAE combines them.

A direction is a [num_ws, w_dim] tensor (14 x 512 for the released EG3D FFHQ model) added to the
inverted code: `edit_ws = ws + offset`, then `GOAEPipeline.edit(result, offset)` re-renders it.

File formats accepted by `load_direction` (decided by the file's first bytes, not its name):
- real `.npy` (the official `age.npy`, `anger.npy`, `glass.npy`), read with `allow_pickle=False`;
- a `torch.save` zip archive, whatever its extension (the official `cat_*.npy` are such zips),
  read with `torch.load(weights_only=True)`, i.e. torch's restricted unpickler that only rebuilds
  tensors and plain containers: no arbitrary code from the file runs;
- `.npz` (one array, or an array named `direction`);
- `.safetensors` with the tensor under the key `direction` (what `save_direction` writes).

Combination rule (official `infer.py --edit`): for an attribute other than glasses the offset is
`alpha * dir - 0.8 * glass`; for glasses it is `alpha * glass`. The fixed `- 0.8 * glass` term
compensates for the training faces' entanglement of the attribute with glasses (age and anger
directions also add glasses). The official script edits one attribute at a time. When several
attributes are combined here, the compensation is applied ONCE per combined edit (it is a property
of "a non-glasses edit was made", not of each attribute; subtracting it per attribute would remove
glasses k times over). It is applied only when some non-glasses attribute has a non-zero strength,
so all-zero strengths give exactly a zero offset (the official script would still subtract 0.8*glass
for alpha = 0). For a single attribute with non-zero alpha the result equals the official offset.

Domains (goae.domains). A direction belongs to one model family: `save_direction(..., domain=)` records
it in the .safetensors metadata; files without that (the official .npy) are tagged by name: `cat_*` are
AFHQ cats (the official `ws_edit` holds `cat_black`, `cat_smalleyes`), all others human faces.

Folders for a model (`load_direction_folder`, what the app and the command line use): every file of the
model's domain that fits its W+ shape; on random weights, files of another width are projected with
`fit_direction` so that the edit controls can be tried. Each file left out or projected gets a note.
A pipeline folder carries its own directions in `directions/` (`add_directions` puts them there; the
converter's --directions and `goae download` do); `directions_for(pipe, None)` uses those. Where none are
loaded, `how_to_get_directions(domain)` is the one line that says where the official ones come from.
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from goae.domains import DEFAULT_DOMAIN, DOMAINS, domain_of_direction_name, get_domain
from goae.io import atomic_write_bytes, one_line
from goae.paths import DIRECTIONS_DIR, downloads_folder
from goae.weights.checks import check_pipeline_folder

NUM_WS = 14  # EG3D backbone at 256^2 tri-planes: b4..b256 -> 14 W+ rows
DIRECTIONS_FOLDER = "directions"  # inside a pipeline folder (goae.pipeline reads it from there)
DIRECTION_KEY = "direction"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"

DIRECTION_SUFFIXES = (".npy", ".pt", ".pth", ".npz", ".safetensors")
ALIASES = {"glasses": "glass", "eyeglasses": "glass"}  # the official file is glass.npy

__all__ = ["DirectionError", "EditDirection", "load_direction", "load_directions", "load_direction_folder",
           "combine", "save_direction", "validate_direction", "fit_direction", "random_weights", "directions_for",
           "resolve_names", "edit_offset", "add_directions", "how_to_get_directions", "OFFICIAL_DIRECTIONS",
           "DIRECTIONS_FOLDER", "usable_directions", "write_directions"]

# The official files (GOAE repository, example/ws_edit) by domain; `goae download` fetches them.
OFFICIAL_DIRECTIONS = {d.name: d.official_directions for d in DOMAINS.values()}


class DirectionError(ValueError):
    """A direction file or tensor that cannot be used as a W+ edit direction."""


@dataclass
class EditDirection:
    """A named W+ direction. `tensor` is float32 [num_ws, w_dim] (a leading 1 is squeezed away); `domain`
    is the model family it was found on (goae.domains: 'human', 'cat')."""

    name: str
    tensor: torch.Tensor
    domain: str = DEFAULT_DOMAIN

    def __post_init__(self) -> None:
        n = self.tensor.shape[-2] if getattr(self.tensor, "ndim", 0) >= 2 else NUM_WS
        self.tensor = validate_direction(self.tensor, num_ws=n, what=f"direction {self.name!r}")

    @property
    def num_ws(self) -> int:
        return self.tensor.shape[0]

    @property
    def w_dim(self) -> int:
        return self.tensor.shape[1]


def validate_direction(t: torch.Tensor | np.ndarray, num_ws: int = NUM_WS, w_dim: int | None = None,
                       what: str = "direction") -> torch.Tensor:
    """Check shape [1, num_ws, w_dim] or [num_ws, w_dim], real floats, all finite -> float32 [num_ws, w_dim]."""
    if isinstance(t, np.ndarray):
        if t.dtype.kind not in "fiu":
            raise DirectionError(f"{what}: expected a numeric array, got dtype {t.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(t))
    if not isinstance(t, torch.Tensor):
        raise DirectionError(f"{what}: expected an array/tensor, got {type(t).__name__}")
    if t.is_complex() or t.dtype == torch.bool:
        raise DirectionError(f"{what}: expected real numbers, got dtype {t.dtype}")
    expected = f"[1, {num_ws}, {w_dim if w_dim else 'w_dim'}] or [{num_ws}, {w_dim if w_dim else 'w_dim'}]"
    shape = tuple(t.shape)
    if t.ndim == 3 and shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or t.shape[0] != num_ws or (w_dim is not None and t.shape[1] != w_dim) or t.shape[1] == 0:
        raise DirectionError(f"{what}: shape {list(shape)} is not a W+ direction; expected {expected}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise DirectionError(f"{what}: contains {bad} non-finite values (NaN or inf)")
    return t


def _from_zip(data: bytes, path: Path) -> torch.Tensor | np.ndarray:
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile as e:
        raise DirectionError(f"{path}: damaged or truncated zip archive ({e})") from None
    if any(n.endswith("data.pkl") for n in names):  # torch.save archive
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # truncated records, or objects the restricted unpickler refuses
            raise DirectionError(f"{path}: cannot read this torch archive safely ({type(e).__name__}: {e})") from None
    elif names and all(n.endswith(".npy") for n in names):  # np.savez archive
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            obj = {k: npz[k] for k in npz.files}
    else:
        raise DirectionError(f"{path}: zip archive is neither a torch.save file nor an .npz ({names[:5]})")
    if isinstance(obj, dict):
        if DIRECTION_KEY in obj:
            obj = obj[DIRECTION_KEY]
        elif len(obj) == 1:
            obj = next(iter(obj.values()))
        else:
            raise DirectionError(f"{path}: archive holds {sorted(obj)}; expected one tensor or key {DIRECTION_KEY!r}")
    return obj


def _safetensors_domain(data: bytes, path: Path) -> str | None:
    """The `domain` recorded in a .safetensors header's metadata (None when absent)."""
    import json
    import struct

    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError):
        return None  # st_load_bytes has already said what is wrong with the file
    domain = meta.get("domain")
    if domain is not None and domain not in DOMAINS:
        raise DirectionError(f"{path}: metadata domain {domain!r} is not one of {sorted(DOMAINS)}")
    return domain


def _read_array(path: Path) -> tuple[torch.Tensor | np.ndarray, str]:
    """(array, domain): the domain from the file's metadata, else from its name (`cat_*`)."""
    data = path.read_bytes()
    by_name = domain_of_direction_name(path.stem)
    if path.suffix == ".safetensors":
        try:
            tensors = st_load_bytes(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise DirectionError(f"{path}: not a valid safetensors file ({e})") from None
        if DIRECTION_KEY not in tensors:
            raise DirectionError(f"{path}: no tensor named {DIRECTION_KEY!r} (found {sorted(tensors)})")
        return tensors[DIRECTION_KEY], _safetensors_domain(data, path) or by_name
    if data.startswith(_NPY_MAGIC):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False), by_name
        except ValueError as e:  # object arrays need pickles; truncated data
            raise DirectionError(f"{path}: cannot read this .npy as a plain numeric array ({e})") from None
    if data.startswith(_ZIP_MAGIC):
        return _from_zip(data, path), by_name
    raise DirectionError(f"{path}: unrecognised file (expected .npy, a torch.save zip, .npz or .safetensors)")


def load_direction(path: str | os.PathLike, name: str | None = None, num_ws: int = NUM_WS,
                   w_dim: int | None = None) -> EditDirection:
    """Load one direction file (see module docstring for formats); `name` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"{path}: no such file")
    array, domain = _read_array(path)
    t = validate_direction(array, num_ws=num_ws, w_dim=w_dim, what=str(path))
    return EditDirection(name or path.stem, t, domain)


def load_directions(folder: str | os.PathLike, num_ws: int = NUM_WS,
                    w_dim: int | None = None) -> dict[str, EditDirection]:
    """All `*.npy`, `*.pt`, `*.pth`, `*.npz`, `*.safetensors` in `folder`, keyed by file stem (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DirectionError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DIRECTION_SUFFIXES)
    out: dict[str, EditDirection] = {}
    for p in files:
        if p.stem in out:
            raise DirectionError(f"{folder}: two files are named {p.stem!r} (different extensions)")
        out[p.stem] = load_direction(p, num_ws=num_ws, w_dim=w_dim)
    return out


def random_weights(pipe) -> bool:
    """Whether `pipe` runs on seeded random weights (from_random, from_preset, load_pipeline('random...'))."""
    return str(getattr(pipe, "weights_label", "")).startswith("random")


def load_direction_folder(folder: str | os.PathLike, num_ws: int = NUM_WS, w_dim: int | None = None,
                          project: bool = False, domain: str = DEFAULT_DOMAIN) -> tuple[dict[str, EditDirection], list[str]]:
    """The directions in `folder` that a `domain` model with W+ [num_ws, w_dim] can use, and one note per file
    left out (unreadable, another shape, another domain) or changed (`project`: another width, through
    `fit_direction`; for random weights only). A missing folder gives no directions and one note."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}, [f"edit directions folder `{folder}` not found"]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DIRECTION_SUFFIXES)
    return _usable(files, num_ws, w_dim, project, domain)


def usable_directions(files, num_ws: int, w_dim: int | None, project: bool = False, domain: str = DEFAULT_DOMAIN
                      ) -> tuple[dict[str, EditDirection], list[tuple[str, str]], list[str]]:
    """Which direction files a `domain` model with W+ [num_ws, w_dim] can use (the one rule for the app, the
    CLI, `add_directions` and the converter): (directions by name, (file name, why) for each file left out,
    one note per direction changed (`project`: another width, through `fit_direction`; random weights only))."""
    want = get_domain(domain)
    out: dict[str, EditDirection] = {}
    left_out: list[tuple[str, str]] = []
    changed: list[str] = []
    for f in files:
        f = Path(f)
        if f.stem in out:
            left_out.append((f.name, f"another file is already named {f.stem!r}"))
            continue
        try:
            d = load_direction(f, num_ws=num_ws)
        except DirectionError as e:
            left_out.append((f.name, one_line(e)))
            continue
        if d.domain != want.name:
            left_out.append((f.name, f"a direction of another model ({get_domain(d.domain).dataset}; "
                                     f"this one is {want.dataset})"))
            continue
        if w_dim is not None and d.w_dim != w_dim:
            if not project:
                left_out.append((f.name, f"width {d.w_dim}, the model's W+ is {num_ws}x{w_dim}"))
                continue
            changed.append(f"`{f.name}` ({num_ws}x{d.w_dim}) projected to the random model's {num_ws}x{w_dim}")
            d = EditDirection(d.name, fit_direction(d.tensor, w_dim), d.domain)
        out[d.name] = d
    return out, left_out, changed


def _usable(files, num_ws: int, w_dim: int | None, project: bool, domain: str) -> tuple[dict[str, EditDirection], list[str]]:
    found, left_out, changed = usable_directions(files, num_ws, w_dim, project, domain)
    return found, [f"skipped `{name}`: {why}" for name, why in left_out] + changed


def write_directions(folder: str | os.PathLike, found: Mapping[str, EditDirection], num_ws: int) -> list[str]:
    """Save each direction as folder/<name>.safetensors tagged with its domain (atomically, one by one); returns
    the names written."""
    for name, d in found.items():
        save_direction(Path(folder) / f"{name}.safetensors", d.tensor, num_ws=num_ws, domain=d.domain)
    return list(found)


def add_directions(pipeline_folder: str | os.PathLike, files) -> tuple[list[str], list[str]]:
    """Put the direction files that fit a pipeline folder (its domain and W+ shape, read from the folder) into
    its `directions/` as .safetensors tagged with the domain, each written atomically (files already there
    stay; one of the same name is replaced). Returns (names added, one note per file left out)."""
    folder = Path(pipeline_folder)
    info = check_pipeline_folder(folder)
    found, notes = _usable(sorted(Path(f) for f in files), info.num_ws, info.w_dim, False, info.domain)
    return write_directions(folder / DIRECTIONS_FOLDER, found, info.num_ws), notes


def how_to_get_directions(domain: str = DEFAULT_DOMAIN) -> str:
    """One line for a user who has no edit directions (the app's Edit tab, the command line): where the
    official ones come from, and how to load others."""
    d = get_domain(domain)
    names = ", ".join(OFFICIAL_DIRECTIONS.get(d.name, ()))
    other = "set GOAE_DIRECTIONS (or --directions) to a folder of direction files (.npy, .safetensors)"
    if d.name == DEFAULT_DOMAIN:
        return (f"No edit directions loaded. `goae download --accept-licences` adds the official ones ({names}; "
                f"from the GOAE repository, the authors' non-commercial terms) to the downloaded weights; or {other}.")
    return (f"No {d.title.lower()} edit directions loaded. The official ones ({names}) come with `goae download "
            f"--accept-licences`, into {downloads_folder() / DIRECTIONS_DIR}: convert the {d.dataset} weights with "
            f"`--domain {d.name} --directions` that folder, or {other}.")


def directions_for(pipe, folder: str | os.PathLike | None) -> tuple[dict[str, EditDirection], list[str]]:
    """`load_direction_folder` for this pipeline's domain and W+ shape (projecting other widths on random
    weights only). No folder: the directions that came with the weights (`pipe.directions_dir`), if any."""
    folder = folder or getattr(pipe, "directions_dir", None)
    if not folder:
        return {}, []
    g = pipe.generator
    domain = getattr(getattr(pipe, "config", None), "domain", None) or DEFAULT_DOMAIN
    return load_direction_folder(folder, g.num_ws, g.w_dim, project=random_weights(pipe), domain=domain)


def resolve_names(strengths: Mapping[str, float], directions: Mapping[str, EditDirection],
                  notes: list[str] = ()) -> dict[str, float]:
    """User edit names -> direction names ('glasses' -> 'glass'), with finite strengths; DirectionError names
    what is unknown, with the note that says why a file was left out."""
    out = {ALIASES.get(k, k): float(v) for k, v in strengths.items()}
    for name, alpha in out.items():
        if not np.isfinite(alpha):
            raise DirectionError(f"strength of {name!r} must be finite, got {alpha}")
    unknown = sorted(set(out) - set(directions))
    if unknown:
        why = [n for n in notes if any(f"`{u}." in n for u in unknown)]
        raise DirectionError(f"unknown edit(s) {unknown}; available: {sorted(directions)}"
                             + (f" ({'; '.join(why)})" if why else ""))
    return out


def edit_offset(directions: Mapping[str, EditDirection], strengths: Mapping[str, float]) -> torch.Tensor:
    """`combine` with the glasses compensation wherever the folder has a 'glass' direction (the app and CLI rule)."""
    return combine(directions, strengths, glasses_key="glass" if "glass" in directions else None)


def combine(directions: Mapping[str, EditDirection], strengths: Mapping[str, float],
            glasses_key: str | None = "glass", entanglement: float = 0.8) -> torch.Tensor:
    """W+ offset [num_ws, w_dim] = sum_a alpha_a * dir_a  - entanglement * glass (once, see module doc).

    `glasses_key=None` (or entanglement=0) disables the compensation, e.g. for non-face directions.
    """
    unknown = sorted(set(strengths) - set(directions))
    if unknown:
        raise DirectionError(f"unknown edit direction(s) {unknown}; available: {sorted(directions)}")
    if not directions:
        raise DirectionError("no edit directions given")
    shapes = {tuple(d.tensor.shape) for d in directions.values()}
    if len(shapes) != 1:
        raise DirectionError(f"edit directions have different shapes: {sorted(shapes)}")
    offset = torch.zeros(next(iter(shapes)), dtype=torch.float32)
    compensate = False
    for name, alpha in strengths.items():
        alpha = float(alpha)
        if not np.isfinite(alpha):
            raise DirectionError(f"strength of {name!r} must be finite, got {alpha}")
        if alpha == 0.0:
            continue
        offset = offset + alpha * directions[name].tensor
        compensate |= name != glasses_key
    if compensate and glasses_key is not None and entanglement != 0.0:
        if glasses_key not in directions:
            raise DirectionError(f"the glasses compensation needs a {glasses_key!r} direction "
                                 f"(have {sorted(directions)}); pass glasses_key=None to disable it")
        offset = offset - entanglement * directions[glasses_key].tensor
    return offset


def save_direction(path: str | os.PathLike, tensor: torch.Tensor | np.ndarray, num_ws: int = NUM_WS,
                   domain: str | None = None) -> Path:
    """Write a direction as .safetensors (key 'direction', shape [1, num_ws, w_dim] like the official files),
    with its domain in the metadata (default: what the file name implies, `cat_*` -> cat, else human)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DirectionError(f"{path}: directions are saved as .safetensors")
    domain = get_domain(domain or domain_of_direction_name(path.stem)).name
    t = validate_direction(tensor, num_ws=num_ws, what=str(path))
    data = st_save_bytes({DIRECTION_KEY: t[None].contiguous()},
                         metadata={"format": "goae-w-plus-direction", "domain": domain})
    return atomic_write_bytes(path, data)


def fit_direction(direction, w_dim: int, seed: int = 0) -> torch.Tensor:
    """A [num_ws, W] direction -> [num_ws, w_dim] through a fixed seeded orthonormal projection (norm kept).

    Only for trying edit controls on the small random model with the official 512-wide files: the result
    is deterministic and distinct per file, and means as little as the random model itself."""
    d = torch.as_tensor(direction, dtype=torch.float32)
    W = d.shape[-1]
    if W == w_dim:
        return d
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(W, w_dim), min(W, w_dim), generator=g))  # orthonormal columns
    proj = q if W > w_dim else q.T                                                   # [W, w_dim]
    return d @ proj * (W / w_dim) ** 0.5
