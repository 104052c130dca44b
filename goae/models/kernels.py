"""Optional fused CPU kernels (inference only), one library with two ops.

- `goae/csrc/triplane_decode.cpp` does, per tile of 16 points, what `FusedImportanceRenderer._decode`
  does with ~20 PyTorch ops per chunk: points o + t*d, the bilinear taps of the three planes (summed),
  the OSGDecoder MLP (32 -> 64, softplus, -> 1 + 32) and the widened sigmoid, without the
  intermediate [points, 64] / [points, 12] tensors. CPU float32 inference without autocast only;
  autograd, CUDA and bf16 keep the PyTorch path.
- `goae/csrc/bias_act.cpp` is a synthesis layer's epilogue, noise + bias + leaky ReLU + gain + clamp,
  in one pass over float32 activations instead of five (`bias_lrelu_`), bit-identical to the op-by-op
  path (`ops.bias_act` uses it).
GOAE_NO_KERNELS=1 disables both.

Building: `python -m goae.models.kernels` (setup.sh runs it) or, failing that, the first render of a
process, compiles it with torch.utils.cpp_extension (about half a minute, once) into
$TORCH_EXTENSIONS_DIR or <goae cache>/torch_extensions, in a folder named by a hash of everything the
binary depends on (source, flags, CPU, torch and Python), so two environments never rebuild or load
each other's copy. Nothing here can wait forever:
- the build runs in a child process, under an fcntl.flock lock that the operating system drops when
  its holders die (torch's own lock file is left behind by a killed build; under the flock it is
  known to be stale and removed); the child inherits the lock, so a build whose caller was killed
  still finishes for the next process instead of being redone beside it;
- waiting for the lock and the build share one limit, $GOAE_KERNEL_BUILD_TIMEOUT seconds (300); the
  child kills its own process group (ninja, the compiler) when the limit passes;
- anything that goes wrong (no compiler, the limit, a read-only cache, ...) logs one warning line and
  the PyTorch path is used; a later process tries again.
A finished build leaves a stamp file; later processes load the library directly (no ninja, no lock).

Compiled with -O3 -march=native (x86-64; AVX-512 here, AVX2 elsewhere): the build runs on the machine
that uses it, and the folder's hash covers the CPU's flags, so a cache shared with a different CPU
builds its own copy instead of loading code with instructions that CPU lacks.
The op is registered for CPU only and checks its inputs' devices and dtypes itself; a fake (meta)
implementation lets torch.compile trace through it. Outputs are within ~1e-6 of the PyTorch path.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from goae.paths import cache_root

try:
    import fcntl
except ImportError:   # Windows: no flock, no process groups; the PyTorch path is used there
    fcntl = None

__all__ = ["available", "bias_lrelu_", "bias_lrelu_applicable", "build", "decode_rays", "main", "BuildResult"]

logger = logging.getLogger(__name__)
_CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCES = (_CSRC / "triplane_decode.cpp", _CSRC / "bias_act.cpp")
_OPS = ("triplane_decode", "bias_lrelu_")  # what the library must register
_state: dict = {"loaded": False, "ok": False}
_fake_registered: list = []
_state_lock = threading.Lock()   # the app renders from several threads; one of them builds and loads
TIMEOUT_ENV = "GOAE_KERNEL_BUILD_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
_LOCK = "goae-build.lock"     # fcntl.flock'ed, never deleted (deleting a flock file lets two holders in)
_STAMP = "goae-build.ok"      # written by the child after the library loaded and registered the op
_TORCH_BATON = "lock"         # torch's FileBaton: an O_EXCL file, left behind when its owner is killed

# The build child: bounded by SIGALRM, which stops its whole process group (it leads it). Ninja runs
# each compiler in a group of its own and stops them on SIGTERM, so TERM goes first, then KILL. The child
# checks that it builds against the parent's torch, loads the result and only then writes the stamp.
_CHILD = r"""
import json, os, signal, sys, time
a = json.loads(sys.argv[1])
def stop(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    time.sleep(2)
    os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGALRM, stop)
signal.alarm(max(1, int(a["limit"])))
import torch
from torch.utils import cpp_extension
if os.path.dirname(torch.__file__) != a["torch"]:
    sys.exit("the build would use the torch in %s, not %s" % (os.path.dirname(torch.__file__), a["torch"]))
cpp_extension.load(name=a["name"], sources=a["sources"], extra_cflags=a["flags"], build_directory=a["dir"],
                   is_python_module=False, verbose=False)
for op in a["ops"]:
    if not hasattr(torch.ops.goae_kernels, op):
        sys.exit("the built library does not register goae_kernels::" + op)
with open(a["stamp"] + ".tmp", "w") as f:
    f.write(a["name"] + "\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(a["stamp"] + ".tmp", a["stamp"])
"""


def _cpu_info() -> str:
    """The CPU model and flags (the -march=native build is only valid on such a CPU)."""
    info = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name")):
                    info += line
                if line.strip() == "":
                    break  # the first CPU is enough
    except OSError:
        pass
    return info


def _flags() -> list[str]:
    flags = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]
    return flags


def build_root() -> Path:
    """$TORCH_EXTENSIONS_DIR, else <goae cache>/torch_extensions ($GOAE_HOME or ~/.cache/goae)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root).expanduser()
    return cache_root() / "torch_extensions"


def build_folder() -> Path:
    """This environment's build folder: its name hashes the sources, the flags, the CPU, torch and Python."""
    key = hashlib.sha1()
    for part in (*(source.read_bytes() for source in _SOURCES), " ".join(_flags()).encode(), _cpu_info().encode(), torch.__version__.encode(),
                 os.path.dirname(torch.__file__).encode(), sys.version.encode()):
        key.update(part + b"\0")
    return build_root() / f"goae_kernels_{key.hexdigest()[:12]}"


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise RuntimeError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise RuntimeError(f"{TIMEOUT_ENV}={raw!r} must be positive")
    return value


@dataclasses.dataclass
class BuildResult:
    library: Path        # the built shared library
    built: bool          # compiled by this call (False: found, built earlier or by another process)
    seconds: float       # time spent here, waiting included


def _check_tools() -> None:
    """The quick refusals, before any lock or child: not POSIX, no C++ compiler, no ninja."""
    if fcntl is None or os.name != "posix":
        raise RuntimeError("building it needs a POSIX system (flock, process groups)")
    cxx = os.environ.get("CXX", "c++")
    if not shutil.which(shlex.split(cxx)[0] if cxx.strip() else "c++"):
        raise RuntimeError(f"no C++ compiler ({cxx!r} not found; install g++ or set CXX)")
    if not shutil.which("ninja", path=_child_path()):
        raise RuntimeError("ninja not found (pip install ninja)")


def _child_path() -> str:
    # A virtual environment used without activation has pip's ninja beside its python, not on PATH.
    path = os.environ.get("PATH", os.defpath)
    return os.pathsep.join([str(Path(sys.executable).parent), path])


def _take_lock(fd: int, deadline: float, lock_path: Path, limit: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError(f"another process is still building it after {limit:.0f} s (lock {lock_path}; "
                               f"{TIMEOUT_ENV} sets the limit)")
        time.sleep(0.2)


def _run_child(folder: Path, name: str, lock_fd: int, deadline: float) -> None:
    limit = deadline - time.monotonic()
    if limit < 1:
        raise TimeoutError(f"no time left for the build ({TIMEOUT_ENV} sets the limit)")
    args = dict(name=name, sources=[str(s) for s in _SOURCES], ops=list(_OPS), flags=_flags(), dir=str(folder), stamp=str(folder / _STAMP),
                torch=os.path.dirname(torch.__file__), limit=limit)
    log_path = folder / "goae-build.log"
    # Output to a file, not a pipe: a child whose parent was killed keeps building (and must not die of
    # SIGPIPE); the inherited lock descriptor keeps other builders out until it exits.
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock_fd,), process_group=0,
                                 env={**os.environ, "PATH": _child_path()})
        try:
            rc = child.wait(timeout=limit + 10)   # the child's own alarm fires first; this is the backstop
        except subprocess.TimeoutExpired:
            _kill_group(child)
            raise TimeoutError(f"the build took longer than {limit:.0f} s ({TIMEOUT_ENV} sets the limit)") from None
        except BaseException:   # Ctrl-C while waiting: nothing of the build outlives this call
            _kill_group(child)
            raise
    if rc == -signal.SIGKILL and time.monotonic() >= deadline - 2:   # the child's alarm
        raise TimeoutError(f"the build took longer than {limit:.0f} s ({TIMEOUT_ENV} sets the limit)")
    if rc != 0 or not (folder / _STAMP).exists():
        if rc < 0:
            raise RuntimeError(f"the build was killed by signal {-rc} (log: {log_path})")
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise RuntimeError((errors or lines or [f"the build exited with status {rc}"])[-1][:300]
                           + f" (log: {log_path})")


def _kill_group(child: subprocess.Popen) -> None:
    """Stop the build child's process group (it and ninja; ninja stops its compilers on SIGTERM), reap it."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        child.wait(timeout=2)  # a moment for ninja to stop its compilers; then whatever is left goes
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _clear_outputs(folder: Path) -> None:
    for path in folder.iterdir():
        if path.name not in (_LOCK, "goae-build.log") and path.is_file():
            path.unlink(missing_ok=True)


def build(timeout: float | None = None) -> BuildResult:
    """Build the kernel for this environment unless it is built already; raise on failure or timeout
    (RuntimeError / TimeoutError with a one-line reason). Does not load it into this process."""
    start = time.monotonic()
    folder = build_folder()
    name = folder.name
    library = folder / f"{name}.so"
    if (folder / _STAMP).exists() and library.exists():
        return BuildResult(library, False, time.monotonic() - start)
    _check_tools()
    limit = timeout if timeout is not None else _timeout()
    deadline = start + limit
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / _LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _take_lock(fd, deadline, lock_path, limit)
        if (folder / _STAMP).exists() and library.exists():   # built by the process we waited for
            return BuildResult(library, False, time.monotonic() - start)
        # Every builder holds the flock while torch's lock file exists: one found here is a killed build's.
        (folder / _TORCH_BATON).unlink(missing_ok=True)
        logger.info("goae: building the fused CPU render kernel in %s (once; about half a minute)", folder)
        try:
            _run_child(folder, name, fd, deadline)
        except BaseException:
            _clear_outputs(folder)   # a half-written object must not pass for up to date next time
            raise
        return BuildResult(library, True, time.monotonic() - start)
    finally:
        os.close(fd)   # releases the flock (the child has exited or been killed by now)


def _build() -> bool:
    """Build if needed, load into this process and register the fake kernel."""
    result = build()
    if not all(hasattr(torch.ops.goae_kernels, op) for op in _OPS):
        torch.ops.load_library(str(result.library))
    if not all(hasattr(torch.ops.goae_kernels, op) for op in _OPS):
        return False
    if not _fake_registered:   # once per process (a test may reset _state and load again)
        torch.library.register_fake("goae_kernels::triplane_decode")(_triplane_decode_fake)
        _fake_registered.append(True)
    return True


def _triplane_decode_fake(table, n_rows, n_cols, A, b, origins, directions, depths, w0, b0, ws, w2, b2, features):
    """Shapes and dtypes of the op's outputs without computing them (torch.compile / FakeTensor tracing).
    Refuses what the CPU kernel would refuse, so a trace fails where the call would."""
    for t in (table, A, b, origins, directions, depths, w0, b0, ws, w2, b2):
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise RuntimeError(f"goae_kernels::triplane_decode takes float32 CPU tensors only, got {t.dtype} on {t.device}")
    N, R, S = depths.shape
    sigma = depths.new_empty(N, R, S)
    return [sigma, depths.new_empty(N, R, S, w2.shape[1])] if features else [sigma]


def available() -> bool:
    """True when the kernel is enabled (GOAE_NO_KERNELS unset) and built; builds it on first call (bounded:
    on any failure, one warning line and False)."""
    if os.environ.get("GOAE_NO_KERNELS", "0") not in ("", "0"):
        return False
    if not _state["loaded"]:
        with _state_lock:
            if not _state["loaded"]:
                _state["ok"] = _load_or_warn()
                _state["loaded"] = True
    return _state["ok"]


def _load_or_warn() -> bool:
    try:
        return _build()
    except Exception as e:  # no compiler, no ninja, the time limit, read-only cache, ...: PyTorch still works
        text = str(e).strip()
        logger.warning("goae: could not build the fused CPU render kernel, using the PyTorch path (%s: %s)",
                       type(e).__name__, text.splitlines()[-1][:300] if text else "")
        return False


def applicable(taps, decoder) -> bool:
    """Whether `decode_rays` runs for these tri-plane taps (renderer_fused.TriplaneTaps) and decoder now:
    CPU float32 inference, no autocast, EG3D's widths (3 planes x 32 channels, MLP 32 -> 64 -> 33)."""
    table = taps.table
    if torch.is_grad_enabled() or table.device.type != "cpu" or table.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or taps.n_planes != 3 or table.shape[1] != 32:
        return False
    net = getattr(decoder, "net", None)
    if not isinstance(net, torch.nn.Sequential) or len(net) != 3:
        return False
    if tuple(net[0].weight.shape) != (64, 32) or tuple(net[2].weight.shape) != (33, 64):
        return False
    if net[0].weight.dtype != torch.float32 or net[0].weight.device.type != "cpu":
        return False
    return available()


def bias_lrelu_applicable(x: torch.Tensor, b: torch.Tensor, noise: torch.Tensor | None) -> bool:
    """Whether `bias_lrelu_` runs for x [N, C, H, W] (CPU float32, NCHW or channels-last, not tracked by
    autograd, not under torch.compile), bias b [C] and noise [H, W] (or None) of x's dtype."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        return False
    if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return False
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    if b.dtype != x.dtype or b.device != x.device or b.shape != (x.shape[1],):
        return False
    if noise is not None and (noise.dtype != x.dtype or noise.device != x.device
                              or noise.shape[-2:] != x.shape[-2:] or noise.numel() != x.shape[2] * x.shape[3]):
        return False
    return available()


def bias_lrelu_(x: torch.Tensor, b: torch.Tensor, noise: torch.Tensor | None, alpha: float, gain: float,
                clamp: float | None) -> torch.Tensor:
    """In place: x = clamp(lrelu(x + noise + b, alpha) * gain, -clamp, clamp) (clamp None: none); call
    only when `bias_lrelu_applicable(x, b, noise)`. Returns x."""
    return torch.ops.goae_kernels.bias_lrelu_(x, None if noise is None else noise.contiguous(), b.contiguous(),
                                              float(alpha), float(gain), -1.0 if clamp is None else float(clamp))


def decode_rays(taps, decoder, ray_origins: torch.Tensor, ray_directions: torch.Tensor, depths: torch.Tensor,
                features: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused equivalent of FusedImportanceRenderer._decode: rays [N, R, 3], depths [N, R, S] ->
    (sigma [N, R, S], colours [N, R, S, 32] or None). `taps` is a renderer_fused.TriplaneTaps (its
    zero-bordered channels-last table and pixel map); call only when `applicable(...)`."""
    fc0, fc2 = decoder.net[0], decoder.net[2]
    n = taps.n_planes
    w0 = (fc0.weight * (fc0.weight_gain / n)).t().contiguous()   # [32, 64], the plane mean folded in
    b0 = fc0.bias * fc0.bias_gain
    w2 = fc2.weight * fc2.weight_gain                            # [33, 64]: sigma row, feature rows
    b2 = fc2.bias * fc2.bias_gain
    H, W = taps.plane_size
    out = torch.ops.goae_kernels.triplane_decode(
        taps.table, H, W, taps.A.contiguous(), taps.b.contiguous(), ray_origins.float(), ray_directions.float(),
        depths.float(), w0, b0, w2[0].contiguous(), w2[1:].t().contiguous(), b2, features)
    return out[0], (out[1] if features else None)


def main(argv: list[str] | None = None, prog: str = "python -m goae.models.kernels") -> int:
    """`python -m goae.models.kernels`: build the kernel for this environment now (set-up, a Space's start)
    and say where it is; exit status 1 where it cannot be built (goae then uses the PyTorch path)."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Build goae's fused CPU render kernel for this environment.")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds to wait for the lock and the build (default ${TIMEOUT_ENV} or {DEFAULT_TIMEOUT:.0f})")
    args = parser.parse_args(argv)
    if args.timeout is not None and not args.timeout > 0:
        parser.error("--timeout must be positive")
    if os.environ.get("GOAE_NO_KERNELS", "0") not in ("", "0"):
        print("goae: the fused CPU render kernel is disabled (GOAE_NO_KERNELS is set)")
        return 0
    try:
        result = build(args.timeout)
    except Exception as e:
        text = str(e).strip()
        print(f"goae: could not build the fused CPU render kernel ({type(e).__name__}: "
              f"{text.splitlines()[-1] if text else ''}); goae renders with the PyTorch path instead",
              file=sys.stderr)
        return 1
    how = f"built in {result.seconds:.0f} s" if result.built else "already built"
    print(f"goae: fused CPU render kernel {how}: {result.library}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
