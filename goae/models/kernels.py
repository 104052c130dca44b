"""Optional fused CPU kernel for the fused renderer (inference only).

`goae/csrc/triplane_decode.cpp` does, per tile of 16 points, what `FusedImportanceRenderer._decode`
does with ~20 PyTorch ops per chunk: points o + t*d, the bilinear taps of the three planes (summed),
the OSGDecoder MLP (32 -> 64, softplus, -> 1 + 32) and the widened sigmoid, without the
intermediate [points, 64] / [points, 12] tensors. It is built with torch.utils.cpp_extension on first
use (about half a minute, once: cached under $TORCH_EXTENSIONS_DIR or ~/.cache/goae/torch_extensions)
and used only for CPU float32 inference without autocast; autograd, CUDA and bf16 keep the PyTorch
path. A failed build (no compiler, ...) logs one warning and falls back. GOAE_NO_KERNELS=1 disables it.

Compiled with -O3 -march=native (x86-64; AVX-512 here, AVX2 elsewhere): the build runs on the machine
that uses it, and the extension's name carries a hash of the CPU's flags, so a cache shared with a
different CPU builds its own copy instead of loading code with instructions that CPU lacks.
The op is registered for CPU only and checks its inputs' devices and dtypes itself; a fake (meta)
implementation lets torch.compile trace through it. Outputs are within ~1e-6 of the PyTorch path.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

__all__ = ["available", "decode_rays"]

logger = logging.getLogger(__name__)
_SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "triplane_decode.cpp"
_state: dict = {"loaded": False, "ok": False}


def _cpu_tag() -> str:
    """Hash of the CPU model and flags (the -march=native build is only valid on such a CPU)."""
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
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def _build() -> bool:
    from torch.utils import cpp_extension
    build_root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "goae" / "torch_extensions")
    name = f"goae_kernels_{_cpu_tag()}"
    directory = Path(build_root) / name
    directory.mkdir(parents=True, exist_ok=True)
    flags = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]
    cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=flags, build_directory=str(directory),
                       is_python_module=False, verbose=False)
    if not hasattr(torch.ops.goae_kernels, "triplane_decode"):
        return False
    torch.library.register_fake("goae_kernels::triplane_decode")(_triplane_decode_fake)
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
    """True when the kernel is enabled (GOAE_NO_KERNELS unset) and built; builds it on first call."""
    if os.environ.get("GOAE_NO_KERNELS", "0") not in ("", "0"):
        return False
    if not _state["loaded"]:
        _state["loaded"] = True
        try:
            _state["ok"] = _build()
        except Exception as e:  # no compiler, no ninja, read-only cache, ...: the PyTorch path still works
            logger.warning("goae: could not build the fused CPU render kernel, using the PyTorch path (%s: %s)",
                           type(e).__name__, str(e).strip().splitlines()[-1][:300] if str(e).strip() else "")
            _state["ok"] = False
    return _state["ok"]


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
