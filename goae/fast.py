"""Fast inference paths for GOAEPipeline: bf16/fp16 autocast, channels-last convolutions, torch.compile.

`GOAEPipeline.enable_fast_path(...)` builds a `FastPath` and applies it; `disable_fast_path()`
undoes it. The plain fp32 path stays the parity path (it already runs its StyleGAN2 convolutions
channels-last, which agrees with NCHW to fp32 rounding); a fast path trades a little accuracy
(bf16: ~3 significant digits in the convolutions and matmuls) for speed.

What stays fp32 under autocast, because it is numerically fragile or cheap:
- the StyleGAN2 style affine layers and weight demodulation (`goae.models.stylegan2`),
- the skip-image / tri-plane accumulation of the synthesis blocks and its FIR upsampling,
- the cosine-attention logits and softmax of the Swin-V2 encoder (temperature up to 100),
- LayerNorms (torch's autocast runs them in fp32), the volume renderer and the occlusion mask
  (the pipeline runs rendering outside autocast).
Every tensor the pipeline returns is float32.

`keep_fp32_weights=False` stores the weights that only ever run under autocast (the encoder's and AFA's
stock Linear and Conv2d layers) in the reduced dtype: autocast would cast them at every call anyway, so
outputs are identical and those weights take half the memory, but the fp32 path cannot come back.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import shutil
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Graphs Dynamo may keep per compiled function before it runs it eagerly (silently but for one log line):
# torch's default 8 is spent by the synthesis blocks (one code object, one graph per block and shape
# class), each batch size, resolution, precision and the depth-only render.
RECOMPILE_LIMIT = 64


class FastPathError(ValueError):
    """Bad fast-path options (unknown precision, a dtype the device cannot run, no C++ compiler)."""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_fast_bf16(device: torch.device | str) -> bool:
    """True where bf16 matmuls/convolutions are native: a CUDA GPU of compute capability 8.0 or more
    (Ampere+; `torch.cuda.is_bf16_supported()` is also True on T4 / V100, where bf16 is emulated and its
    convolutions take slow fallbacks), or a CPU with AVX512-BF16 or AMX (elsewhere torch emulates bf16
    and it is slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' where the device has fast bf16, else 'fp16' on CUDA (tensor cores from Volta on;
    the EG3D synthesis stays fp32 under fp16) and 'fp32' on other devices; others are checked and kept."""
    if precision not in PRECISIONS:
        raise FastPathError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if has_fast_bf16(device):
            return "bf16"
        return "fp16" if device.type == "cuda" and torch.cuda.is_available() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise FastPathError("fp16 autocast is for CUDA; on a CPU use precision='bf16' (or 'auto')")
    return precision


def channels_last_for(requested: bool | None, device_type: str) -> bool:
    """Whether the convolutions run NHWC: unless refused (False) and only on a CPU (oneDNN, measured up
    to 2x faster). On a GPU the measured layout is NCHW (the official fp32 one): NHWC there makes the
    batched modulated convolutions copy layouts in every layer. None (the modules' default) = allowed."""
    return requested is not False and device_type == "cpu"


def memory_format_for(requested: bool | None, device_type: str) -> torch.memory_format:
    """The activation memory format `channels_last_for` chooses (the synthesis blocks and AFA use it)."""
    return torch.channels_last if channels_last_for(requested, device_type) else torch.contiguous_format


@dataclass(frozen=True)
class FastPath:
    """An active fast path. precision is resolved ('fp32', 'bf16' or 'fp16'), never 'auto'.
    channels_last: NHWC allowed where it is faster (CPUs, `channels_last_for`); False: NCHW everywhere."""

    precision: str = "fp32"
    channels_last: bool = True
    compile: bool = False
    device_type: str = "cpu"
    compile_backend: str = "inductor"
    fp32_weights: bool = True

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.precision, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the network passes: torch.autocast in the reduced precision, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        # No cast cache: it would keep a reduced copy of every weight (they require grad) for the whole call.
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False)

    def backbone_autocast(self) -> contextlib.AbstractContextManager:
        """Context for the EG3D tri-plane synthesis. The official code runs it in fp32 (num_fp16_res=0,
        no conv clamp), and fp16 activations there can overflow: under fp16 it stays fp32; bf16 (fp32's
        range) is safe."""
        return contextlib.nullcontext() if self.precision == "fp16" else self.autocast()

    @property
    def tf32_convolutions(self) -> bool:
        """The TF32 policy on CUDA: the parity path (no FastPath) runs true fp32; a fast path lets
        cuDNN convolutions use TF32 (they run in bf16/fp16 under autocast anyway), while matmuls
        (attention logits, style affines, the renderer's decoder MLP) stay full fp32."""
        return self.device_type == "cuda"


# Layers computed in fp32 on purpose inside the autocast regions: their weights stay fp32.
_FP32_PARTS = ("cpb_mlp",)  # Swin-V2's continuous position bias MLP (goae.models.swin_v2)


def reducible_parameters(pipe) -> dict[str, nn.Parameter]:
    """The parameters a fast path may store in its reduced dtype: weights and biases of the encoder's and
    AFA's Linear and Conv2d layers with the stock forward (autocast casts all of them at every call;
    custom layers such as AFA's EqualConv2d scale their weight first, and norms run in fp32), minus
    `_FP32_PARTS`. By qualified name ("encoder.swin_model...")."""
    found = {}
    for owner, root in (("encoder", pipe.encoder), ("afa", pipe.afa)):
        for name, m in root.named_modules():
            stock = ((isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward)
                     or (isinstance(m, nn.Conv2d) and type(m).forward is nn.Conv2d.forward))
            if stock and not set(name.split(".")) & set(_FP32_PARTS):
                found.update({f"{owner}.{name}.{k}": p for k, p in m.named_parameters(recurse=False)})
    return found


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def stored_weights_dtype(pipe, params: dict[str, nn.Parameter] | None = None) -> torch.dtype:
    """The dtype the reducible weights are stored in: float32 unless a fast path reduced them."""
    params = reducible_parameters(pipe) if params is None else params
    return next(iter(params.values())).dtype if params else torch.float32


def store_weights(pipe, fast: FastPath | None) -> None:
    """Store the reducible weights as `fast` asks (fp32 unless fast.fp32_weights is False), or raise
    FastPathError where that needs fp32 values the pipeline no longer has (nothing is changed then)."""
    params = reducible_parameters(pipe)
    stored = stored_weights_dtype(pipe, params)
    want = torch.float32 if fast is None or fast.fp32_weights else fast.dtype
    if stored == want:
        return
    if stored != torch.float32:
        asked = "the fp32 path" if want == torch.float32 else f"a {fast.precision} fast path"
        raise FastPathError(f"the encoder and AFA weights are stored in {dtype_name(stored)} "
                            f"(enable_fast_path(keep_fp32_weights=False)) and their fp32 values are gone: "
                            f"for {asked}, load the pipeline again")
    for p in params.values():
        p.data = p.data.to(want)
    if next(iter(params.values())).device.type == "cpu":
        from goae.runtime import release_cpu_memory
        release_cpu_memory()  # the freed fp32 copies are holes in the C heap: give their pages back


def _synthesis_blocks(generator) -> list[nn.Module]:
    return [m for name, m in generator.hot_modules().items() if name.startswith("synthesis.")]


def compiled_modules(pipe) -> dict[str, nn.Module]:
    """The modules `compile=True` compiles, by name: each is called as a module by the GOAE forward
    (goae.models.goae), so its compiled form is what runs. The renderer's constants are made outside it
    (EG3DGenerator.render_planes passes them in)."""
    return {"encoder": pipe.encoder, **pipe.generator.hot_modules(), "afa": pipe.afa}


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def compiler_problem(device: torch.device | str, backend: str = "inductor") -> str | None:
    """Why torch.compile's `backend` cannot build code for `device` here, or None. Inductor writes C++ for
    a CPU (a compiler on PATH) and Triton kernels for a GPU (the triton package, compute capability 7.0+)."""
    if backend != "inductor":
        return None
    device = torch.device(device)
    if device.type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        return ("compile=True needs a C++ compiler (g++/clang++) on PATH for torch.compile's CPU backend; "
                "install one or use compile=False")
    if device.type == "cuda":
        if not _has_triton():
            return ("compile=True on CUDA needs Triton (pip install triton, the version your torch wheel names) "
                    "for torch.compile's GPU backend; or use compile=False")
        if torch.cuda.is_available() and torch.cuda.get_device_capability(device) < (7, 0):
            return "compile=True on CUDA needs compute capability 7.0+ (Triton); use compile=False on this GPU"
    return None


def compile_options(backend) -> dict:
    """torch.compile arguments of the fast path. dynamic=None: the first call of a module compiles for
    its shapes, a second shape recompiles once with the changed sizes symbolic (batch, resolution) instead
    of once per size (dynamic=False). The recompile limit is raised per compiled region where torch
    supports it (torch.compile(recompile_limit=)), else globally (never lowered)."""
    options = {"dynamic": None, "backend": backend}
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        options["recompile_limit"] = RECOMPILE_LIMIT
    else:
        from torch._dynamo import config

        config.cache_size_limit = max(config.cache_size_limit, RECOMPILE_LIMIT)
    return options


def apply(pipe, fast: FastPath) -> None:
    """Configure the pipeline's modules for `fast` (memory format, compilation).

    compile=True uses `nn.Module.compile` in place (state_dict keys unchanged); each module then
    compiles on its first call per input shape. Errors raised while compiling are not hidden."""
    if fast.compile:
        problem = compiler_problem(pipe.device if pipe.device.type == fast.device_type else fast.device_type,
                                   fast.compile_backend)
        if problem:
            raise FastPathError(problem)
    # True leaves the layout to the modules' by-device default (None: NHWC on a CPU, NCHW on a GPU, the
    # rule of memory_format_for, which they call), so it follows a later pipe.to(device) too; False: NCHW.
    layout = None if fast.channels_last else False
    for block in _synthesis_blocks(pipe.generator):
        block.channels_last = layout
    pipe.afa.channels_last = layout
    if fast.compile:
        options = compile_options(fast.compile_backend)
        for m in compiled_modules(pipe).values():
            m.compile(**options)  # in place: state_dict keys stay the same
    else:
        reset_compile(pipe)


def reset_compile(pipe) -> None:
    """Undo `nn.Module.compile` on the hot modules (back to eager)."""
    for m in compiled_modules(pipe).values():
        m._compiled_call_impl = None


def reset(pipe) -> None:
    """Back to the plain fp32 path: default memory formats, no compilation."""
    for block in _synthesis_blocks(pipe.generator):
        block.channels_last = None  # the plain path's default: by device (see SynthesisBlock, AFA)
    pipe.afa.channels_last = None
    reset_compile(pipe)
