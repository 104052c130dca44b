"""GOAE web demo (Gradio Blocks; also the Hugging Face Space entry point, `app_file: app.py`).

    python app.py [--weights REPO_OR_DIR | random | random-small] [--cat-weights REPO_OR_DIR | random-cat]
                  [--directions DIR] [--examples DIR] [--host 127.0.0.1] [--port 7860] [--share] [--fast]

photo -> aligned crop + camera (estimated for portraits; AFHQ frontal or set by hand for cats) -> one inversion -> views from the cached tri-planes (yaw/pitch
sliders: a fast preview while dragging, the full render on release), turntable video, depth map, mesh
(.glb/.ply), semantic edits, a download for every output; and a stateless API endpoint (`/invert`).

Settings come from the command line or the environment (a Space has only the environment):
  GOAE_WEIGHTS     pipeline folder or Hub repo id; 'random' / 'random-small' for seeded random weights.
                   Unset or not loadable (e.g. offline): the app runs on random weights with a banner.
  GOAE_CAT_WEIGHTS a second pipeline, of the other domain (goae.domains: a cat pipeline beside the human
                   one): the page then offers the choice. On random weights both domains are loaded.
  GOAE_DIRECTIONS  folder of edit direction files (age.npy, anger.npy, glass.npy, ...); default none.
  GOAE_EXAMPLES    folder of example photos shown under the upload box; default examples/ beside app.py.
  GOAE_CACHE_MB    RAM for the sessions' tri-plane caches together (default 512); older ones wait on disk.

Where it runs. One model, loaded once, serves every visitor. On a ZeroGPU Space (the `spaces` package and
SPACES_ZERO_GPU) every model step runs inside `@spaces.GPU` (`gpu` below): in a worker process that has the
GPU for that call only. So those steps are pure functions: CPU tensors in, CPU tensors and files out, and
the device is chosen inside each call (CUDA when the call has it, else the CPU). Everything a visitor owns
(the aligned face, the names of their tri-plane caches, their files) stays in the main process: the small
`Session` in that browser session's `gr.State`, the tri-planes in the app's `InversionCache`. On a GPU Space
or a CPU the decorator changes nothing and the same code runs in-process.
"""
from __future__ import annotations

try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA. Optional everywhere else.
    import spaces
except ImportError:
    spaces = None

import argparse
import atexit
import base64
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save as tensors_to_bytes

from goae import export
from goae.align import AlignError
from goae.camera import CameraError, yaw_pitch_from_label
from goae.domains import DomainError
from goae.edit import (DirectionError, EditDirection, directions_for, edit_offset, how_to_get_directions,
                       random_weights, resolve_names)
from goae.io import atomic_write_bytes
from goae.pipeline import GOAEOutput
from goae.runtime import release_cpu_memory, setup_runtime, setup_server_allocator

log = logging.getLogger("goae.app")
ROOT = Path(__file__).resolve().parent
DEFAULT_EXAMPLES = ROOT / "examples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EDIT_LABELS = {"glass": "glasses"}
MODEL_QUEUE = "model"  # every event that runs the networks shares this one queue slot
FALLBACK_WEIGHTS = "random"  # what the app runs when no weights load: the real architecture, random weights
MAX_UPLOAD_MB = 30  # every way a photo comes in: uploads, inline data: URLs, API calls
SESSION_TTL_S = 3600  # a session's state and files go 1 h after its last step (at once when its tab closes)
API_FILES_TTL_S = 600  # files of a stateless /invert call, once Gradio has copied them to its own cache
MAX_API_VIEWS = 16

# Seconds a ZeroGPU call may hold the GPU (spaces.GPU `duration`). ZeroGPU checks the request against the
# visitor's remaining quota and uses it for queue priority, so each is sized from the call's work (frames,
# resolution) on a GPU, plus a fresh worker's set-up (CUDA context, weights onto the GPU): estimates with a
# wide margin over the work (one photo is ~0.8 TFLOP, a view ~0.2), not CPU times. No GPU has measured
# them yet: benchmarks/gpu_check.sh records the real times; $GOAE_GPU_SECONDS ('{"invert": 6}') overrides.
GPU_SETUP_SECONDS = 5
GPU_SECONDS = {"invert": 3, "view": 1, "preview": 0.5, "edit": 2, "video_frame": 0.15, "mesh_256": 2}
GPU_SECONDS_MAX = 120


class AppError(ValueError):
    """A request the app cannot serve in the session's current state (e.g. no inversion yet)."""


# ------------------------------------------------------------------------------------------ where it runs
def on_zero_gpu() -> bool:
    """A ZeroGPU Space: the `spaces` package is there and SPACES_ZERO_GPU says so."""
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def gpu(duration: float | Callable[..., float]):
    """`@spaces.GPU(duration=...)` on a ZeroGPU Space; elsewhere the function itself, unchanged.
    `duration` (seconds) may be a function of the call's arguments."""
    def decorate(fn: Callable) -> Callable:
        return spaces.GPU(duration=duration)(fn) if on_zero_gpu() else fn
    return decorate


def gpu_seconds() -> dict[str, float]:
    """GPU_SECONDS with $GOAE_GPU_SECONDS (a JSON object of some of its keys) over it: a Space's measured times."""
    text = os.environ.get("GOAE_GPU_SECONDS", "").strip()
    if not text:
        return dict(GPU_SECONDS)
    try:
        given = json.loads(text)
        if not isinstance(given, dict) or not all(k in GPU_SECONDS and math.isfinite(float(v)) and float(v) > 0
                                                  for k, v in given.items()):
            raise ValueError
    except (ValueError, TypeError):
        raise ValueError(f"GOAE_GPU_SECONDS must be a JSON object of positive seconds for some of "
                         f"{sorted(GPU_SECONDS)}, got {text[:200]!r}") from None
    return {**GPU_SECONDS, **{k: float(v) for k, v in given.items()}}


def _frames_done(progress, done: int, total: int) -> None:
    progress((done, total), desc="Rendering turntable frames", unit="frames")


def gpu_duration(work_seconds: float) -> float:
    """The `duration` to ask ZeroGPU for: the work plus a fresh worker's set-up, capped."""
    return float(min(GPU_SECONDS_MAX, GPU_SETUP_SECONDS + work_seconds))


def call_device(pipe) -> torch.device:
    """The device for this call, chosen per call: CUDA when this call has it (inside a ZeroGPU call, on a
    GPU Space), else the CPU. The pipeline is moved there if it is elsewhere."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pipe.device.type != device.type:
        pipe.to(device)
    return device


def load_model(weights: str | None, device, seed: int = 0, fallback: str = FALLBACK_WEIGHTS,
               default_folder: bool = True):
    """(pipeline on `device`, banner). Falls back to `fallback` (the full-size random model), with a banner, when no
    weights load (none configured, offline, missing files, a damaged checkpoint with NaN values). Weights
    are loaded and checked on the CPU, then moved (on ZeroGPU, `spaces` takes over that move)."""
    from goae.download import default_weights_folder
    from goae.pipeline import load_pipeline

    reason = "no weights configured (set GOAE_WEIGHTS or --weights, or run `goae download`)"
    if default_folder:
        weights = weights or (str(folder) if (folder := default_weights_folder()) else None)
    if weights:
        try:
            pipe = load_pipeline(weights, seed=seed, device="cpu")
            export.check_weights(pipe)
        except Exception as e:  # the demo still starts
            log.warning("could not load weights %r: %s", weights, e)
            reason = f"the weights `{weights}` could not be loaded: {hide_paths(str(e))}"
        else:
            if random_weights(pipe):
                return pipe.to(device), f"Running on **random weights** (`{weights}`): results are not faces."
            return pipe.to(device), ""
    pipe = load_pipeline(fallback, seed=seed, device="cpu").to(device)
    return pipe, f"Running on **random weights** because {reason}. Results are not faces."


# ------------------------------------------------------------------------------------------ memory and folders
class InversionCache:
    """The tri-plane caches of every session, on the CPU, bounded: the most recently used stay in RAM up
    to `max_bytes` together; older ones are written to their session's folder (safetensors) and read back
    when used again. Keys are those file paths, so a session's entries go with its folder."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._ram: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.RLock()

    @staticmethod
    def size(entry: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in entry.values())

    @property
    def ram_bytes(self) -> int:
        with self._lock:
            return sum(self.size(e) for e in self._ram.values())

    def put(self, path: Path, entry: dict[str, torch.Tensor]) -> str:
        key = str(path)
        with self._lock:
            Path(key).unlink(missing_ok=True)  # an older entry of the same name
            self._ram[key] = entry
            self._ram.move_to_end(key)
            self._spill()
        return key

    def get(self, key: str) -> dict[str, torch.Tensor]:
        with self._lock:
            if key in self._ram:
                self._ram.move_to_end(key)
                return self._ram[key]
            if not Path(key).is_file():
                raise AppError("This session's inversion is no longer kept (the session ended or the app "
                               "restarted): invert the photo again.")
            entry = load_tensors(key)
            self._ram[key] = entry
            self._spill()
            return entry

    def forget(self, key: str | None) -> None:
        """Drop one entry, in RAM and on disk."""
        if key:
            with self._lock:
                self._ram.pop(key, None)
                Path(key).unlink(missing_ok=True)

    def discard(self, folder: Path) -> None:
        """Forget the entries under `folder` (their files go with the folder)."""
        prefix = str(folder) + os.sep
        with self._lock:
            for key in [k for k in self._ram if k.startswith(prefix)]:
                del self._ram[key]

    def _spill(self) -> None:
        """Least recently used entries to disk until the rest fits (the newest always stays)."""
        while len(self._ram) > 1 and self.ram_bytes > self.max_bytes:
            key, entry = self._ram.popitem(last=False)
            # Entries never change, so one read back from disk is not written again; nor is one whose
            # session has ended meanwhile.
            if Path(key).parent.parent.is_dir() and not Path(key).is_file():
                Path(key).parent.mkdir(exist_ok=True)
                atomic_write_bytes(key, tensors_to_bytes(entry))


class Folders:
    """Everything the app writes, under one folder per process (<tmp>/goae-app-<pid>-*): sessions/<id>/ per
    browser session, api/<id>/ per stateless API call. A session's folder is made on its first file and
    removed when the session ends or a photo fails; the whole root at shutdown. Roots left behind by app
    processes that no longer run are removed at start."""

    PREFIX = "goae-app-"

    def __init__(self, parent: str | None = None):
        parent = Path(parent or tempfile.gettempdir())
        self.remove_stale(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=parent))
        atexit.register(self.remove_all)

    @classmethod
    def remove_stale(cls, parent: Path) -> None:
        for old in parent.glob(f"{cls.PREFIX}*-*"):
            pid = old.name[len(cls.PREFIX):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)

    def session(self, session_id: str | None = None) -> Path:
        """The folder of a session (not yet made); the id (Gradio's session hash) is never used as a name."""
        name = hashlib.sha256((session_id or uuid.uuid4().hex).encode()).hexdigest()[:24]
        return self.root / "sessions" / name

    def api_call(self) -> Path:
        """A new folder for one stateless API call; those of earlier calls older than API_FILES_TTL_S go."""
        for old in (self.root / "api").glob("*"):
            if time.time() - old.stat().st_mtime > API_FILES_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        return self.root / "api" / uuid.uuid4().hex

    def api_cache(self, key: str) -> Path:
        """Where a stateless call's inversion (the tri-plane cache entry of one photo) is spilled; entries
        unused for API_FILES_TTL_S go."""
        for old in (self.root / "api-cache").glob("*.safetensors"):
            if time.time() - old.stat().st_mtime > API_FILES_TTL_S:
                old.unlink(missing_ok=True)
        return self.root / "api-cache" / f"{key}.safetensors"

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Session:
    """What one browser session owns, in its gr.State: small and picklable. The tri-planes are in the
    app's InversionCache under `inversion` / `current`; the files in `folder`."""
    folder: Path
    photo: str | None = None       # path of the current photo
    face: Any = None               # goae.align.AlignedFace / AlignedCat
    domain: str = "human"          # which of the app's pipelines the face was aligned for (goae.domains)
    align_options: dict = field(default_factory=dict)  # a cat's box and camera, kept for another face choice
    inversion: str | None = None   # cache key: the inversion (ws, tri-planes, camera, AFA features)
    current: str | None = None     # cache key of what is shown: the inversion or its edit
    edits: dict[str, float] = field(default_factory=dict)
    shown: tuple | None = None     # (cache key, yaw, pitch) of the last full render: a later preview of it is stale

    def path(self, name: str = "") -> Path:
        """The session's folder, or a file in it; the folder is made on first use."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        path.parent.mkdir(exist_ok=True)
        return path

    @property
    def cache_keys(self) -> tuple[Path, Path]:
        """Where the inversion's and the edit's tri-planes are spilled when RAM is short."""
        return self.folder / "cache" / "inversion.safetensors", self.folder / "cache" / "edit.safetensors"


# ------------------------------------------------------------------------------------------ input and errors
def _path_roots() -> list[str]:
    from gradio.utils import get_upload_folder
    roots = {tempfile.gettempdir(), str(Path.home()), str(ROOT), os.getcwd(), sys.prefix, str(get_upload_folder())}
    return sorted((r.rstrip("/") for r in roots if r and r != "/"), key=len, reverse=True)


def hide_paths(text: str) -> str:
    """A message without the server's paths: each path under a server folder becomes its file name."""
    pattern = "|".join(re.escape(r) for r in _path_roots())
    return re.sub(rf"(?:{pattern})/[^\s'\"`,;()]*", lambda m: Path(m.group(0)).name or "…", text)


def user_errors(fn: Callable) -> Callable:
    """Bad input and state -> gr.Error with its message; anything else -> a short error (details in the log).
    No message shows a server path."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            e.message = hide_paths(str(e.message))
            raise
        except (AlignError, AppError, CameraError, DirectionError, DomainError, export.ExportError) as e:
            raise gr.Error(hide_paths(str(e)), duration=None, print_exception=False) from None
        except Exception as e:
            log.exception("error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(e).__name__}: {hide_paths(str(e))}). The session still "
                           "works; try again or another photo.", duration=None, print_exception=False) from None
    return wrapper


def releases_memory(fn: Callable) -> Callable:
    """After each call, the C heap's free memory goes back to the system: a model step frees hundreds of MB
    of tensors, which otherwise stay with the process, scattered over the request threads' arenas."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_cpu_memory()
    return wrapper


def _too_large(size: int) -> gr.Error:
    return gr.Error(f"The photo is too large ({size / 2**20:.1f} MB): the limit is {MAX_UPLOAD_MB} MB.",
                    duration=None, print_exception=False)


def photo_input(allowed: list[Path], **kwargs) -> gr.Image:
    """gr.Image whose photo reaches goae.align untouched (path or bytes), so unreadable, corrupt or huge
    files get align's clear messages instead of a failure inside Gradio's own image decoding. The size
    limit holds for uploads and inline data: URLs alike, and only files Gradio received (its upload
    folder) or the example photos (`allowed`) are read: an API call cannot name another server file.

    The preprocess step is replaced on the instance: a gr.Image subclass would do the same, but Gradio
    writes a .pyi stub next to the source file of every component subclass."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    image = gr.Image(**kwargs)
    limit = MAX_UPLOAD_MB * 2**20

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            data = payload.url.split(",", 1)[-1]
            if len(data) * 3 // 4 > limit:
                raise _too_large(len(data) * 3 // 4)
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                raise gr.Error("The photo's data: URL is not valid base64.", print_exception=False) from None
        if not payload.path:  # a URL alone: the server fetches nothing on a caller's behalf
            raise gr.Error("The photo came as a URL only: send the file itself (gradio_client: handle_file(path or "
                           "URL) uploads it) or a data: URL.", print_exception=False)
        path = Path(payload.path)
        if not any(is_in_or_equal(path, folder) for folder in [Path(get_upload_folder()), *allowed]):
            raise gr.Error("Send the photo as an upload (gradio_client: handle_file(...)).", print_exception=False)
        if not path.is_file():  # e.g. the upload folder itself: Gradio listed it among this input's files,
            image.temp_files.discard(str(path))  # and would try to delete it as one at shutdown
            raise gr.Error("The photo is not a file: send an image file (gradio_client: handle_file(...)).",
                           print_exception=False)
        if path.stat().st_size > limit:
            raise _too_large(path.stat().st_size)
        return str(path)

    image.preprocess = preprocess
    return image


def json_input(value, example, schema: dict, **kwargs) -> gr.JSON:
    """gr.JSON with a JSON schema (its type in the API page and the MCP tools; Gradio's is "any JSON") and a
    real example (Gradio's is {"foo": "bar"})."""
    component = gr.JSON(value, **kwargs)
    component.example_inputs = component.example_payload = lambda: example
    component.api_info = component.api_info_as_input = lambda: dict(schema)
    return component


def _numbers(n: int, what: str) -> dict:
    return {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n, "description": what}


def index_input(**kwargs) -> gr.Number:
    """gr.Number for a face index that may be empty: anything else than a whole number gets a clear message
    (Gradio's own conversion fails without one)."""
    number = gr.Number(**kwargs)

    def preprocess(payload):
        if payload in (None, ""):
            return None
        try:
            return export.whole(payload, "face_index", 0)
        except (TypeError, ValueError) as e:
            raise gr.Error(f"{e} (face_index: 0-based from the left, or empty for the largest face)",
                           print_exception=False) from None

    number.preprocess = preprocess
    number.example_inputs = number.example_payload = lambda: 0
    return number


class GOAEBlocks(gr.Blocks):
    """gr.Blocks whose input errors have a message: a payload Gradio cannot read (a string or a number where a
    file goes, a file that was never uploaded) otherwise fails before any callback, with `error: null` in the API
    (the app runs with show_error=False, so that no internal error shows server paths)."""

    async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
        from gradio.exceptions import ComponentProcessingError, InvalidPathError
        from pydantic import ValidationError
        try:
            return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)
        except (ComponentProcessingError, InvalidPathError, ValidationError) as e:
            raise gr.Error(_bad_input_message(block_fn, inputs, e), print_exception=False) from None


def _bad_input_message(block_fn, inputs: list, error: Exception) -> str:
    """Which parameter of the endpoint was wrong, and how to send it."""
    import inspect
    from gradio.exceptions import InvalidPathError

    names = [p for p in inspect.signature(block_fn.fn).parameters
             if p not in ("progress", "request")][:len(block_fn.inputs)] if block_fn.fn else []
    if isinstance(error, InvalidPathError):
        return ("A file must be sent as an upload (gradio_client: handle_file(...)); files on the server are "
                "not read.")
    index = None
    if (m := re.search(r"at index (\d+)", str(error))) is not None:
        index = int(m.group(1))
    elif getattr(error, "title", None):  # a pydantic error names the component's data model
        index = next((i for i, b in enumerate(block_fn.inputs)
                      if getattr(getattr(b, "data_model", None), "__name__", None) == error.title), None)
    if index is None or index >= len(block_fn.inputs):
        return f"An input of /{block_fn.api_name} could not be read: check the types in the API page."
    name = names[index] if index < len(names) else f"input {index}"
    block, value = block_fn.inputs[index], inputs[index] if index < len(inputs) else None
    wants = ("a file (gradio_client: handle_file(path))" if getattr(block, "data_model", None) is not None
             and "FileData" in str(block.data_model.model_json_schema()) else f"a {block.get_block_name()} value")
    shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
    return hide_paths(f"{name} must be {wants}; got {type(value).__name__} {shown}")


class RequestSizeLimit:
    """ASGI middleware: request bodies over `max_bytes` get HTTP 413 on every route, so a photo sent inline
    (a data: URL inside an API call's JSON) meets the same limit as an upload (issue #15)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = f"Request too large: the limit for a photo is {MAX_UPLOAD_MB} MB.".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class QuickHead:
    """ASGI middleware: `HEAD /` answers 200 at once instead of rendering the page and dropping it. Gradio's
    launch checks its own page with HEAD requests that time out after 3 s, and exits when one does (issue #31):
    on a busy machine, with visitors already loading the page, rendering can take longer than that."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD" and scope["path"] in ("", "/"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8")]})
            return await send({"type": "http.response.body", "body": b""})
        return await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------ callbacks
class GOAEApp:
    """The app's callbacks. Each takes the session and returns the new session plus component values.
    The `_gpu_*` methods are the model steps: pure functions of CPU data, run through `gpu` (ZeroGPU)."""

    def __init__(self, pipe, directions: dict[str, EditDirection] | None = None, banner: str = "",
                 notes: list[str] | None = None, examples: list[str] | None = None,
                 cache_bytes: int = 512 * 2**20, folders: Folders | None = None,
                 cache: InversionCache | None = None):
        self.pipe = pipe
        self.domain = pipe.domain  # the aligner, cameras and edit directions of this pipeline
        self.directions = directions or {}
        self.banner, self.notes, self.examples = banner, notes or [], examples or []
        self.cache = cache or InversionCache(cache_bytes)
        self.folders = folders or Folders()
        native = int(pipe.generator.neural_rendering_resolution)
        # The model's own resolution by default; lower ones are an explicit preview choice (fewer rays,
        # the super-resolution still gives 512). Slider drags preview at half of it without super-resolution.
        self.resolutions = sorted({32, 64, native})
        self.default_resolution = native
        self.preview_resolution = max(16, native // 2)
        self.default_frames = 120 if torch.cuda.is_available() else 24
        self.mesh_resolution = 128
        ray_near, ray_far = pipe.generator.ray_range
        self.depth_range = dict(near=ray_near, far=ray_far)
        # The model steps, through ZeroGPU where the app runs on it (durations in seconds).
        s = gpu_seconds()
        self._gpu_invert = gpu(gpu_duration(s["invert"]))(self._gpu_invert)
        self._gpu_entry = gpu(gpu_duration(s["invert"]))(self._gpu_entry)
        self._gpu_view = gpu(gpu_duration(s["view"]))(self._gpu_view)
        self._gpu_preview = gpu(gpu_duration(s["preview"]))(self._gpu_preview)
        self._gpu_edit = gpu(gpu_duration(s["edit"]))(self._gpu_edit)
        self._gpu_video_frames = gpu(lambda entry, frames, *a, **k: gpu_duration(
            s["video_frame"] * frames))(self._gpu_video_frames)
        self._gpu_mesh = gpu(lambda entry, res, *a, **k: gpu_duration(
            s["mesh_256"] * (res / 256) ** 3))(self._gpu_mesh)
        self._gpu_api = gpu(lambda face, folder, options, *a, **k: gpu_duration(
            s["invert"] + s["view"] * len(options.views) / 4 + s["video_frame"] * options.video_frames
            + s["mesh_256"] * (options.mesh_resolution / 256) ** 3 + (s["edit"] if options.edits else 0)))(self._gpu_api)

    # -- sessions
    def new_session(self, session_id: str | None = None) -> Session:
        return Session(folder=self.folders.session(session_id))

    def _session(self, session: Session | None, session_id: str | None = None) -> Session:
        return session if isinstance(session, Session) else self.new_session(session_id)

    def end_session(self, session: Session | None) -> None:
        """A session ended (closed tab, expired state) or starts over with a new photo: its tri-plane caches
        and files go."""
        if isinstance(session, Session):
            self.end_folder(session.folder)

    def end_folder(self, folder: Path) -> None:
        self.cache.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)

    def _need_result(self, session: Session | None) -> Session:
        if not isinstance(session, Session) or session.current is None:
            raise AppError("Run the inversion first: upload a photo, then press 'Invert'.")
        return session

    def _resolution(self, resolution) -> int | None:
        """The neural rendering resolution chosen in the options (None = the model's own)."""
        if resolution is None or export.finite(resolution, "neural rendering resolution") not in self.resolutions:
            raise AppError(f"neural rendering resolution must be one of {self.resolutions}, got {resolution!r}")
        return None if int(resolution) == self.default_resolution else int(resolution)

    @staticmethod
    def _angles(yaw, pitch) -> tuple[float, float]:
        return export.finite(yaw, "yaw", -180, 180), export.finite(pitch, "pitch", -90, 90)

    def _yaw_pitch(self, face) -> tuple[float, float]:
        yaw, pitch = yaw_pitch_from_label(torch.as_tensor(face.camera)[None], lookat=self.domain.label_lookat)
        # + 0.0: no "-0.0°" on the page
        return round(float(np.degrees(float(yaw[0]))), 6) + 0.0, round(float(np.degrees(float(pitch[0]))), 6) + 0.0

    def _camera_text(self, face) -> str:
        yaw, pitch = self._yaw_pitch(face)
        l, t, r, b = face.box
        what = "Estimated camera" if self.domain.camera_estimated else \
            "Camera (not estimated for cats: AFHQ frontal unless set under Cat options)"
        if face.face_index is None:  # a cat from a box the user gave, or a photo taken as the crop
            how = {"user box": "the box you gave", "as given": "the whole photo (already a 512×512 crop)"}
            which = f"**Cat face** from {how.get(getattr(face, 'detector', ''), 'the photo')}"
        else:
            which = (f"**{'Face' if self.domain.camera_estimated else 'Cat face'}** {face.face_index + 1} of "
                     f"{len(face.faces)}")
        return (f"**{what}**: yaw {yaw:+.1f}°, pitch {pitch:+.1f}° (radius 2.7, focal 4.2647)  \n"
                f"{which} (crop box {l:.0f},{t:.0f} – {r:.0f},{b:.0f} px in a "
                f"{face.source_size[0]}×{face.source_size[1]} photo)")

    def _camera_json(self, face) -> dict:
        yaw, pitch = self._yaw_pitch(face)
        return {"label": [float(x) for x in face.camera], "yaw_deg": yaw, "pitch_deg": pitch,
                "camera_estimated": self.domain.camera_estimated, "domain": self.domain.name,
                "face_index": face.face_index, "faces_found": face.faces_found or len(face.faces),
                "face_box": [float(x) for x in face.box], "photo_size": list(face.source_size)}

    @staticmethod
    def _face_choices(face) -> list[tuple[str, int]]:
        def area(f):  # a human Face, or a cat's (l, t, r, b) box
            if hasattr(f, "area"):
                return f.area
            l, t, r, b = f
            return (r - l) * (b - t)
        if not face.faces:
            return []
        largest = max(range(len(face.faces)), key=lambda i: area(face.faces[i]))
        return [(f"Face {i + 1}" + (" (largest)" if i == largest else ""), i) for i in range(len(face.faces))]

    # -- model steps (pure: CPU data in, CPU data and files out; the device is chosen per call)
    def _gpu_invert(self, face, folder: Path, yaw: float, pitch: float, resolution, progress):
        device = call_device(self.pipe)
        result = self.pipe(face.image, face.camera, output_type=None, progress=progress)
        progress(0.95, desc="Writing the files")
        # The library's bundle writer (as `goae invert`): reconstruction, depth, W+ code, result.json.
        bundle = export.save_inversion(self.pipe, face, folder / "inversion", result=result, overwrite=True)
        view = self._render_files(result, yaw, pitch, resolution, folder)
        return {"entry": result.to_cache(), "reconstruction": export.to_uint8(result.image[:1])[0],
                "bundle": bundle, "view": view, "device": device.type}

    def _gpu_view(self, entry, yaw: float, pitch: float, resolution, folder: Path):
        return self._render_files(GOAEOutput.from_cache(entry, call_device(self.pipe)), yaw, pitch, resolution, folder)

    def _gpu_preview(self, entry, yaw: float, pitch: float):
        """Neural rendering only, upsampled: the picture and its depth while a slider moves."""
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        out = self.pipe.preview_view(result, self.pipe.view_camera(yaw, pitch), resolution=self.preview_resolution,
                                     output_type=None)
        depth = out["image_depth"][0, 0].float().cpu().numpy()
        return export.to_uint8(out["image"])[0], export.colorize_depth(depth)

    def _gpu_edit(self, entry, offset: torch.Tensor, yaw: float, pitch: float, resolution, folder: Path, name: str):
        device = call_device(self.pipe)
        edited = self.pipe.edit(GOAEOutput.from_cache(entry, device), offset.to(device), output_type=None)
        image = export.to_uint8(edited.image[:1])[0]
        path = export.save_png(image, folder / name)
        entry = edited.to_cache()
        return {"entry": {k: entry[k] for k in ("ws", "planes", "camera")}, "image": image, "path": str(path),
                "view": self._render_files(edited, yaw, pitch, resolution, folder)}

    def _gpu_video(self, entry, frames: int, fps: float, resolution, path: Path, progress) -> str:
        """The turntable MP4. Off ZeroGPU the frames are encoded as they are rendered (a few in memory at a
        time); on ZeroGPU the GPU call only renders them and the encoder runs here, off the GPU's time."""
        progress((0, frames), desc="Rendering turntable frames", unit="frames")
        if on_zero_gpu():
            batch = self._gpu_video_frames(entry, frames, resolution, progress)
            progress(0.99, desc="Encoding the video")
            return str(export.write_video([batch], path, fps=fps))
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        return str(export.write_turntable(self.pipe, result, path, frames, fps=fps, neural_rendering_resolution=resolution,
                                          progress=lambda done, total: _frames_done(progress, done, total)))

    def _gpu_video_frames(self, entry, frames: int, resolution, progress) -> np.ndarray:
        """The turntable's frames, uint8 [F,H,W,3] on the CPU (each batch is one render call)."""
        result = GOAEOutput.from_cache(entry, call_device(self.pipe))
        cameras = self.pipe.orbit_cameras(frames)
        return export.render_views(self.pipe, result, cameras, None,
                                   lambda done, total: _frames_done(progress, done, total), resolution)

    def _gpu_mesh(self, entry, resolution: int, folder: Path):
        # "auto": EG3D's density level 10, or the densest 10% where the density never reaches it (random weights).
        planes = entry["planes"].to(call_device(self.pipe))
        v, f, c = export.extract_mesh(self.pipe.generator, planes, resolution=resolution, level="auto")
        glb = export.save_glb(folder / "mesh.glb", v, f, c)
        ply = export.save_ply(folder / "mesh.ply", v, f, c)
        return str(glb), str(ply), len(v), len(f)

    def _gpu_api(self, face, folder: Path, options: export.ExportOptions, progress):
        call_device(self.pipe)
        result = self.pipe(face.image, face.camera, output_type=None, progress=progress)
        progress(0.9, desc="Rendering views, video, mesh, edits and writing the files")
        export.save_inversion(self.pipe, face, folder, options, directions=self.directions, result=result)
        return export.to_uint8(result.image[:1])[0]

    def _render(self, result, cameras: torch.Tensor, resolution) -> dict[str, torch.Tensor]:
        """Cached tri-planes at cameras [V,25] with a chosen neural-rendering resolution (no re-encoding)."""
        # render_view honours the pipeline's fast path (if enabled); a lower resolution is its preview mode.
        return self.pipe.render_view(result, cameras, neural_rendering_resolution=resolution, output_type=None)

    def _render_files(self, result, yaw: float, pitch: float, resolution, folder: Path) -> tuple:
        """The view at yaw/pitch and its depth, as pictures and files: (image, view.png, preview, preview, depth16)."""
        out = self._render(result, self.pipe.view_camera(yaw, pitch), resolution)
        image = export.to_uint8(out["image"])[0]
        view_path = export.save_png(image, folder / "view.png")
        depth16, preview = folder / "depth16.png", folder / "depth_preview.png"
        export.save_depth(out["image_depth"][0], depth16, preview, **self.depth_range)
        return image, str(view_path), str(preview), str(preview), str(depth16)

    # -- events
    def _align(self, photo, face_index: int | None, options: dict):
        """The domain's aligner (goae.domains.Domain.align); a cat's box and camera come in `options`."""
        if self.domain.camera_estimated:
            return self.domain.align(photo, face_index=face_index)
        return self.domain.align(photo, face_index=face_index, **options)

    @releases_memory
    @user_errors
    def align(self, photo, session: Session | None, face_index: int | None = None, session_id: str | None = None,
              box=None, yaw=None, pitch=None):
        """Find the faces, crop the chosen one (largest by default), estimate its camera (for cats: a box given
        or detected, the camera set or AFHQ frontal). A new photo starts the session over; a photo that fails
        leaves nothing behind."""
        options = {"box": box, "yaw": yaw, "pitch": pitch} if face_index is None else \
            (session.align_options if isinstance(session, Session) else {})
        if face_index is None:  # a new photo: the previous one's results and files go
            folder = session.folder if isinstance(session, Session) else self.folders.session(session_id)
            self.end_session(session)
            session = Session(folder=folder)
        if photo is None:
            return session, None, "", gr.update(choices=[], value=None, visible=False), None
        try:
            if isinstance(photo, bytes):  # an inline data: URL: kept as a file, for choosing another face
                photo = str(atomic_write_bytes(session.path("photo"), photo))
            face = self._align(photo, face_index, options)
            session.photo, session.face, session.edits = str(photo), face, {}
            session.domain, session.align_options = self.domain.name, options
            session.inversion = session.current = None
            aligned = str(export.save_png(face.image, session.path("aligned.png")))
        except Exception:
            if face_index is None:
                self.end_session(session)
            raise
        radio = gr.update(choices=self._face_choices(face), value=face.face_index,
                          visible=face.face_index is not None and len(face.faces) > 1)
        return session, np.asarray(face.image), self._camera_text(face), radio, aligned

    @user_errors
    def choose_face(self, face_index, session: Session | None):
        if not isinstance(session, Session) or session.photo is None:
            raise AppError("Upload a photo first.")
        if face_index is None:
            raise AppError("Choose a face.")
        return self.align(session.photo, session, export.whole(face_index, "face index", 0))

    @releases_memory
    @user_errors
    def invert(self, session: Session | None, yaw: float, pitch: float, resolution: int,
               progress=gr.Progress()):
        """One encoder pass + AFA refinement + occlusion-aware mix; the tri-planes go to the session's cache."""
        if not isinstance(session, Session) or session.face is None:
            raise AppError("Upload a photo with a face first.")
        resolution, (yaw, pitch) = self._resolution(resolution), self._angles(yaw, pitch)  # before the slow part
        if (reused := self._reuse_inversion(session, yaw, pitch, resolution)) is not None:
            return reused
        t0 = time.perf_counter()
        out = self._gpu_invert(session.face, session.path(), yaw, pitch, resolution, progress)
        if session.current != session.inversion:
            self.cache.forget(session.current)  # the previous inversion's edit
        session.inversion = session.current = self.cache.put(session.cache_keys[0], out["entry"])
        session.edits, session.shown = {}, (session.current, yaw, pitch)
        status = f"Inverted in {time.perf_counter() - t0:.1f} s ({out['device']})."
        return (session, out["reconstruction"], str(out["bundle"] / "reconstruction.png"),
                str(out["bundle"] / "ws.safetensors"), status, *out["view"])

    def _reuse_inversion(self, session: Session, yaw: float, pitch: float, resolution) -> tuple | None:
        """The same photo, face and options were already inverted in this session (a new photo, face or crop
        clears `inversion`): back to that inversion (without its edit) and its view, without inverting again."""
        try:
            entry = self.cache.get(session.inversion) if session.inversion else None
        except AppError:  # no longer kept: invert again
            return None
        if entry is None:
            return None
        if session.current != session.inversion:
            self.cache.forget(session.current)
        session.current, session.edits = session.inversion, {}
        view = self._gpu_view(entry, yaw, pitch, resolution, session.path())
        session.shown = (session.current, yaw, pitch)
        rec = session.path("inversion/reconstruction.png")
        return (session, _read_rgb(rec), str(rec), str(session.path("inversion/ws.safetensors")),
                "Already inverted (the same photo, face and crop): shown again, not re-run.", *view)

    @releases_memory
    @user_errors
    def view(self, session: Session | None, yaw: float, pitch: float, resolution: int):
        """Novel view + its depth from the cached tri-planes (the inversion or its edit)."""
        if not isinstance(session, Session) or session.current is None:
            return session, None, None, None, None, None   # nothing inverted yet: the sliders just move
        resolution, (yaw, pitch) = self._resolution(resolution), self._angles(yaw, pitch)
        entry = self.cache.get(session.current)
        view = self._gpu_view(entry, yaw, pitch, resolution, session.path())
        session.shown = (session.current, yaw, pitch)
        return (session, *view)

    @releases_memory
    @user_errors
    def preview(self, session: Session | None, yaw: float, pitch: float):
        """The fast preview while a slider moves: (session, image, depth picture); None before an inversion."""
        if not isinstance(session, Session) or session.current is None:
            return session, None, None
        yaw, pitch = self._angles(yaw, pitch)
        if session.shown == (session.current, yaw, pitch):
            # A late preview (the page sends the last one held back while the previous ran) of the position
            # whose full render is already shown: it would cover the full render with the blurry preview.
            return session, None, None
        return (session, *self._gpu_preview(self.cache.get(session.current), yaw, pitch))

    @releases_memory
    @user_errors
    def video(self, session: Session | None, frames: int, fps: int, resolution: int, progress=gr.Progress()):
        """Turntable (the official orbit) rendered frame by frame from the cached tri-planes, H.264 MP4."""
        session = self._need_result(session)
        frames, fps = export.whole(frames, "video frames", 1, 240), export.finite(fps, "fps", 1, 60)
        resolution = self._resolution(resolution)
        path = self._gpu_video(self.cache.get(session.current), frames, fps, resolution,
                               session.path("turntable.mp4"), progress)
        return session, path, path

    @releases_memory
    @user_errors
    def mesh(self, session: Session | None, resolution: int, progress=gr.Progress()):
        """Marching cubes of the cached tri-planes' density -> .glb (shown) and .ply."""
        session = self._need_result(session)
        resolution = export.whole(resolution, "mesh grid resolution", 16, 256)
        progress(0.1, desc=f"Sampling density on a {resolution}³ grid, marching cubes")
        glb, ply, n_v, n_f = self._gpu_mesh(self.cache.get(session.current), resolution, session.path())
        return session, glb, glb, ply, f"Mesh: {n_v:,} vertices, {n_f:,} triangles."

    @releases_memory
    @user_errors
    def edit(self, session: Session | None, yaw: float, pitch: float, resolution: int, *strengths: float,
             progress=gr.Progress()):
        """W+ edit of the inversion (GOAEPipeline.edit); views, video and mesh then follow the edited face."""
        session = self._need_result(session)
        if not self.directions:
            raise AppError(how_to_get_directions(self.domain.name))
        edits = {name: export.finite(a, f"strength of {name!r}") for name, a in zip(self.directions, strengths)}
        resolution, (yaw, pitch) = self._resolution(resolution), self._angles(yaw, pitch)
        session.edits = {k: v for k, v in edits.items() if v}
        if not session.edits:  # all zero: back to the inversion itself
            self.cache.forget(session.current if session.current != session.inversion else None)
            session.current = session.inversion
            view = self._gpu_view(self.cache.get(session.inversion), yaw, pitch, resolution, session.path())
            session.shown = (session.current, yaw, pitch)
            path = session.path("inversion/reconstruction.png")
            return (session, _read_rgb(path), str(path), *view)
        progress(0.1, desc="Editing")
        out = self._gpu_edit(self.cache.get(session.inversion), edit_offset(self.directions, edits), yaw, pitch,
                             resolution, session.path(), export.edit_file_name(session.edits))
        session.current = self.cache.put(session.cache_keys[1], out["entry"])
        session.shown = (session.current, yaw, pitch)
        return (session, out["image"], out["path"], *out["view"])

    def _gpu_entry(self, face, progress):
        call_device(self.pipe)
        return self.pipe(face.image, face.camera, output_type=None, progress=progress).to_cache()

    def _cat_options(self, box, camera) -> dict:
        if box in (None, "", []) and camera in (None, "", []):
            return {}
        if self.domain.camera_estimated:
            raise AppError(f"box and camera are for cat photos; the {self.domain.title.lower()} pipeline "
                           "finds the face and estimates its camera")
        return {"box": _box(box), **dict(zip(("yaw", "pitch"), _yaw_pitch_pair(camera)))}

    @releases_memory
    @user_errors
    def api_view(self, photo, face_index=None, yaw=0.0, pitch=0.0, edits=None, box=None, camera=None,
                 progress=gr.Progress()):
        """Stateless: the photo's head at yaw/pitch, edited by `edits` ({name: strength}) if given ->
        (view, depth picture, edited image at the photo's camera or None, camera). The inversion of the same
        photo, face and options is kept in the app's tri-plane cache, so later calls on it only render."""
        if photo is None:
            raise AppError("Send a photo.")
        index = None if face_index in (None, "") else export.whole(face_index, "face index", 0)
        yaw, pitch = self._angles(yaw, pitch)
        if edits not in (None, "") and not isinstance(edits, dict):
            raise AppError(f'edits must be strengths by direction name, e.g. {{"age": 2}}; got {edits!r}')
        edits = {name: export.finite(a, f"strength of {name!r}") for name, a in (edits or {}).items()}
        resolve_names(edits, self.directions)
        cat = self._cat_options(box, camera)
        face = self._align(photo, index, cat)
        data = photo if isinstance(photo, bytes) else Path(photo).read_bytes()
        key = hashlib.sha256(data + repr((self.domain.name, face.face_index, cat)).encode()).hexdigest()[:32]
        cached = self.folders.api_cache(key)
        try:
            entry = self.cache.get(str(cached))
        except AppError:
            entry = self.cache.get(self.cache.put(cached, self._gpu_entry(face, progress)))
        folder = self.folders.api_call()
        if any(edits.values()):
            offset = edit_offset(self.directions, {k: v for k, v in edits.items() if v})
            out = self._gpu_edit(entry, offset, yaw, pitch, None, folder, export.edit_file_name(edits))
            view, edited = out["view"], out["image"]
        else:
            view, edited = self._gpu_view(entry, yaw, pitch, None, folder), None
        return view[0], view[2], edited, self._camera_json(face)

    @releases_memory
    @user_errors
    def api_invert(self, photo, face_index=None, views=None, video: bool = False, mesh: bool = False,
                   edits=None, progress=gr.Progress(), box=None, camera=None):
        """The stateless endpoint: one photo in; crop, camera, reconstruction, views and files out. `box`
        ([l, t, r, b]) and `camera` ([yaw, pitch] degrees) are for cat photos."""
        if photo is None:
            raise AppError("Send a photo.")
        index = None if face_index in (None, "") else export.whole(face_index, "face index", 0)
        views = _view_list(views)
        if edits not in (None, "") and not isinstance(edits, dict):
            raise AppError(f'edits must be strengths by direction name, e.g. {{"age": 2}}; got {edits!r}')
        options = export.ExportOptions(views=views, video_frames=self.default_frames if video else 0, fps=24,
                                       mesh_resolution=self.mesh_resolution if mesh else 0, edits=edits or {})
        resolve_names(options.edits, self.directions)  # unknown names fail before any work
        face = self._align(photo, index, self._cat_options(box, camera))
        folder = self.folders.api_call()
        try:
            reconstruction = self._gpu_api(face, folder, options, progress)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        views_out = [(str(folder / export.view_file_name(y, p)), f"yaw {y:+g}°, pitch {p:+g}°") for y, p in options.views]
        files = sorted(str(p) for p in folder.iterdir() if p.is_file())
        return (np.asarray(face.image), self._camera_json(face), reconstruction, views_out, files)


class AppDomains:
    """The app's pipelines, one per domain (goae.domains: human portraits, cats), sharing the session folders
    and the tri-plane cache. A session belongs to the domain its photo was aligned for; every later step
    (views, video, mesh, edits) goes to that pipeline."""

    def __init__(self, apps: dict[str, GOAEApp]):
        if not apps:
            raise AppError("no pipeline loaded")
        self.apps = apps
        self.default = apps.get("human") or next(iter(apps.values()))

    def get(self, domain: str | None) -> GOAEApp:
        name = domain or self.default.domain.name
        if name not in self.apps:
            raise AppError(f"no {name!r} pipeline is loaded here; this app inverts: "
                           f"{', '.join(a.domain.title.lower() + 's' for a in self.apps.values())}")
        return self.apps[name]

    def of(self, session) -> GOAEApp:
        """The app of the session's domain (the default one before any photo)."""
        return self.get(session.domain) if isinstance(session, Session) and session.domain in self.apps else self.default

    @property
    def choices(self) -> list[tuple[str, str]]:
        return [(a.domain.title, name) for name, a in self.apps.items()]

    def align(self, photo, session, domain: str | None = None, session_id: str | None = None, box=None,
              yaw=None, pitch=None):
        """A new photo (or a new domain for it) with the chosen domain's aligner; the cat options only for cats."""
        app = user_errors(self.get)(domain)
        if app.domain.camera_estimated:
            try:
                return app.align(photo, session, session_id=session_id)
            except gr.Error as e:
                if "cat" in self.apps and "No face found" in str(e.message):
                    e.message += " If it is a cat, choose 'Cat face' above."
                raise
        return app.align(photo, session, session_id=session_id, box=user_errors(_box)(box),
                         yaw=user_errors(export.finite)(yaw or 0, "cat camera yaw"),
                         pitch=user_errors(export.finite)(pitch or 0, "cat camera pitch"))  # ranges: align_cat

    def api_view(self, photo, face_index=None, yaw=0.0, pitch=0.0, edits=None, domain=None, box=None, camera=None,
                 progress=gr.Progress()):
        return user_errors(self.get)(domain or None).api_view(photo, face_index, yaw, pitch, edits, box, camera,
                                                              progress=progress)

    def api_invert(self, photo, face_index=None, views=None, video=False, mesh=False, edits=None, domain=None,
                   box=None, camera=None, progress=gr.Progress()):
        return user_errors(self.get)(domain or None).api_invert(photo, face_index, views, video, mesh, edits,
                                                                progress=progress, box=box, camera=camera)


def _box(box) -> tuple[float, float, float, float] | None:
    """A cat box from the page ('l,t,r,b' text) or the API ([l, t, r, b]); empty -> None (detect)."""
    if box in (None, "", []):
        return None
    parts = box.replace(" ", "").split(",") if isinstance(box, str) else box
    if not isinstance(parts, (list, tuple)) or len(parts) != 4:
        raise AppError(f"the box must be left,top,right,bottom in pixels, e.g. 120,40,330,260; got {box!r}")
    return tuple(export.finite(v, "box coordinate") for v in parts)


def _yaw_pitch_pair(camera) -> tuple[float | None, float | None]:
    if camera in (None, "", []):
        return None, None
    if not isinstance(camera, (list, tuple)) or len(camera) != 2:
        raise AppError(f"camera must be [yaw, pitch] in degrees; got {camera!r}")
    return export.finite(camera[0], "camera yaw"), export.finite(camera[1], "camera pitch")  # ranges: align_cat


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _view_list(views) -> list[tuple[float, float]]:
    """[[yaw, pitch], ...] in degrees (the API's `views`), checked."""
    if views in (None, "", []):
        return []
    if not isinstance(views, (list, tuple)) or not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in views):
        raise AppError(f"views must be a list of [yaw, pitch] pairs in degrees, e.g. [[-30, 0], [30, 0]]; got {views!r}")
    if len(views) > MAX_API_VIEWS:
        raise AppError(f"at most {MAX_API_VIEWS} views per call, got {len(views)}")
    return [(export.finite(y, "view yaw", -180, 180), export.finite(p, "view pitch", -90, 90)) for y, p in views]


# ------------------------------------------------------------------------------------------ layout
def build_demo(app: GOAEApp | AppDomains) -> gr.Blocks:
    apps = app if isinstance(app, AppDomains) else AppDomains({app.domain.name: app})
    app = apps.default  # the settings the pipelines share (resolutions, frames, folders, cache)
    has_cat = "cat" in apps.apps
    with GOAEBlocks(title="GOAE: 3D GAN inversion", delete_cache=(3600, 3600)) as demo:
        def end_state(s):  # a plain function: Gradio deep-copies the page config (and a bound method's app) per page
            app.end_session(s)
        session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=end_state)
        what = "a portrait or a cat" if has_cat and len(apps.apps) > 1 else ("a cat" if has_cat else "a portrait")
        gr.Markdown(f"# GOAE: one photo of {what} → 3D head\nUpload a photo (or use the webcam, or click an "
                    "example): the app finds the face and inverts it. Then turn the head, make a turntable video, a "
                    "depth map, a mesh, or edit it.")
        banners = list(dict.fromkeys(a.banner for a in apps.apps.values() if a.banner))
        if banners:
            gr.Markdown("\n\n".join(f"⚠️ {b}" for b in banners), elem_id="banner")
        notes = [n for a in apps.apps.values() for n in a.notes]
        if notes:
            with gr.Accordion("Notes on the edit direction files", open=False):
                gr.Markdown("\n".join(f"- {n}" for n in notes), elem_id="direction-notes")
        example_dirs = sorted({Path(p).parent for p in app.examples})
        with gr.Row():
            with gr.Column():
                subject = gr.Radio(apps.choices, value=app.domain.name, label="What is in the photo",
                                   visible=len(apps.apps) > 1, elem_id="domain")
                photo = photo_input(example_dirs, label="Photo", type="filepath", image_mode=None, format="png",
                                    sources=["upload", "webcam", "clipboard"], elem_id="photo")
                with gr.Accordion("Cat options", open=True, visible=app.domain.name == "cat",
                                  elem_id="cat-options") as cat_options:
                    gr.Markdown("A cat's camera is **not estimated**: it is the AFHQ frontal camera unless you set "
                                "yaw and pitch here. The cat face is found by a detector; if it misses, give the "
                                "head's box (ears to chin) in pixels of the photo.")
                    cat_box = gr.Textbox("", label="Cat head box: left,top,right,bottom (empty: detect)",
                                         placeholder="e.g. 120,40,330,260", elem_id="cat-box")
                    with gr.Row():
                        cat_yaw = gr.Slider(-60, 60, value=0, step=1, label="Photo's camera yaw (degrees)",
                                            elem_id="cat-yaw")
                        cat_pitch = gr.Slider(-30, 30, value=0, step=1, label="Photo's camera pitch (degrees)",
                                              elem_id="cat-pitch")
                    crop_btn = gr.Button("Crop again with these", size="sm", elem_id="cat-crop")
                faces = gr.Radio(label="Several faces found: choose one", choices=[], visible=False, elem_id="faces")
                if app.examples:
                    gr.Examples(examples=[[p] for p in app.examples], inputs=[photo], label="Examples",
                                elem_id="examples", api_visibility="private")
                invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                with gr.Accordion("Options", open=False):
                    resolution = gr.Dropdown(app.resolutions, value=app.default_resolution, label="Neural rendering "
                                             "resolution (the model's own by default; lower = faster)")
                    frames = gr.Slider(4, 240, value=app.default_frames, step=1, label="Video frames", elem_id="frames")
                    fps = gr.Slider(6, 60, value=24, step=1, label="Video frames per second")
                    mesh_res = gr.Dropdown([64, 96, 128, 192, 256], value=app.mesh_resolution,
                                           label="Mesh grid resolution", elem_id="mesh-res")
            with gr.Column():
                aligned = gr.Image(label="Aligned crop (512×512)", interactive=False, format="png", elem_id="aligned")
                camera_md = gr.Markdown(label="Camera and face", elem_id="camera")
                status = gr.Markdown(label="Status", elem_id="status")
        with gr.Tabs():
            with gr.Tab("View"):
                with gr.Row():
                    recon = gr.Image(label="Reconstruction (photo's camera)", interactive=False, format="png",
                                     elem_id="recon")
                    view = gr.Image(label="Novel view (a quick preview while a slider moves)", interactive=False,
                                    format="png", elem_id="view")
                view_info = gr.Markdown(label="What the view shows", elem_id="view-info")
                with gr.Row():
                    yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees)", elem_id="yaw")
                    pitch = gr.Slider(-30, 30, value=0, step=1, label="Pitch (degrees)", elem_id="pitch")
                with gr.Row():
                    dl_aligned = gr.DownloadButton("Aligned crop", visible=False, size="sm")
                    dl_recon = gr.DownloadButton("Reconstruction", visible=False, size="sm")
                    dl_view = gr.DownloadButton("View", visible=False, size="sm", elem_id="dl-view")
                    dl_latent = gr.DownloadButton("W+ code (.safetensors)", visible=False, size="sm")
            with gr.Tab("Video"):
                video_btn = gr.Button("Make turntable video", elem_id="video-btn")
                video = gr.Video(label="Turntable", interactive=False, elem_id="video")
                dl_video = gr.DownloadButton("Video (.mp4)", visible=False, size="sm")
            with gr.Tab("Depth"):
                depth = gr.Image(label="Depth of the current view (near = bright)", interactive=False,
                                 format="png", elem_id="depth")
                with gr.Row():
                    dl_depth_preview = gr.DownloadButton("Depth preview (.png)", visible=False, size="sm")
                    dl_depth16 = gr.DownloadButton("Depth, 16-bit (.png)", visible=False, size="sm")
            with gr.Tab("Mesh"):
                mesh_btn = gr.Button("Extract mesh", elem_id="mesh-btn")
                model3d = gr.Model3D(label="Mesh", elem_id="model3d", clear_color=(0.9, 0.9, 0.9, 1.0))
                mesh_md = gr.Markdown(label="Mesh size")
                with gr.Row():
                    dl_glb = gr.DownloadButton("Mesh (.glb)", visible=False, size="sm")
                    dl_ply = gr.DownloadButton("Mesh (.ply)", visible=False, size="sm")
            with gr.Tab("Edit"):
                # One group of sliders per domain: a cat is offered only the cat directions, and so on.
                edit_groups, edit_controls = {}, {}
                for dname, dapp in apps.apps.items():
                    prefix = "" if dname == app.domain.name else f"{dname}-"
                    with gr.Group(visible=dname == app.domain.name) as group:
                        sliders = []
                        if dapp.directions:
                            with gr.Row():
                                for name in dapp.directions:
                                    sliders.append(gr.Slider(-3, 3, value=0, step=0.1,
                                                             label=EDIT_LABELS.get(name, name),
                                                             elem_id=f"edit-{prefix}{name}"))
                            edit_controls[dname] = (sliders, gr.Button("Apply edits", elem_id=f"{prefix}edit-btn"))
                        else:
                            gr.Markdown(hide_paths(how_to_get_directions(dname)), elem_id=f"{prefix}no-directions")
                    edit_groups[dname] = group
                edited = gr.Image(label="Edited (photo's camera)", interactive=False, format="png", elem_id="edited")
                dl_edit = gr.DownloadButton("Edited image", visible=False, size="sm")
        # The stateless API endpoint's inputs and outputs (not shown: API clients and MCP use them).
        with gr.Column(visible=False):
            api_photo = photo_input(example_dirs, label="Photo", type="filepath", image_mode=None, format="png")
            api_face = index_input(value=None, precision=0, label="Face index (empty: the largest)")
            api_views = json_input([], [[-30, 0], [30, 0]], {"type": "array", "items": _numbers(2, "[yaw, pitch] in degrees"),
                                                            "maxItems": MAX_API_VIEWS}, label="Views: [[yaw, pitch], ...] in degrees")
            api_video = gr.Checkbox(False, label="Turntable video")
            api_mesh = gr.Checkbox(False, label="Mesh (.glb, .ply)")
            edit_example = {next(iter(app.directions)): 2} if app.directions else {}
            api_edits = json_input({}, edit_example, {"type": "object", "additionalProperties": {"type": "number"},
                                                     "description": "strength by direction name"}, label="Edit strengths by name, e.g. {\"age\": 2}")
            api_domain = gr.Textbox(app.domain.name, label="What is in the photo: 'human' or 'cat'")
            api_domain.example_inputs = api_domain.example_payload = lambda: app.domain.name
            api_box = json_input([], [], _numbers(4, "left, top, right, bottom in pixels; [] to detect"), label="Cat head box [left, top, right, bottom] in pixels ([]: detect)")
            api_cam = json_input([], [], _numbers(2, "yaw, pitch in degrees; [] for AFHQ frontal"), label="Cat photo's camera [yaw, pitch] in degrees ([]: AFHQ frontal)")
            api_aligned = gr.Image(label="Aligned crop", format="png")
            api_camera = gr.JSON(label="Camera")
            api_recon = gr.Image(label="Reconstruction", format="png")
            api_views_out = gr.Gallery(label="Views", format="png")
            api_files = gr.File(label="Files", file_count="multiple")
            api_btn = gr.Button("invert")
            api_yaw = gr.Number(0, label="Yaw in degrees (-180 to 180)")
            api_pitch = gr.Number(0, label="Pitch in degrees (-90 to 90)")
            api_yaw.example_inputs = api_yaw.example_payload = lambda: 30
            api_pitch.example_inputs = api_pitch.example_payload = lambda: 0
            api_view_out = gr.Image(label="View", format="png")
            api_depth_out = gr.Image(label="Depth of the view", type="filepath", format="png")
            api_edited_out = gr.Image(label="Edited (photo's camera)", format="png")
            api_view_btn, api_edit_btn = gr.Button("render_view"), gr.Button("edit")

        def show(*paths):  # download buttons appear once their file exists
            return [gr.update(value=p, visible=p is not None) for p in paths]

        def sid(request: gr.Request | None) -> str | None:
            return getattr(request, "session_hash", None)

        def shown(yaw, pitch, preview=False):  # what the view shows, under it
            what = f"quick preview ({app.preview_resolution}² rays, no super-resolution)" if preview else "full render"
            return f"Yaw {float(yaw):+.0f}°, pitch {float(pitch):+.0f}°: {what}."

        view_outputs = [view, dl_view, depth, dl_depth_preview, dl_depth16, view_info]
        reset = [status, recon, dl_recon, dl_latent, *view_outputs, video, dl_video, model3d, dl_glb, dl_ply,
                 mesh_md, edited, dl_edit]

        def blank():  # what a new photo clears: status, reconstruction, views, video, mesh, edit (in `reset` order)
            return ["", None, *show(None, None), None, *show(None), None, *show(None, None), "", None, *show(None),
                    None, *show(None, None), "", None, *show(None)]

        def align(photo, session, domain=None, box=None, yaw=None, pitch=None, request: gr.Request = None):
            """Find the faces in a new photo, crop the largest (EG3D's FFHQ crop for portraits, an AFHQ-style
            crop for cats) and set its camera (estimated for portraits; for cats AFHQ frontal or yaw/pitch).
            Starts the session over. Then call /reconstruct.

            Args:
                photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
                domain: what is in the photo: 'human' or 'cat' (a pipeline of that domain must be loaded).
                box: cats only: the head's box 'left,top,right,bottom' in pixels; empty to detect it.
                yaw: cats only: the photo's camera yaw in degrees.
                pitch: cats only: the photo's camera pitch in degrees.
            """
            s, image, text, radio, path = apps.align(photo, session, domain, sid(request), box, yaw, pitch)
            return s, image, text, radio, *show(path), *blank()

        def recrop_quietly(photo, session, domain=None, box=None, yaw=None, pitch=None, request: gr.Request = None):
            """Another domain chosen with a photo loaded: the photo again with that aligner. A photo the new
            aligner refuses (a portrait when 'Cat face' is chosen) is no error nobody asked for: the camera text
            says so, and the page is cleared."""
            try:
                return align(photo, session, domain, box, yaw, pitch, request)
            except gr.Error as e:
                return None, None, f"**Not cropped as a {domain or app.domain.name}**: {e.message}", \
                    gr.update(choices=[], value=None, visible=False), *show(None), *blank()

        def after_failure():  # a photo that failed: nothing stale stays on the page (its session is gone)
            return None, None, "", gr.update(choices=[], value=None, visible=False), *show(None), *blank()

        def choose_domain(domain):  # the cat options and the edit sliders of the chosen domain
            return [gr.update(visible=domain == "cat"), *(gr.update(visible=d == domain) for d in edit_groups)]

        def choose_face(face_index, session):
            """Crop another face of the same photo (faces are numbered left to right, from 0). Then call /reconstruct.

            Args:
                face_index: the face to use (0-based, left to right).
            """
            s, image, text, radio, path = apps.of(session).choose_face(face_index, session)
            return s, image, text, radio, *show(path), *blank()

        def reconstruct(session, yaw, pitch, resolution, progress=gr.Progress()):
            """Invert the aligned face (encoder, first render, AFA, occlusion-aware mix, final render) and render
            the view at yaw/pitch. The tri-planes stay with the session for /render, /video, /mesh and /edit_session.

            Args:
                yaw: the view's yaw in degrees (left/right).
                pitch: the view's pitch in degrees (up/down).
                resolution: neural rendering resolution (the model's own by default; lower is faster).
            """
            s, rec, rec_path, latent, msg, image, view_path, dep, prev, d16 = apps.of(session).invert(
                session, yaw, pitch, resolution, progress=progress)
            return (s, rec, *show(rec_path, latent), msg, image, *show(view_path), dep, *show(prev, d16),
                    shown(yaw, pitch))

        def reconstruct_if_aligned(session, yaw, pitch, resolution, progress=gr.Progress()):
            """/reconstruct after a photo or face choice; nothing when the photo was cleared."""
            if not isinstance(session, Session) or session.face is None:
                return (session, *[gr.skip()] * 10)
            return reconstruct(session, yaw, pitch, resolution, progress)

        def preview(session, yaw, pitch):
            """A quick preview of the view at yaw/pitch (neural rendering without super-resolution, upsampled)
            and its depth: what the page shows while a slider moves.

            Args:
                yaw: yaw in degrees.
                pitch: pitch in degrees.
            """
            s, image, dep = apps.of(session).preview(session, yaw, pitch)
            return (s, gr.skip(), gr.skip(), gr.skip()) if image is None else (s, image, dep, shown(yaw, pitch, True))

        def render(session, yaw, pitch, resolution):
            """The full render of the view at yaw/pitch and its depth (16-bit PNG and preview).

            Args:
                yaw: yaw in degrees.
                pitch: pitch in degrees.
                resolution: neural rendering resolution.
            """
            s, image, view_path, dep, prev, d16 = apps.of(session).view(session, yaw, pitch, resolution)
            return s, image, *show(view_path), dep, *show(prev, d16), shown(yaw, pitch) if image is not None else ""

        def make_video(session, frames, fps, resolution, progress=gr.Progress()):
            """Render the turntable video (H.264 MP4) of the session's inversion or edit.

            Args:
                frames: number of frames (1-240).
                fps: frames per second.
                resolution: neural rendering resolution.
            """
            s, v, path = apps.of(session).video(session, frames, fps, resolution, progress=progress)
            return s, v, *show(path)

        def make_mesh(session, grid, progress=gr.Progress()):
            """Extract the mesh (marching cubes of the density) as .glb and .ply.

            Args:
                grid: the grid resolution (64-256 per side).
            """
            s, glb, glb_path, ply, msg = apps.of(session).mesh(session, grid, progress=progress)
            return s, glb, *show(glb_path, ply), msg

        def invert(photo, face_index=None, views=None, video=False, mesh=False, edits=None, domain=None, box=None,
                   camera=None, progress=gr.Progress()):
            """Invert one photo (a portrait, or a cat where a cat pipeline is loaded) into a 3D head, in one call
            that keeps nothing (for API clients and MCP).

            Args:
                photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
                face_index: which face, 0-based from the left; empty for the largest.
                views: extra views to render, a list of [yaw, pitch] pairs in degrees, e.g. [[-30, 0], [30, 0]] (at most 16).
                video: also render the turntable video (MP4).
                mesh: also extract the mesh (.glb and .ply, 128 grid).
                edits: edit strengths by direction name, e.g. {"age": 2} (the names under the app's Edit tab).
                domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
                box: cats only: the head's box [left, top, right, bottom] in pixels; [] to detect it.
                camera: cats only: the photo's camera [yaw, pitch] in degrees; [] for the AFHQ frontal one.
            Returns:
                the aligned 512x512 crop; the camera (EG3D label of 25 numbers, yaw and pitch in degrees, face index, box); the reconstruction; the views; every file written (aligned crop, reconstruction, depth, W+ code, views, video, mesh, edits, result.json).
            """
            return apps.api_invert(photo, face_index, views, video, mesh, edits, domain, box, camera, progress=progress)

        def render_view(photo, yaw=0.0, pitch=0.0, face_index=None, domain=None, box=None, camera=None,
                        progress=gr.Progress()):
            """Render the 3D head of a photo from a new viewpoint (stateless; the photo's inversion is kept for a
            while, so more views of the same photo are quick).

            Args:
                photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
                yaw: the view's yaw in degrees, -180 to 180 (positive turns the head to its left).
                pitch: the view's pitch in degrees, -90 to 90 (positive looks from above).
                face_index: which face, 0-based from the left; empty for the largest.
                domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
                box: cats only: the head's box [left, top, right, bottom] in pixels; [] to detect it.
                camera: cats only: the photo's camera [yaw, pitch] in degrees; [] for the AFHQ frontal one.
            Returns:
                the view (512x512); its depth map (near = bright); the photo's camera (EG3D label, yaw and pitch in degrees, face index, box).
            """
            view, depth, _, cam = apps.api_view(photo, face_index, yaw, pitch, None, domain, box, camera,
                                                progress=progress)
            return view, depth, cam

        def edit(photo, edits, yaw=0.0, pitch=0.0, face_index=None, domain=None, progress=gr.Progress()):
            """Edit the 3D head of a photo along semantic directions (age, glasses, expression, ...), stateless.

            Args:
                photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
                edits: strengths by direction name, e.g. {"age": 2} (about -3 to 3; the names the app lists under its Edit tab).
                yaw: the edited head's view yaw in degrees, -180 to 180.
                pitch: the edited head's view pitch in degrees, -90 to 90.
                face_index: which face, 0-based from the left; empty for the largest.
                domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
            Returns:
                the edited face at the photo's camera; the edited head at yaw/pitch; the photo's camera.
            """
            if not edits:
                raise gr.Error("Give at least one edit, e.g. {\"age\": 2}.", print_exception=False)
            view, _, edited, cam = apps.api_view(photo, face_index, yaw, pitch, edits, domain, progress=progress)
            return edited, view, cam

        for session_step in (align, choose_face, reconstruct, preview, render, make_video, make_mesh):
            session_step._mcp_type = "session"  # Gradio's marker (gr.mcp.tool/resource/prompt): not an MCP tool,
            # as a session step needs the page's state, which an MCP call has not.
        model = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        # Every event has a chosen name; those that only the page uses are private (not in the API, not MCP
        # tools). /invert first: the API page and MCP list it first, as the one call an agent needs.
        api_btn.click(invert, [api_photo, api_face, api_views, api_video, api_mesh, api_edits, api_domain, api_box,
                               api_cam],
                      [api_aligned, api_camera, api_recon, api_views_out, api_files], api_name="invert", **model)
        api_view_btn.click(render_view, [api_photo, api_yaw, api_pitch, api_face, api_domain, api_box, api_cam],
                           [api_view_out, api_depth_out, api_camera], api_name="render_view", **model)
        api_edit_btn.click(edit, [api_photo, api_edits, api_yaw, api_pitch, api_face, api_domain],
                           [api_edited_out, api_view_out, api_camera], api_name="edit", **model)
        aligned_out = [session, aligned, camera_md, faces, dl_aligned, *reset]
        inverted_out = [session, recon, dl_recon, dl_latent, status, *view_outputs]
        then_invert = dict(fn=reconstruct_if_aligned, inputs=[session, yaw, pitch, resolution], outputs=inverted_out,
                           api_visibility="private", **model)
        align_in = [photo, session, subject, cat_box, cat_yaw, cat_pitch]
        cleared = dict(fn=after_failure, inputs=None, outputs=aligned_out, api_visibility="private")
        aligning = photo.change(align, align_in, aligned_out, api_name="align")
        aligning.success(api_name="reconstruct_after_align", **then_invert)
        aligning.failure(api_name="clear_after_align", **cleared)
        # Another domain or other cat options: the same photo again, with that aligner.
        subject.change(choose_domain, [subject], [cat_options, *edit_groups.values()], api_name="choose_domain",
                       api_visibility="private")
        subject.input(recrop_quietly, align_in, aligned_out, api_name="crop_for_domain", api_visibility="private",
                      **model).success(api_name="reconstruct_after_domain", **then_invert)
        cropping = crop_btn.click(align, align_in, aligned_out, api_name="crop_again", api_visibility="private",
                                  **model)
        cropping.success(api_name="reconstruct_after_crop", **then_invert)
        cropping.failure(api_name="clear_after_crop", **cleared)
        faces.input(choose_face, [faces, session], aligned_out, api_name="choose_face").success(
            api_name="reconstruct_after_choice", **then_invert)
        invert_btn.click(reconstruct, [session, yaw, pitch, resolution], inverted_out, api_name="reconstruct", **model)
        # A head that follows the slider: quick previews while it moves, the full render when it is let go.
        gr.on([yaw.input, pitch.input], preview, [session, yaw, pitch], [session, view, depth, view_info],
              api_name="preview", trigger_mode="always_last", show_progress="hidden", **model)
        gr.on([yaw.release, pitch.release], render, [session, yaw, pitch, resolution], [session, *view_outputs],
              api_name="render", trigger_mode="always_last", show_progress="minimal", **model)
        video_btn.click(make_video, [session, frames, fps, resolution], [session, video, dl_video], api_name="video",
                        **model)
        mesh_btn.click(make_mesh, [session, mesh_res], [session, model3d, dl_glb, dl_ply, mesh_md], api_name="mesh",
                       **model)
        def edit_for(dname: str):
            def edit_session(session, yaw, pitch, resolution, *strengths, progress=gr.Progress()):
                """Apply the edit sliders' strengths (W+ directions) to the session's inversion; the view,
                video and mesh then follow the edited face. All strengths 0 goes back to the inversion.

                Args:
                    yaw: yaw in degrees.
                    pitch: pitch in degrees.
                    resolution: neural rendering resolution.
                    strengths: one strength per edit direction, in the order of the sliders.
                """
                if isinstance(session, Session) and session.face is not None and session.domain != dname:
                    title = apps.get(session.domain).domain.title
                    raise gr.Error(f"The photo was cropped as a {session.domain}: choose '{title}' above to edit it, "
                                   f"or crop it again as a {apps.get(dname).domain.title.lower()}.")
                s, image, path, v_image, view_path, dep, prev, d16 = apps.get(dname).edit(
                    session, yaw, pitch, resolution, *strengths, progress=progress)
                return (s, image, *show(path), v_image, *show(view_path), dep, *show(prev, d16), shown(yaw, pitch))
            edit_session._mcp_type = "session"
            return edit_session

        for dname, (sliders, edit_btn) in edit_controls.items():
            edit_btn.click(edit_for(dname), [session, yaw, pitch, resolution, *sliders],
                           [session, edited, dl_edit, *view_outputs],
                           api_name="edit_session" if dname == app.domain.name else f"edit_session_{dname}", **model)

        def end_session(request: gr.Request):
            """The tab closed: the session's tri-planes and files go now (its state follows within the hour)."""
            app.end_folder(app.folders.session(sid(request)))
        demo.unload(end_session)  # private: an unload event has no API
    demo.queue(default_concurrency_limit=1)
    return demo


# ------------------------------------------------------------------------------------------ entry points
def list_examples(folder: str | Path | None) -> list[str]:
    if not folder or not Path(folder).is_dir():
        return []
    return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def ensure_landmarker() -> None:
    """mediapipe's face_landmarker.task is not in the wheel: fetch it once (a Space has no set-up step)."""
    from goae.landmarker import LandmarkerModelMissing, download_landmarker, find_landmarker
    try:
        find_landmarker()
    except LandmarkerModelMissing:
        try:
            download_landmarker()
        except Exception as e:  # offline: photos will then fail with the landmarker's own instructions
            log.warning("face landmarker model missing and could not be downloaded: %s", e)


def create_app(weights: str | None = None, directions: str | None = None, examples: str | None = None,
               device: str | None = None, fast: bool | None = None, cat_weights: str | None = None) -> AppDomains:
    """Load the models (once) and the edit directions; arguments default to the GOAE_* environment.
    `weights` and `cat_weights` (GOAE_CAT_WEIGHTS) may be pipelines of two domains (goae.domains): the page
    then offers the choice. On random weights the cat domain comes too, so both can be tried.
    `fast` (GOAE_FAST=1): the pipelines' fast path (bf16 where the device has it) instead of fp32."""
    weights = weights or os.environ.get("GOAE_WEIGHTS")
    cat_weights = cat_weights or os.environ.get("GOAE_CAT_WEIGHTS")
    directions = directions or os.environ.get("GOAE_DIRECTIONS")
    examples = examples or os.environ.get("GOAE_EXAMPLES") or DEFAULT_EXAMPLES
    fast = os.environ.get("GOAE_FAST", "0").lower() in ("1", "true", "yes") if fast is None else fast
    # The device at start: cuda on a GPU Space (on ZeroGPU a placeholder that `spaces` moves into each
    # GPU call), else the CPU; each model step then runs where its call has a device (call_device).
    # The device and TF32 off; glibc's allocator as a threaded server wants it (not the command line's tuning,
    # which keeps freed memory in every thread's arena: issue #31), set before Gradio starts its threads.
    device = setup_runtime(device or "auto", tune_allocator=False)
    setup_server_allocator()
    ensure_landmarker()
    loaded = [load_model(weights, device)]
    first = loaded[0][0]
    small = str(first.weights_label).startswith("random-small")
    if not cat_weights and random_weights(first) and first.domain.name != "cat":
        cat_weights = "random-small-cat" if small else "random-cat"  # try both domains on random weights
    if cat_weights:
        loaded.append(load_model(cat_weights, device, fallback="random-small-cat" if small else "random-cat",
                                 default_folder=False))
    cache_mb = export.whole(os.environ.get("GOAE_CACHE_MB", 512), "GOAE_CACHE_MB", 0)
    cache, folders, examples = InversionCache(cache_mb * 2**20), Folders(), list_examples(examples)
    apps: dict[str, GOAEApp] = {}
    for pipe, banner in loaded:
        name = pipe.domain.name
        if name in apps:  # e.g. GOAE_CAT_WEIGHTS names a human pipeline
            log.warning("goae app: two %s pipelines given; keeping %s", name, apps[name].pipe.weights_label)
            continue
        if fast:
            pipe.enable_fast_path("auto")
            log.info("goae app: fast path %s", pipe.fast_path)
        dirs, notes = directions_for(pipe, directions)
        if banner and len(loaded) > 1:
            banner = f"{pipe.domain.title}s: {banner}"
        log.info("goae app: %s weights %s on %s%s, %d edit directions", name, pipe.weights_label, device,
                 " (ZeroGPU)" if on_zero_gpu() else "", len(dirs))
        apps[name] = GOAEApp(pipe, dirs, banner, notes, examples, folders=folders, cache=cache)
    return AppDomains(apps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOAE web demo")
    p.add_argument("--weights", help="pipeline folder or Hub repo id, or random / random-small ($GOAE_WEIGHTS)")
    p.add_argument("--cat-weights", help="a second pipeline, of the cat domain (or random-cat) ($GOAE_CAT_WEIGHTS)")
    p.add_argument("--directions", help="folder of edit direction files ($GOAE_DIRECTIONS)")
    p.add_argument("--examples", help="folder of example photos ($GOAE_EXAMPLES; default examples/)")
    p.add_argument("--host", default=None, help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also make a temporary public gradio.live link")
    p.add_argument("--fast", action="store_true", default=None,
                   help="fast path: bf16 autocast where the CPU/GPU has it ($GOAE_FAST=1); default fp32")
    return p.parse_args(argv)


def mcp_available() -> bool:
    """Gradio's MCP server needs the `gradio[mcp]` extra (the `mcp` package)."""
    import importlib.util
    return importlib.util.find_spec("mcp") is not None


def launch(demo: gr.Blocks, app: GOAEApp, host: str | None = None, port: int | None = None, share: bool = False):
    from starlette.middleware import Middleware

    # SIGTERM (a Space stopping, `kill`) ends like Ctrl-C: Gradio closes and the app's folders are removed.
    signal.signal(signal.SIGTERM, lambda *_: signal.default_int_handler(signal.SIGINT, None))
    allowed = sorted({str(Path(p).parent) for p in app.examples})
    body_limit = MAX_UPLOAD_MB * 2**20 * 4 // 3 + 2**20  # a photo as base64 inside an API call's JSON
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{MAX_UPLOAD_MB}mb",
                       allowed_paths=allowed, show_error=False, footer_links=["api", "gradio", "settings"],
                       mcp_server=mcp_available(),
                       app_kwargs={"middleware": [Middleware(QuickHead),
                                                  Middleware(RequestSizeLimit, max_bytes=body_limit)]})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _args = parse_args()
    goae_apps = create_app(_args.weights, _args.directions, _args.examples, fast=_args.fast,
                           cat_weights=_args.cat_weights)
    demo = build_demo(goae_apps)
    launch(demo, goae_apps.default, _args.host, _args.port, _args.share)
else:  # imported (Hugging Face Spaces, `gradio app.py`): build from the environment
    goae_apps = create_app()
    goae_app = goae_apps.default  # the first pipeline (human unless only a cat one is loaded)
    demo = build_demo(goae_apps)
