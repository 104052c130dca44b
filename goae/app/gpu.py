"""Where the app's model steps run: ZeroGPU helpers.

On a ZeroGPU Space (the `spaces` package and SPACES_ZERO_GPU) every model step runs inside `@spaces.GPU`: in a
worker process that has the GPU for that call only. Elsewhere `gpu` changes nothing and the step runs in-process.
"""
from __future__ import annotations

try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA (app.py imports it first too).
    import spaces
except ImportError:
    spaces = None

import json
import math
import os
from typing import Callable

import torch

# Seconds a ZeroGPU call may hold the GPU (spaces.GPU `duration`). ZeroGPU checks the request against the
# visitor's remaining quota and uses it for queue priority, so each is sized from the call's work (frames,
# resolution) on a GPU, plus a fresh worker's set-up (CUDA context, weights onto the GPU): estimates with a
# wide margin over the work (one photo is ~0.8 TFLOP, a view ~0.2), not CPU times. No GPU has measured
# them yet: benchmarks/gpu_check.sh records the real times; $GOAE_GPU_SECONDS ('{"invert": 6}') overrides.
GPU_SETUP_SECONDS = 5
GPU_SECONDS = {"invert": 3, "view": 1, "preview": 0.5, "edit": 2, "video_frame": 0.15, "mesh_256": 2}
GPU_SECONDS_MAX = 120


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
