"""Named model presets: `small` = a tiny GOAE architecture (seconds per inversion on a CPU).

Same code paths, shapes of the data flow and file formats as the released model, with every width
cut down: the tiny configuration of the parity goldens (shared/parity/goae/tiny_config.json), written
out here so that the app and tests need no data files. Random weights only: for development, tests
and demos of the interface, never for real results.
"""
from __future__ import annotations

from typing import Any

# EG3D generator: the official TriPlaneGenerator kwargs with w_dim 32, channels <= 128 and 12+12 samples per ray.
SMALL_GENERATOR: dict[str, Any] = {
    "z_dim": 32, "c_dim": 25, "w_dim": 32, "img_resolution": 512, "img_channels": 3, "sr_num_fp16_res": 0,
    "mapping_kwargs": {"num_layers": 2}, "channel_base": 4096, "channel_max": 128,
    "fused_modconv_default": "inference_only", "num_fp16_res": 0, "conv_clamp": None,
    "sr_kwargs": {"channel_base": 4096, "channel_max": 128, "fused_modconv_default": "inference_only"},
    "rendering_kwargs": {
        "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.5, "c_scale": 1.0, "superresolution_noise_mode": "none",
        "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
        "sr_antialias": True, "depth_resolution": 12, "depth_resolution_importance": 12, "ray_start": 2.25,
        "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
    },
}
SMALL_NEURAL_RENDERING_RESOLUTION = 64
SMALL_SR_CHANNELS = [16, 8]
SMALL_ENCODER: dict[str, Any] = dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                     window_size=4, pretrained_window_sizes=(3, 3, 3, 2), w_dim=32)
SMALL_AFA: dict[str, Any] = dict(stage_channels=(16, 32, 64), feature_channels=128)

PRESETS = ("small",)


class PresetError(ValueError):
    """Unknown preset name."""


def small_pipeline(seed: int = 0):
    """GOAEPipeline of the `small` architecture on seeded random weights (w_avg = mean mapping output)."""
    from goae.models.afa import AFA
    from goae.models.eg3d import EG3DGenerator
    from goae.models.encoder import GOAEncoder
    from goae.pipeline import GOAEPipeline

    import torch

    torch.manual_seed(seed)  # module initialisation below draws from the global generator
    generator = EG3DGenerator.from_official_kwargs(SMALL_GENERATOR, SMALL_NEURAL_RENDERING_RESOLUTION,
                                                   sr_channels=SMALL_SR_CHANNELS)
    pipe = GOAEPipeline.from_random(seed=seed, generator=generator, encoder=GOAEncoder(**SMALL_ENCODER),
                                    afa=AFA(**SMALL_AFA))
    pipe.weights_label = f"random-small (seed {seed})"
    return pipe


def random_pipeline(preset: str, seed: int = 0):
    """'random' (released architecture) or 'random-small' on seeded random weights."""
    from goae.pipeline import GOAEPipeline

    if preset == "random":
        return GOAEPipeline.from_random(seed=seed)
    if preset == "random-small":
        return small_pipeline(seed)
    raise PresetError(f"unknown random preset {preset!r}; use 'random' or 'random-small'")


def fit_direction(direction, w_dim: int, seed: int = 0):
    """A [num_ws, W] direction -> [num_ws, w_dim] through a fixed seeded orthonormal projection (norm kept).

    Only for trying edit controls on the small random model with the official 512-wide files: the result
    is deterministic and distinct per file, and means as little as the random model itself."""
    import torch

    d = torch.as_tensor(direction, dtype=torch.float32)
    W = d.shape[-1]
    if W == w_dim:
        return d
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(W, w_dim), min(W, w_dim), generator=g))  # orthonormal columns
    proj = q if W > w_dim else q.T                                                   # [W, w_dim]
    return d @ proj * (W / w_dim) ** 0.5
