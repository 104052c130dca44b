"""Official checkpoints -> goae folders, without ever running the checkpoints' code.

An official EG3D network pickle (`ffhqrebalanced512-128.pkl`) embeds the *source code* of its
classes and the official loader `exec`s it; any pickle can also call any importable function.
We never do either. `OfficialUnpickler` resolves only the handful of globals an EG3D network
pickle contains (README of parity/eg3d §7) and turns every official class into inert data:

  * `torch_utils.persistence._reconstruct_persistent_obj(meta)` -> `PickledObject(class_name, state)`
    (meta['module_src'] is ignored, never exec'd);
  * non-persistent official classes (OSGDecoder, renderer classes, nn.Sequential/Softplus) ->
    stand-ins that only record the state they are given;
  * tensors -> torch's own rebuild functions over storages read with `torch.load(weights_only=True)`.

Any other global raises `UnsafePickleError` before it can be called. From the resulting record
tree we rebuild `G_ema`'s state dict with the official key names and its constructor kwargs, and
load them into goae's `EG3DGenerator` with strict key/shape checks.

Nothing in a file is trusted to be small either: a few bytes of pickle or zip can describe gigabytes
(memo indices, shared sub-objects expanded by a walk, compressed storages, huge constructor
kwargs). Before anything is built we walk the opcodes (`_scan_pickle`), bound every walk over the
record tree (`_Walk`), refuse compressed zip entries and tensors that declare more bytes than the
file holds, check the kwargs against goae's architectures (`goae.hub.BOUNDS`) and compare the
state dict with the model built on the meta device; NaN/Inf weights are refused too.

Cats: NVIDIA's `afhqcats512-128.pkl` converts like the FFHQ pickle (its kwargs are read, not assumed; it
differs only in rendering_kwargs.avg_camera_pivot [0, 0, -0.06]). A folder records its domain (`--domain`,
default human): a generator whose pivot is AFHQ's is refused without `--domain` rather than guessed.
GOAE checkpoints saved differently from encoder_FFHQ.pt / afa_FFHQ.pt are read through a small table of
named key-mapping rules (`load_goae_checkpoint`), each printed and recorded in the model card.

CLI:  python -m goae.convert eg3d ffhqrebalanced512-128.pkl weights/generator [--domain human|cat] [--overwrite]
      python -m goae.convert goae --eg3d PKL --encoder encoder_FFHQ.pt --afa afa_FFHQ.pt OUT [--domain human|cat]
                                  [--directions ws_edit/] [--overwrite]
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import copyreg
import functools
import io
import os
import pickle
import pickletools
import reprlib
import stat
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from goae.hub import DomainMismatchWarning, WeightsFolderError, check_config, check_finite, check_pipeline_folder, describe_mismatch, meta_module
from goae.card import Provenance, current_command, write_model_card
from goae.domains import DEFAULT_DOMAIN, DOMAINS, domain_of_pivot, get_domain
from goae.edit import DIRECTION_SUFFIXES, DirectionError, load_direction, save_direction
from goae.io import atomic_dir, check_output_dir, one_line, sha256_file

# ----------------------------------------------------------------------------- errors


class CheckpointError(Exception):
    """A checkpoint file cannot be used (base class of all converter errors)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends early (interrupted download or copy)."""


class WrongCheckpointError(CheckpointError):
    """The file is readable but is not the checkpoint that was expected."""


class StateDictMismatchError(WrongCheckpointError):
    """Keys or shapes of a state dict do not match the model."""


class UnsafePickleError(CheckpointError):
    """The pickle references code that an official checkpoint never contains."""


class OversizedCheckpointError(WrongCheckpointError):
    """The file describes far more data or structure than it holds (a pickle or zip bomb?)."""


class UnsupportedArchitectureError(WrongCheckpointError):
    """The network is not an EG3D generator that goae can build (other class, kwargs out of range)."""


class NonFiniteWeightsError(CheckpointError):
    """Weights hold NaN or Inf values."""


class DomainMismatchError(CheckpointError):
    """The generator's camera pivot says another domain than the one asked for (or assumed)."""


# ----------------------------------------------------------------------------- inert records


class PickledObject:
    """An object of the official code kept as plain data: its class name and pickled __dict__."""

    class_name = "?"

    def __new__(cls, *args, **kwargs):  # accept NEWOBJ/REDUCE arguments, run nothing
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:  # pickle BUILD: just keep the state
        self.state = dict(state) if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"PickledObject({self.class_name!r})"


def _persistent_record(meta: Any) -> PickledObject:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keep the data, skip the exec."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and "state" in meta):
        raise WrongCheckpointError("malformed persistent object in the pickle (expected meta with type/class_name/state)")
    obj = PickledObject()
    obj.class_name = str(meta["class_name"])
    obj.state = dict(meta["state"])
    return obj


_STANDINS: dict[str, type] = {}


def _standin(fullname: str) -> type:
    # One subclass per official class so that isinstance/class_name stay meaningful.
    if fullname not in _STANDINS:
        _STANDINS[fullname] = type(fullname.rsplit(".", 1)[-1], (PickledObject,), {"class_name": fullname})
    return _STANDINS[fullname]


# ----------------------------------------------------------------------------- safe rebuild functions


def _load_storage(data: bytes):
    """torch.storage._load_from_bytes, but with weights_only=True (the official one is unrestricted)."""
    if not isinstance(data, bytes):
        raise WrongCheckpointError(f"an embedded tensor storage is a {type(data).__name__}, expected bytes")
    if data.startswith(_ZIP_MAGIC):  # official storages are legacy streams; a zip must not be a bomb
        _check_zip(io.BytesIO(data), len(data), "an embedded tensor storage")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"an embedded tensor storage was refused by torch's weights_only loader: {_first_line(e)}") from None


def _no_hooks(hooks: Any) -> None:
    if hooks:  # hooks would be callables run later; official checkpoints never have any
        raise UnsafePickleError("a pickled tensor carries backward hooks (callables); refusing to load")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)  # python attrs on a Parameter are not needed


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """numpy.dtype for the short numeric specs numpy pickles ('f8', 'i8', 'b1'): a nested field spec
    could smuggle objects, or make numpy walk a shared structure 2**n times."""
    if not isinstance(spec, str) or len(spec) > 8:
        raise UnsafePickleError(f"refusing numpy dtype spec {_short(spec)}")
    dtype = np.dtype(spec)
    if dtype.kind not in "biufc":
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}")
    return dtype


def _numpy_scalar(dtype: Any, data: bytes | None = None):
    """numpy.core.multiarray.scalar for plain numeric dtypes only (an object dtype could smuggle objects)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError(f"refusing numpy scalar of dtype {_short(dtype)}")
    return np.frombuffer(data, dtype=dtype, count=1)[0].copy()


_INERT_CLASSES = (
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.Softplus",
)

_ALLOWED: dict[str, Any] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _persistent_record,
    "dnnlib.util.EasyDict": dict,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.object": object,
    "copyreg._reconstructor": copyreg._reconstructor,  # only ever gets allowed classes
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,  # pickles written with numpy 1.x (the releases)
    "numpy._core.multiarray.scalar": _numpy_scalar,  # numpy 2.x
    "torch.storage._load_from_bytes": _load_storage,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
    **{name: _standin(name) for name in _INERT_CLASSES},
}


def _private_copy(obj: Any) -> Any:
    """A per-load handle on an allowed global. A pickle can BUILD (setattr) on any object it can
    name; handing out fresh wrappers keeps such edits inside this one load instead of mutating
    our module-level functions/classes for every later load. Builtin types are immutable already."""
    if isinstance(obj, type) and issubclass(obj, PickledObject):
        return type(obj.__name__, (obj,), {})
    if isinstance(obj, types.FunctionType) or obj is copyreg._reconstructor:
        return functools.partial(obj)
    return obj


class OfficialUnpickler(pickle.Unpickler):
    """Unpickler for EG3D network pickles that can only build data (see module docstring)."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._globals: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles may spell globals the Python 2 way (__builtin__, copy_reg): map them
        # the way pickle itself does before checking, so the allowlist sees the real target.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        fullname = f"{module}.{name}"
        if fullname not in _ALLOWED:
            raise UnsafePickleError(
                f"the pickle references the global '{fullname}', which an official EG3D network pickle "
                f"never contains; refusing to load it (it could run arbitrary code)"
            )
        if fullname not in self._globals:
            self._globals[fullname] = _private_copy(_ALLOWED[fullname])
        return self._globals[fullname]

    def persistent_load(self, pid: Any) -> Any:
        raise WrongCheckpointError("the pickle uses persistent ids (a torch.save file?), not an EG3D network pickle")


# ----------------------------------------------------------------------------- reading a network pickle


_ZIP_MAGIC = b"PK\x03\x04"
_TORCH_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4


def _short(x: Any) -> str:
    # For quoting pickled data in messages: plain repr would expand a shared structure 2**n times.
    text = _REPR.repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


def _first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    for s in lines:  # torch's weights_only message names the global on such a line
        if "Unsupported global" in s or "GLOBAL" in s:
            return s
    return lines[0] if lines else type(e).__name__


def _check_file(path: Path) -> int:
    """Refuse what is not a regular file before opening it (a FIFO blocks forever, /dev/zero never
    ends); links to files are fine. Returns the size in bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise WrongCheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise WrongCheckpointError(f"{path} is a folder, expected a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise WrongCheckpointError(f"{path} is not a regular file (a FIFO, socket or device?), expected a checkpoint file")
    return st.st_size


# Limits on what a network pickle may describe. A released EG3D pickle is far below them: G_ema has
# ~80 modules 5 levels deep and ~100 kwargs values; the tiny test pickle (G, D) is 24k opcodes.
_MAX_PICKLE_OPS = 2_000_000
_MAX_DEPTH = 32
_MAX_KWARGS_NODES = 10_000
_MAX_MODULES = 20_000
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Bounded:
    """A file view whose read(n) never asks for more than is left: pickletools would otherwise
    request a declared length (up to 2**64) from the file in one call."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline()

    def tell(self) -> int:
        return self.f.tell()


def _scan_pickle(path: Path, size: int) -> None:
    """Walk the opcodes without building anything, before the real unpickler runs: a truncated file
    never reaches STOP, and some opcodes make CPython's C unpickler allocate far beyond the file
    (a memo index of 2**29 in a 9-byte pickle fills an 8 GB table). A real pickler numbers memo
    entries 0, 1, 2, ..., so an index above the opcode count is refused."""
    with open(path, "rb") as f:
        try:
            for n_ops, (op, arg, pos) in enumerate(pickletools.genops(_Bounded(f, size)), 1):
                if n_ops > _MAX_PICKLE_OPS:
                    raise OversizedCheckpointError(f"{path} has more than {_MAX_PICKLE_OPS:,} pickle opcodes "
                                                   f"(an EG3D network pickle has tens of thousands)")
                if op.name in _MEMO_PUTS and arg >= n_ops:
                    raise OversizedCheckpointError(f"{path}: pickle memo index {arg} at opcode {n_ops} is one no pickler "
                                                   f"writes (the unpickler would allocate {16 * arg:,} bytes for it)")
                if op.name == "FRAME" and arg > size - pos:  # the C unpickler would read(arg) at once
                    break
                if op.name == "STOP":
                    return
        except CheckpointError:
            raise
        except Exception as e:  # pickletools: unknown opcode vs. data that ends early
            if "unknown" in str(e):
                raise WrongCheckpointError(f"{path} is not a readable network pickle ({_first_line(e)})") from None
    raise TruncatedCheckpointError(f"{path} is truncated (the pickle ends early); re-download it")


def _check_zip(file: Any, size: int, what: str) -> None:
    """torch.save writes every zip entry uncompressed. A compressed entry is how a 2 MB file expands
    to GBs inside torch.load (a zip bomb), so refuse it, and require the entries to fit in the file."""
    try:
        with zipfile.ZipFile(file) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise WrongCheckpointError(f"{what} is not a readable zip archive ({_first_line(e)})") from None
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise OversizedCheckpointError(f"{what} has compressed entries ({_preview(packed, 3)}); torch.save never "
                                       f"compresses, and a compressed tensor can expand to gigabytes (a zip bomb?)")
    total = sum(i.file_size for i in infos)
    if total > size:
        raise OversizedCheckpointError(f"{what}: its zip entries declare {total:,} bytes, more than the {size:,}-byte file holds")


def _check_declared_bytes(sd: Mapping[str, torch.Tensor], size: int, what: str) -> None:
    # Every tensor of a real checkpoint is stored in the file. A view can declare any size over a
    # tiny storage (stride 0); anything that later copies it would allocate the declared size.
    declared = sum(t.numel() * t.element_size() for t in sd.values())
    if declared > size:
        raise OversizedCheckpointError(f"{what}: its tensors declare {declared:,} bytes, more than the {size:,}-byte "
                                       f"file holds (views of a tiny storage?)")


def read_network_pickle(pkl_path: str | os.PathLike) -> dict:
    """Unpickle an official network pickle safely; modules come back as `PickledObject`s."""
    path = Path(pkl_path)
    size = _check_file(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WrongCheckpointError(f"{path} is empty (0 bytes); re-download the checkpoint")
    if head.startswith(_ZIP_MAGIC):
        raise WrongCheckpointError(f"{path} is a torch .pt (zip) file, not an EG3D network pickle (.pkl)")
    if head.startswith(_TORCH_LEGACY_MAGIC):
        raise WrongCheckpointError(f"{path} is a legacy torch.save file, not an EG3D network pickle (.pkl)")
    if head[0] != 0x80:  # official pickles use protocol >= 2, which starts with the PROTO opcode
        raise WrongCheckpointError(f"{path} is not a network pickle (no pickle protocol header)")
    _scan_pickle(path, size)
    try:
        with open(path, "rb") as f:
            data = OfficialUnpickler(f).load()
    except CheckpointError as e:  # raised inside the unpickler: name the file
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:
        raise WrongCheckpointError(f"{path} is not a readable network pickle: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(data, dict):
        raise WrongCheckpointError(f"{path} holds a {type(data).__name__}, expected a network pickle dict with 'G_ema'")
    return data


class _Walk:
    """Bounds a walk over the record tree. A pickle can reference one object from many places, so
    a 1 KB file can describe a tree of 2**30 nodes; shared objects are walked (and counted) once
    per reference, which bounds the expanded size, and too deep a walk is a cycle or a bomb."""

    def __init__(self, what: str, max_nodes: int, max_depth: int = _MAX_DEPTH):
        self.what, self.max_nodes, self.max_depth, self.nodes = what, max_nodes, max_depth, 0

    def step(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise OversizedCheckpointError(f"{self.what} has more than {self.max_nodes:,} entries, counting shared "
                                           f"sub-objects once per reference (an EG3D pickle has a few hundred)")
        if depth > self.max_depth:
            raise OversizedCheckpointError(f"{self.what} is nested more than {self.max_depth} levels deep (or has a cycle)")


def module_state_dict(obj: PickledObject, prefix: str = "", walk: _Walk | None = None, depth: int = 0) -> dict[str, torch.Tensor]:
    """torch.nn.Module.state_dict() of a pickled module record: parameters, persistent buffers, children."""
    walk = walk or _Walk("the module tree", _MAX_MODULES)
    walk.step(depth)
    st = obj.state
    if "_parameters" not in st or "_modules" not in st:
        raise WrongCheckpointError(f"pickled object {obj.class_name!r} at '{prefix or '<root>'}' is not a torch module")
    sd: dict[str, torch.Tensor] = {}
    skip = st.get("_non_persistent_buffers_set") or set()
    tensors = list(st["_parameters"].items()) + [(n, b) for n, b in st.get("_buffers", {}).items() if n not in skip]
    for name, t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise WrongCheckpointError(f"'{prefix}{name}' is a {type(t).__name__}, expected a tensor")
        sd[prefix + name] = t.detach()
    for name, child in st["_modules"].items():
        if child is None:
            continue
        if not isinstance(child, PickledObject):
            raise WrongCheckpointError(f"submodule '{prefix}{name}' is a {type(child).__name__}, not a module")
        sd.update(module_state_dict(child, prefix + name + ".", walk, depth + 1))
    return sd


def _plain(x: Any, walk: _Walk | None = None, depth: int = 0) -> Any:
    """EasyDicts/OrderedDicts/numpy scalars -> JSON-friendly python (for constructor kwargs)."""
    walk = walk or _Walk("the constructor kwargs", _MAX_KWARGS_NODES)
    walk.step(depth)
    if isinstance(x, dict):
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise WrongCheckpointError(f"{walk.what} have non-string keys ({_preview(map(repr, bad), 3)})")
        return {k: _plain(v, walk, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v, walk, depth + 1) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    raise WrongCheckpointError(f"{walk.what} hold a {type(x).__name__}; constructor kwargs are plain values")


@dataclass
class OfficialGenerator:
    """What goae needs from a pickled TriPlaneGenerator, as plain data."""

    class_name: str
    init_kwargs: dict
    state_dict: dict[str, torch.Tensor]
    neural_rendering_resolution: int | None
    rendering_kwargs: dict = field(default_factory=dict)


def read_official_generator(pkl_path: str | os.PathLike, key: str = "G_ema") -> OfficialGenerator:
    """Read `key` (default G_ema) of an official network pickle: state dict with official names,
    constructor kwargs, and the pickled attributes neural_rendering_resolution / rendering_kwargs."""
    data = read_network_pickle(pkl_path)
    if key not in data:
        keys = sorted(_short(k) for k in list(data)[:10])  # a key may be a huge shared tuple
        raise WrongCheckpointError(f"{pkl_path} has no {key!r} (keys: {', '.join(keys)}); is it an EG3D network pickle?")
    G = data[key]
    if not isinstance(G, PickledObject) or "_init_kwargs" not in G.state:
        raise WrongCheckpointError(f"{pkl_path}: {key!r} is not a persistent EG3D module (got {_short(G)})")
    if G.state.get("_init_args"):
        raise WrongCheckpointError(f"{pkl_path}: {key!r} was built with positional args {_short(G.state['_init_args'])}; "
                                   f"expected keyword args only")
    try:
        nrr = G.state.get("neural_rendering_resolution")
        off = OfficialGenerator(
            class_name=G.class_name,
            init_kwargs=_plain(G.state["_init_kwargs"], _Walk(f"{pkl_path}: {key}'s constructor kwargs", _MAX_KWARGS_NODES)),
            state_dict=module_state_dict(G, walk=_Walk(f"{pkl_path}: {key}'s module tree", _MAX_MODULES)),
            neural_rendering_resolution=None if nrr is None else int(nrr),
            rendering_kwargs=_plain(G.state.get("rendering_kwargs") or {}, _Walk(f"{pkl_path}: {key}.rendering_kwargs", _MAX_KWARGS_NODES)),
        )
    except CheckpointError:
        raise
    except Exception as e:  # malformed records (wrong types, ...)
        raise WrongCheckpointError(f"{pkl_path}: malformed {key!r} ({type(e).__name__}: {_first_line(e)})") from None
    _check_declared_bytes(off.state_dict, Path(pkl_path).stat().st_size, f"{pkl_path} ({key})")
    return off


# ----------------------------------------------------------------------------- state dict checks


def shape_map(module_or_sd: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """{key: shape} of a model's state dict (what the loaders validate against)."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, torch.nn.Module) else module_or_sd
    return {k: tuple(v.shape) for k, v in sd.items()}


def _preview(items: Sequence[str], n: int = 8) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, Sequence[int]], what: str = "checkpoint") -> None:
    """Raise StateDictMismatchError listing missing, unexpected and mis-shaped keys (one line)."""
    mismatch = describe_mismatch(shape_map(sd), expected)
    if mismatch:
        raise StateDictMismatchError(f"{what} does not match the model; {mismatch}")


# ----------------------------------------------------------------------------- EG3D


_GENERATOR_CLASS = "TriPlaneGenerator"
_REQUIRED_KWARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "rendering_kwargs")


def load_official_generator(pkl_path: str | os.PathLike, key: str = "G_ema"):
    """Official network pickle -> goae `EG3DGenerator` (eval mode) with the pickled weights."""
    off = read_official_generator(pkl_path, key)  # validate the file before touching the model code
    from goae.models.eg3d import _OFFICIAL_NAMED, EG3DGenerator  # lazily: the model code is only for loading

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
    config = {k: v for k, v in kwargs.items() if k in _OFFICIAL_NAMED}
    config.update(synthesis_kwargs={k: v for k, v in kwargs.items() if k not in _OFFICIAL_NAMED},
                  neural_rendering_resolution=off.neural_rendering_resolution)
    check_config("generator", config, where=f"{what} constructor kwargs", error=UnsupportedArchitectureError)

    def build():
        return EG3DGenerator.from_official_kwargs(kwargs, neural_rendering_resolution=off.neural_rendering_resolution)

    expected = shape_map(meta_module(build, f"{what} constructor kwargs", UnsupportedArchitectureError))
    check_state_dict(off.state_dict, expected, what)
    check_finite(off.state_dict, what, NonFiniteWeightsError)
    G = build()
    G.load_state_dict(off.state_dict, strict=True)
    return G.eval()


def convert_eg3d(pkl_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                 domain: str | None = None) -> Path:
    """Write a diffusers-style folder (config.json + diffusion_pytorch_model.safetensors) atomically. `domain`
    ('human', 'cat'; None: human unless the generator's pivot is AFHQ's, which is refused) goes in the card."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before the (slow) load
    _check_domain_name(domain)
    G = load_official_generator(pkl_path)
    domain, notes = choose_domain(domain, G, pkl_path)
    expected = G.state_dict()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        G.save_pretrained(tmp, safe_serialization=True)
        written = load_file(tmp / "diffusion_pytorch_model.safetensors")  # verify before publishing
        if written.keys() != expected.keys() or any(not torch.equal(written[k], expected[k]) for k in expected):
            raise CheckpointError(f"verification of the written weights in {tmp} failed")
        write_model_card(tmp, "generator", _provenance({"eg3d": pkl_path}, domain=domain, notes=notes),
                         repo_hint=out_dir.name)
    return out_dir


def _provenance(sources: Mapping[str, str | os.PathLike], domain: str = "human", key_mapping: Sequence[str] = (),
                notes: Sequence[str] = ()) -> "Provenance":
    """Model-card provenance of a conversion: each source file's name and sha256, and the command."""
    return Provenance(sources={Path(p).name: sha256_file(p) for p in sources.values()}, command=current_command(),
                      note="converted from the official checkpoints by goae.convert", domain=domain,
                      key_mapping=list(key_mapping), notes=list(notes))


# ----------------------------------------------------------------------------- domains


def _warn(line: str) -> None:
    print(f"goae.convert: {line}", file=sys.stderr)


def _check_domain_name(domain: str | None) -> None:
    if domain is not None and domain not in DOMAINS:
        raise CheckpointError(f"unknown domain {domain!r}; choose from {sorted(DOMAINS)}")


def choose_domain(domain: str | None, generator, source: str | os.PathLike) -> tuple[str, list[str]]:
    """The domain a converted folder records, and notes for its card. None means "not given": human, unless
    the generator's avg_camera_pivot is that of another domain's released model (AFHQ cats: [0, 0, -0.06]),
    which is refused rather than guessed. A domain given against the pivot is kept, with a warning."""
    pivot = getattr(generator, "rendering_kwargs", {}).get("avg_camera_pivot")
    implied = domain_of_pivot(pivot)
    src = Path(source).name
    if domain is None:
        if implied is not None and implied.name != DEFAULT_DOMAIN:
            raise DomainMismatchError(
                f"{source}: its avg_camera_pivot {list(pivot)} is that of EG3D's {implied.dataset} model "
                f"({implied.generator_file}), so it is probably not a {DEFAULT_DOMAIN} model; say which photos it "
                f"inverts: --domain {implied.name}, or --domain {DEFAULT_DOMAIN} to override (library: domain='{implied.name}')")
        return DEFAULT_DOMAIN, []
    want = get_domain(domain)
    if implied is not None and implied.name != want.name:
        note = (f"domain '{want.name}' was chosen by the command, although the generator {src} has the "
                f"avg_camera_pivot {list(pivot)} of EG3D's {implied.dataset} model ({implied.generator_file})")
        _warn(f"warning: {note}")
        return want.name, [note]
    return want.name, []


# ----------------------------------------------------------------------------- edit directions


def _copy_directions(folder: str | os.PathLike, out: Path, num_ws: int, w_dim: int, domain: str = "human") -> list[str]:
    """Validated edit directions of `folder` -> out/*.safetensors (so an app loading the pipeline folder gets
    its edit sliders), each saved with `domain` in its metadata. Only the folder's domain is copied (the
    official `cat_*` files are AFHQ cats, the others FFHQ faces): every file left out is printed with the
    reason. Returns the names copied."""
    want = get_domain(domain)
    names: list[str] = []
    for f in sorted(Path(folder).iterdir()):
        if f.name.startswith("."):
            continue
        why = None
        if not f.is_file() or f.suffix not in DIRECTION_SUFFIXES:
            why = f"not a direction file ({', '.join(DIRECTION_SUFFIXES)})"
        else:
            try:
                d = load_direction(f, num_ws=num_ws)
            except DirectionError as e:
                d, why = None, one_line(e)
            if d is not None:
                if d.domain != want.name:
                    why = (f"a {d.domain} direction ({get_domain(d.domain).dataset}); this folder is "
                           f"{want.name} ({want.dataset})")
                elif d.w_dim != w_dim:
                    why = f"width {d.w_dim}, the generator's W+ is {num_ws}x{w_dim}"
                elif d.name in names:
                    why = f"another file is already named {d.name!r}"
        if why:
            _warn(f"edit direction {f.name} left out: {why}")
            continue
        save_direction(out / f"{d.name}.safetensors", d.tensor, num_ws=num_ws, domain=want.name)
        names.append(d.name)
    _warn(f"copied {len(names)} {want.name} edit direction(s)" + (f": {', '.join(names)}" if names else ""))
    return names


# ----------------------------------------------------------------------------- GOAE .pt state dicts


def _read_torch_file(pt_path: str | os.PathLike) -> tuple[Path, int, Any]:
    """(path, size, object) of a torch.save file, read with torch.load(weights_only=True) after the
    checks that keep a damaged or hostile file from costing more than its size."""
    path = Path(pt_path)
    size = _check_file(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WrongCheckpointError(f"{path} is empty (0 bytes); re-download the checkpoint")
    is_zip = head.startswith(_ZIP_MAGIC)
    if not is_zip and not head.startswith(_TORCH_LEGACY_MAGIC):
        kind = "a plain pickle (an EG3D .pkl?)" if head[0] == 0x80 else "not a torch checkpoint"
        raise WrongCheckpointError(f"{path} is {kind}; expected a torch.save .pt state dict")
    if is_zip and not zipfile.is_zipfile(path):  # the zip directory sits at the end of the file
        raise TruncatedCheckpointError(f"{path} is truncated (zip central directory missing); re-download it")
    if is_zip:
        _check_zip(path, size, str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise UnsafePickleError(f"{path}: refused by torch's weights_only loader: {_first_line(e)}") from None
        raise WrongCheckpointError(f"{path} is not a readable torch checkpoint: {_first_line(e)}") from None
    except EOFError:
        raise TruncatedCheckpointError(f"{path} is truncated; re-download it") from None
    except Exception as e:
        raise WrongCheckpointError(f"{path} is not a readable torch checkpoint: {type(e).__name__}: {_first_line(e)}") from None
    return path, size, obj


def _flat_state_dict(obj: Any, path: Path, size: int, hint: str = "") -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise WrongCheckpointError(f"{path} holds a {type(obj).__name__}, expected a flat state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WrongCheckpointError(f"{path} is not a flat state dict of tensors (entries {_preview(bad, 4)}){hint}")
    _check_declared_bytes(obj, size, str(path))
    return dict(obj)


def load_official_state_dict(
    pt_path: str | os.PathLike, expected_keys: Mapping[str, Sequence[int]] | None = None, what: str | None = None
) -> dict[str, torch.Tensor]:
    """Load a flat official state dict (encoder_FFHQ.pt / afa_FFHQ.pt) with torch.load(weights_only=True)
    and, if `expected_keys` ({key: shape}) is given, check keys and shapes against it (no key mapping:
    see `load_goae_checkpoint` for that)."""
    path, size, obj = _read_torch_file(pt_path)
    what = what or str(path)
    sd = _flat_state_dict(obj, path, size)
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


def _component_class(component: str):
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
    cls = _component_class(component)
    title = "encoder" if component == "encoder" else "AFA"
    config = dict(config or {})
    check_config(component, config, where=f"{component} config", error=UnsupportedArchitectureError)
    path, size, obj = _read_torch_file(pt_path)
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
    sd = _flat_state_dict(obj, path, size, hint)

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
            f"({_preview(differ, 3)}); they are fixed by img_size / window_size / pretrained_window_sizes, so the "
            f"file is for a different encoder configuration (not something a key mapping can fix)")
    return GOAECheckpoint(sd, config, [f"{label}: {line}" for line in applied])


def convert_goae(
    eg3d_pkl: str | os.PathLike,
    encoder_pt: str | os.PathLike,
    afa_pt: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    encoder_config: Mapping[str, Any] | None = None,
    afa_config: Mapping[str, Any] | None = None,
    directions: str | os.PathLike | None = None,
    domain: str | None = None,
) -> Path:
    """Official EG3D pickle + encoder_FFHQ.pt + afa_FFHQ.pt (or the cat ones) -> GOAEPipeline folder
    (model_index.json with its `domain`, generator/, encoder/, afa/, README.md model card with the sources'
    sha256 and any key mapping), written atomically. The configs default to the released ones.
    `domain`: 'human' or 'cat'; None is human, but a generator with AFHQ's pivot is then refused (say which).
    `directions`: a folder of edit directions (the official ws_edit/*.npy); those of the domain are copied,
    validated and tagged with it, into the folder's directions/."""
    from goae.pipeline import GOAEPipeline  # lazily: diffusers and the model code (seconds) only for this

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before the (slow) load
    _check_domain_name(domain)
    if directions is not None and not Path(directions).is_dir():
        raise CheckpointNotFoundError(f"edit directions folder {directions} does not exist")
    # Every file and config is checked (models on the meta device) before a real model is built.
    enc = load_goae_checkpoint(encoder_pt, "encoder", encoder_config)
    afa_ck = load_goae_checkpoint(afa_pt, "afa", afa_config)
    generator = load_official_generator(eg3d_pkl)
    domain, notes = choose_domain(domain, generator, eg3d_pkl)
    key_mapping = enc.key_mapping + afa_ck.key_mapping
    for line in key_mapping:
        _warn(line)
    encoder, afa = _component_class("encoder")(**enc.config), _component_class("afa")(**afa_ck.config)
    encoder.load_state_dict(enc.state_dict, strict=True)
    afa.load_state_dict(afa_ck.state_dict, strict=True)
    pipe = GOAEPipeline(generator=generator, encoder=encoder.eval(), afa=afa.eval(), domain=domain)
    provenance = _provenance({"eg3d": eg3d_pkl, "encoder": encoder_pt, "afa": afa_pt}, domain=domain,
                             key_mapping=key_mapping, notes=notes)
    pipe.provenance = provenance
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        pipe.save_pretrained(tmp, provenance=provenance, repo_hint=out_dir.name)  # with its model card
        if directions is not None:
            shipped = _copy_directions(directions, tmp / "directions", generator.num_ws, generator.w_dim, domain)
            provenance.notes.append(f"edit directions ({domain}): {', '.join(shipped) or 'none'}, from {Path(directions).name}/")
            write_model_card(tmp, "pipeline", provenance, repo_hint=out_dir.name)
        try:  # the folder must pass the check that loading it will do (and the parts must fit together)
            with warnings.catch_warnings():  # a domain given against the pivot was reported above already
                warnings.simplefilter("ignore", DomainMismatchWarning)
                check_pipeline_folder(tmp)
        except WeightsFolderError as e:
            raise WrongCheckpointError(f"the converted pipeline is not usable: {str(e).replace(str(tmp), str(out_dir))}") from None
    return out_dir


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None, prog: str = "python -m goae.convert") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Convert official EG3D/GOAE checkpoints to goae folders (no pickle code is run).")
    sub = parser.add_subparsers(dest="command", required=True)
    domain_help = ("what the weights invert: human (FFHQ, the default) or cat (AFHQ); recorded in the folder. "
                   "A generator with AFHQ's camera pivot is refused without it")
    p = sub.add_parser("eg3d", help="EG3D network pickle -> generator folder (config.json + safetensors)")
    p.add_argument("pkl", help="official network pickle, e.g. ffhqrebalanced512-128.pkl or afhqcats512-128.pkl")
    p.add_argument("out_dir", help="output folder (written atomically)")
    p.add_argument("--domain", choices=sorted(DOMAINS), help=domain_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g = sub.add_parser("goae", help="EG3D pickle + GOAE encoder + AFA checkpoints -> full GOAE pipeline folder")
    g.add_argument("--eg3d", required=True, help="ffhqrebalanced512-128.pkl (cats: afhqcats512-128.pkl)")
    g.add_argument("--encoder", required=True, help="encoder_FFHQ.pt (cats: the release's cat encoder checkpoint)")
    g.add_argument("--afa", required=True, help="afa_FFHQ.pt (cats: the release's cat AFA checkpoint)")
    g.add_argument("out_dir")
    g.add_argument("--domain", choices=sorted(DOMAINS), help=domain_help)
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--directions", help="folder of edit directions (e.g. the official ws_edit/*.npy) to ship inside; "
                                        "only those of the domain are copied")
    args = parser.parse_args(argv)
    try:
        if args.command == "eg3d":
            out = convert_eg3d(args.pkl, args.out_dir, overwrite=args.overwrite, domain=args.domain)
        else:
            out = convert_goae(args.eg3d, args.encoder, args.afa, args.out_dir, overwrite=args.overwrite,
                               directions=args.directions, domain=args.domain)
    except (CheckpointError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, ImportError) as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)
    except Exception as e:  # a full disk, no memory, or a bug: still one line, and nothing half-written
        return _fail(f"{type(e).__name__}: {e}", 1)
    print(f"wrote {out}")
    return 0


def _fail(message: str, code: int) -> int:
    print(f"error: {one_line(message) or 'unknown error'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
