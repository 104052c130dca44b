"""Atomic file and folder writes, and the small file and error helpers every part shares (sha256_file,
one_line).

Every file goae writes goes through here so that an interrupted run (Ctrl-C, full disk, an
exception half-way through saving weights) never leaves a half-written file or folder at the
destination: we write into a temporary sibling in the same folder (same filesystem) and rename
it into place only once it is complete. `os.replace` of a file is atomic on POSIX and Windows.

What lands at the destination gets the permissions of a normal new file or folder (0666 / 0777
minus the umask), whatever the writer did to the temporary: mkstemp/mkdtemp make 0600/0700, and
safetensors writes through its own private temporary file, so its files would otherwise be 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator


def _tmp_prefix(path: Path) -> str:
    # Hidden and clearly named so that a leftover from a killed process is recognisable.
    return f".{path.name}.tmp-"


def _umask() -> int:
    # Linux reports the umask without changing it; os.umask(0) would briefly make files that other
    # threads create meanwhile world-writable.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _set_normal_modes(root: Path) -> None:
    """chmod `root` and everything under it to a new file's/folder's usual mode (symlinks untouched:
    chmod would follow them out of the folder)."""
    mask = _umask()
    os.chmod(root, (0o777 if root.is_dir() else 0o666) & ~mask)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """The checks `atomic_dir` makes before writing, for callers that want to fail before slow work:
    FileExistsError if `out_dir` exists (unless overwrite) or is not a folder, or is a symbolic link
    (replacing the link with a folder, or writing where it points, would both surprise)."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} is a symbolic link; give the real folder path instead")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --overwrite to replace it)")


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
    try:
        yield tmp
        _set_normal_modes(tmp)  # after writing: a writer may have replaced the file with a 0600 one
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
    check_output_dir(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out_dir), dir=out_dir.parent))
    try:
        yield tmp
        _set_normal_modes(tmp)  # mkdtemp makes 0700, safetensors 0600 files: give the usual modes
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not os.path.lexists(out_dir):
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


class NotARegularFile(ValueError):
    """An input path that is a FIFO, socket, device or folder: reading it could block forever or never end."""


def check_regular_file(path: str | os.PathLike, what: str = "input") -> Path:
    """`path` if it is a regular file (or a link to one); NotARegularFile otherwise, FileNotFoundError when it
    does not exist. stat() never blocks, unlike open() on a FIFO with no writer."""
    path = Path(path)
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a special file")
        raise NotARegularFile(f"{path} is {kind}, not a regular file; only regular files are read as {what}s")
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def one_line(what: object) -> str:
    """An error (or any text) as one clear line: goae's own errors, ValueErrors and OSErrors by their text (an
    OSError's without the errno), anything else with its type, which is what tells a bug from bad input."""
    if isinstance(what, OSError) and what.strerror:
        text = what.strerror + (f": {what.filename}" if what.filename else "")
    elif isinstance(what, BaseException):
        ours = type(what).__module__.split(".")[0] in ("goae", "__main__")  # __main__: `python -m goae.download`
        text = (type(what).__name__ if not str(what) else str(what) if ours or isinstance(what, (OSError, ValueError))
                else f"{type(what).__name__}: {what}")
    else:
        text = str(what)
    return " ".join(text.split())


def exit_with_error(prog: str, what: object, code: int) -> int:
    """A command's failure as its one stderr line, `<prog>: error: <one_line>` -> the exit code to return."""
    print(f"{prog}: error: {one_line(what) or 'unknown error'}", file=sys.stderr)
    return code
