"""Official checkpoints read as data, without ever running their code.

An official EG3D network pickle (`ffhqrebalanced512-128.pkl`) embeds the *source code* of its
classes and the official loader `exec`s it; any pickle can also call any importable function.
We never do either. `OfficialUnpickler` resolves only the handful of globals an EG3D network
pickle contains (README of parity/eg3d §7) and turns every official class into inert data:

  * `torch_utils.persistence._reconstruct_persistent_obj(meta)` -> `PickledObject(class_name, state)`
    (meta['module_src'] is ignored, never exec'd);
  * non-persistent official classes (OSGDecoder, renderer classes, nn.Sequential/Softplus) ->
    stand-ins that only record the state they are given;
  * tensors -> torch's own rebuild functions over storages read with `torch.load(weights_only=True)`.

Any other global raises `UnsafePickleError` before it can be called. From the resulting record tree
`read_official_generator` takes G_ema's state dict with the official key names and its constructor kwargs.
The GOAE .pt files are torch.save zips, read by `read_torch_file` with torch's weights_only loader. Both pass
goae.weights.guards first.
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import functools
import io
import os
import pickle
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from goae.weights.checks import preview, short
from goae.weights.errors import (CheckpointError, TruncatedCheckpointError, UnsafePickleError,
                                 WrongCheckpointError)
from goae.weights.guards import (MAX_KWARGS_NODES, MAX_MODULES, TORCH_LEGACY_MAGIC, ZIP_MAGIC, Walk,
                                 check_declared_bytes, check_zip, checkpoint_size, first_line, scan_pickle)

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
    if data.startswith(ZIP_MAGIC):  # official storages are legacy streams; a zip must not be a bomb
        check_zip(io.BytesIO(data), len(data), "an embedded tensor storage")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"an embedded tensor storage was refused by torch's weights_only loader: {first_line(e)}") from None


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
        raise UnsafePickleError(f"refusing numpy dtype spec {short(spec)}")
    dtype = np.dtype(spec)
    if dtype.kind not in "biufc":
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}")
    return dtype


def _numpy_scalar(dtype: Any, data: bytes | None = None):
    """numpy.core.multiarray.scalar for plain numeric dtypes only (an object dtype could smuggle objects)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError(f"refusing numpy scalar of dtype {short(dtype)}")
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


def _size_and_head(path: Path) -> tuple[int, bytes]:
    """(size, first 16 bytes) of a checkpoint that is a non-empty regular file: what tells its format."""
    size = checkpoint_size(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WrongCheckpointError(f"{path} is empty (0 bytes); re-download the checkpoint")
    return size, head


def read_network_pickle(pkl_path: str | os.PathLike) -> dict:
    """Unpickle an official network pickle safely; modules come back as `PickledObject`s."""
    path = Path(pkl_path)
    size, head = _size_and_head(path)
    if head.startswith(ZIP_MAGIC):
        raise WrongCheckpointError(f"{path} is a torch .pt (zip) file, not an EG3D network pickle (.pkl)")
    if head.startswith(TORCH_LEGACY_MAGIC):
        raise WrongCheckpointError(f"{path} is a legacy torch.save file, not an EG3D network pickle (.pkl)")
    if head[0] != 0x80:  # official pickles use protocol >= 2, which starts with the PROTO opcode
        raise WrongCheckpointError(f"{path} is not a network pickle (no pickle protocol header)")
    scan_pickle(path, size)
    try:
        with open(path, "rb") as f:
            data = OfficialUnpickler(f).load()
    except CheckpointError as e:  # raised inside the unpickler: name the file
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:
        raise WrongCheckpointError(f"{path} is not a readable network pickle: {type(e).__name__}: {first_line(e)}") from None
    if not isinstance(data, dict):
        raise WrongCheckpointError(f"{path} holds a {type(data).__name__}, expected a network pickle dict with 'G_ema'")
    return data



def module_state_dict(obj: PickledObject, prefix: str = "", walk: Walk | None = None, depth: int = 0) -> dict[str, torch.Tensor]:
    """torch.nn.Module.state_dict() of a pickled module record: parameters, persistent buffers, children."""
    walk = walk or Walk("the module tree", MAX_MODULES)
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


def _plain(x: Any, walk: Walk | None = None, depth: int = 0) -> Any:
    """EasyDicts/OrderedDicts/numpy scalars -> JSON-friendly python (for constructor kwargs)."""
    walk = walk or Walk("the constructor kwargs", MAX_KWARGS_NODES)
    walk.step(depth)
    if isinstance(x, dict):
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise WrongCheckpointError(f"{walk.what} have non-string keys ({preview(map(repr, bad), 3)})")
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
        keys = sorted(short(k) for k in list(data)[:10])  # a key may be a huge shared tuple
        raise WrongCheckpointError(f"{pkl_path} has no {key!r} (keys: {', '.join(keys)}); is it an EG3D network pickle?")
    G = data[key]
    if not isinstance(G, PickledObject) or "_init_kwargs" not in G.state:
        raise WrongCheckpointError(f"{pkl_path}: {key!r} is not a persistent EG3D module (got {short(G)})")
    if G.state.get("_init_args"):
        raise WrongCheckpointError(f"{pkl_path}: {key!r} was built with positional args {short(G.state['_init_args'])}; "
                                   f"expected keyword args only")
    try:
        nrr = G.state.get("neural_rendering_resolution")
        off = OfficialGenerator(
            class_name=G.class_name,
            init_kwargs=_plain(G.state["_init_kwargs"], Walk(f"{pkl_path}: {key}'s constructor kwargs", MAX_KWARGS_NODES)),
            state_dict=module_state_dict(G, walk=Walk(f"{pkl_path}: {key}'s module tree", MAX_MODULES)),
            neural_rendering_resolution=None if nrr is None else int(nrr),
            rendering_kwargs=_plain(G.state.get("rendering_kwargs") or {}, Walk(f"{pkl_path}: {key}.rendering_kwargs", MAX_KWARGS_NODES)),
        )
    except CheckpointError:
        raise
    except Exception as e:  # malformed records (wrong types, ...)
        raise WrongCheckpointError(f"{pkl_path}: malformed {key!r} ({type(e).__name__}: {first_line(e)})") from None
    check_declared_bytes(off.state_dict, Path(pkl_path).stat().st_size, f"{pkl_path} ({key})")
    return off


# ----------------------------------------------------------------------------- reading a torch.save file


def read_torch_file(pt_path: str | os.PathLike) -> tuple[Path, int, Any]:
    """(path, size, object) of a torch.save file, read with torch.load(weights_only=True) after the
    checks that keep a damaged or hostile file from costing more than its size."""
    path = Path(pt_path)
    size, head = _size_and_head(path)
    is_zip = head.startswith(ZIP_MAGIC)
    if not is_zip and not head.startswith(TORCH_LEGACY_MAGIC):
        kind = "a plain pickle (an EG3D .pkl?)" if head[0] == 0x80 else "not a torch checkpoint"
        raise WrongCheckpointError(f"{path} is {kind}; expected a torch.save .pt state dict")
    if is_zip and not zipfile.is_zipfile(path):  # the zip directory sits at the end of the file
        raise TruncatedCheckpointError(f"{path} is truncated (zip central directory missing); re-download it")
    if is_zip:
        check_zip(path, size, str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise UnsafePickleError(f"{path}: refused by torch's weights_only loader: {first_line(e)}") from None
        raise WrongCheckpointError(f"{path} is not a readable torch checkpoint: {first_line(e)}") from None
    except EOFError:
        raise TruncatedCheckpointError(f"{path} is truncated; re-download it") from None
    except Exception as e:
        raise WrongCheckpointError(f"{path} is not a readable torch checkpoint: {type(e).__name__}: {first_line(e)}") from None
    return path, size, obj


def flat_state_dict(obj: Any, path: Path, size: int, hint: str = "") -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise WrongCheckpointError(f"{path} holds a {type(obj).__name__}, expected a flat state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WrongCheckpointError(f"{path} is not a flat state dict of tensors (entries {preview(bad, 4)}){hint}")
    check_declared_bytes(obj, size, str(path))
    return dict(obj)

