"""What the app keeps: each browser session's small state (`Session`, in its gr.State), the tri-planes of every
session (`InversionCache`, bounded RAM, older entries spilled to disk) and the folders the app writes (`Folders`).
No Gradio here."""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_tensors
from safetensors.torch import save as tensors_to_bytes

from goae.io import atomic_write_bytes

SESSION_TTL_S = 3600  # a session's state and files go 1 h after its last step (at once when its tab closes)
API_FILES_TTL_S = 600  # files of a stateless /invert call, once Gradio has copied them to its own cache


class AppError(ValueError):
    """A request the app cannot serve in the session's current state (e.g. no inversion yet)."""


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
        # The Session that uses each folder now, to end it when its tab closes (the unload event has only the id).
        self._sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
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

    def track(self, session: Session) -> Session:
        """`session` now uses its folder (a new photo's Session replaces the previous one there)."""
        self._sessions[str(session.folder)] = session
        return session

    def current(self, folder: Path) -> Session | None:
        """The Session that uses `folder` now (None once its tab closed)."""
        return self._sessions.get(str(folder))

    def end(self, folder: Path, session: Session | None = None) -> None:
        """The session that uses `folder` (or `session`, if it still does) ended: its steps still running show
        and keep nothing. A new photo's Session in the same folder is not this one."""
        tracked = self._sessions.get(str(folder))
        if tracked is not None and (session is None or session is tracked):
            del self._sessions[str(folder)]
            tracked.ended = True

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
    # The view events (previews, full renders) run beside the model steps and only read the session: one that
    # saw a new result, a full render or the session's end while it ran is stale and shows nothing.
    renders: int = 0               # new results and full renders shown so far
    views: int = 0                 # previews and full renders of the view events shown so far
    settled: int = 0               # `views` when the view was last settled after a new result (GOAEApp.settle)
    ended: bool = False            # a new photo replaced it, its tab closed or its state expired

    def show(self, yaw: float, pitch: float) -> None:
        """A full render of `current` at (yaw, pitch) is on its way to the page: views that started before it are
        stale. Every step that shows a new result or view calls this once its result is in the session."""
        self.shown, self.renders = (self.current, yaw, pitch), self.renders + 1

    def moment(self) -> tuple:
        """What a view event sees when it starts; `still(moment)` when it ends says whether it may be shown."""
        return self.current, self.renders

    def still(self, moment: tuple) -> bool:
        return not self.ended and self.moment() == moment

    def views_folder(self) -> Path:
        """Where the view events write their files: apart from the files of a new result (an inversion or edit
        writes the session's folder itself while a view may be running)."""
        path = self.path("views")
        path.mkdir(exist_ok=True)
        return path

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
