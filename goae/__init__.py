"""goae: GOAE 3D GAN inversion (ICCV 2023) on NVIDIA's EG3D.

photo -> align -> encode (canonical W+) -> render -> refine (AFA) -> fuse (occlusion-aware mix)
-> render / export. Heavy modules are imported on first use so that `import goae` stays cheap.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "EG3DGenerator": "goae.models.eg3d",
    "GOAEPipeline": "goae.pipeline",
    "GOAEOutput": "goae.pipeline",
    "HubUnavailableError": "goae.pipeline",
    "align_face": "goae.align",
    "AlignedFace": "goae.align",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'goae' has no attribute {name!r}")
