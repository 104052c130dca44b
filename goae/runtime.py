"""Process-wide runtime settings: the device, the CPU allocator, the TF32 policy.

These change the whole process, not one pipeline, so the library never sets them on its own: the
app, the command line and the benchmarks call `setup_runtime` (or the single functions) at start.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Iterator

import torch


class DeviceError(ValueError):
    """A device that cannot be used here (no CUDA, unknown name)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' / None -> cuda if available else cpu; a named device is checked to exist."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return dev


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions. The fp32 (parity) path runs with it off; the fast
    path, which already trades precision for speed, may turn it on."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


@contextlib.contextmanager
def tf32(matmul: bool, convolutions: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls / cuDNN convolutions inside the block, the previous settings after it."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = bool(matmul), bool(convolutions)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def setup_runtime(device: str | torch.device | None = "auto", tune_allocator: bool | None = None) -> torch.device:
    """What a program that runs goae does once at start: pick the device, keep TF32 off (the parity
    path's policy; `GOAEPipeline.enable_fast_path` turns it on where it is safe) and, on a CPU, keep
    render buffers mapped (`tune_cpu_allocator`; $GOAE_TUNE_ALLOCATOR=0 turns that off). -> the device."""
    dev = resolve_device(device)
    set_tf32(False)
    if tune_allocator is None:
        tune_allocator = os.environ.get("GOAE_TUNE_ALLOCATOR", "1") != "0"
    if dev.type == "cpu" and tune_allocator:
        tune_cpu_allocator()
    return dev


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_MAX: 65536}


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library where it is glibc (Linux), else None (musl, macOS, Windows: nothing to tune)."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no mallopt parameters to speak of
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def tune_cpu_allocator(enable: bool = True, keep_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed memory for the next call instead of unmapping it (process-wide).

    Every render allocates tensors of 16-128 MB; by default glibc serves each with a fresh mmap
    and unmaps it on free, so every call page-faults (and zeroes) hundreds of MB again. With
    `enable` the heap serves them (no mmap) and keeps up to `keep_bytes` free at its top; peak RSS
    grows a little (heap fragmentation), and freed memory up to `keep_bytes` stays with the process.
    Outputs are identical. `enable=False` restores glibc's defaults. `setup_runtime` calls this on a
    CPU; library users opt in. Returns False (and does nothing) where libc is not glibc.

    For one process doing one thing at a time (the command line, a benchmark). Not for a threaded server:
    every thread's arena then keeps its own heap of freed memory (issue #31: a server's RSS doubled);
    servers use `setup_server_allocator`.
    """
    libc = _glibc()
    if libc is None:
        return False
    keep = int(min(max(keep_bytes, 0), 2**31 - 1))
    values = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: keep, _M_TOP_PAD: min(keep, 64 << 20)} if enable else _GLIBC_DEFAULTS
    return all(libc.mallopt(param, value) == 1 for param, value in values.items())


def setup_server_allocator(arenas: int = 2) -> bool:
    """The allocator for a threaded server (the app): glibc's defaults (big tensors mmapped, so they go
    back to the system when freed) and at most `arenas` malloc arenas, so that many request threads do not
    each keep a heap of their own. Call it before the server starts its threads. False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    values = {**_GLIBC_DEFAULTS, _M_ARENA_MAX: max(1, int(arenas))}
    return all(libc.mallopt(param, value) == 1 for param, value in values.items())


# Where Debian/Ubuntu (libjemalloc2), Fedora and Alpine put jemalloc.
_JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                   "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")


def jemalloc_library() -> str | None:
    """The path of an installed jemalloc (for LD_PRELOAD), or None. Preloaded, jemalloc trades time for a
    peak RSS that does not depend on how glibc's heap happens to fragment (README, Speed)."""
    found = next((p for p in _JEMALLOC_PATHS if os.path.isfile(p)), None)
    return found or ctypes.util.find_library("jemalloc")


def cpu_allocator() -> str:
    """The C allocator this process runs on: 'jemalloc' or 'tcmalloc' where preloaded, else 'glibc' (Linux)
    or 'system'."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc" if _glibc() is not None else "system"


def release_cpu_memory() -> bool:
    """Give the free memory that the C heap holds back to the system (glibc's malloc_trim), e.g. after each
    request of a server: freed tensors and buffers otherwise stay in the process as fragmented heap.
    -> whether any memory was released (False where libc is not glibc)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
