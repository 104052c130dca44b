"""Atomic file and folder writes.

Every file goae writes goes through here so that an interrupted run (Ctrl-C, full disk, an
exception half-way through saving weights) never leaves a half-written file or folder at the
destination: we write into a temporary sibling in the same folder (same filesystem) and rename
it into place only once it is complete. `os.replace` of a file is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _tmp_prefix(path: Path) -> str:
    # Hidden and clearly named so that a leftover from a killed process is recognisable.
    return f".{path.name}.tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path` (same suffix, so writers that look at the
    extension, e.g. image/video encoders, still work); on success it replaces `path`, on an
    exception it is deleted and `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions of a new file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `out_dir`; fill it, and on success it becomes
    `out_dir`. On an exception the temporary folder is removed and `out_dir` is untouched.

    An existing `out_dir` raises FileExistsError (before anything is written) unless
    `overwrite=True`, in which case it is replaced only after the new folder is complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is a normal folder
        yield tmp
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if not overwrite:  # appeared while we were writing
        raise FileExistsError(f"{out_dir} appeared while writing; not replacing it")
    # A folder cannot be os.replace'd over a non-empty one: move the old one aside first,
    # and put it back if the second rename fails.
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
