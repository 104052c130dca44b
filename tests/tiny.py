"""Builders of the tiny GOAE configuration of the goldens (parity/goae/tiny_config.json, README §3),
shared by the parity, export, CLI and app tests, and of official-format EG3D network pickles (the
converter tests)."""
from __future__ import annotations

import contextlib
import json
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file

from goae.models.afa import AFA
from goae.models.encoder import GOAEncoder


def load_tiny_config(gdir: Path) -> dict:
    return json.loads((Path(gdir) / "tiny_config.json").read_text())


def tiny_encoder(tiny_config: dict) -> GOAEncoder:
    s, derived = tiny_config["encoder"]["swin_config"], tiny_config["encoder"]["derived"]
    ca = derived["cross_attention"]
    return GOAEncoder(
        img_size=s["IMG_SIZE"], patch_size=s["PATCH_SIZE"], in_chans=s["IN_CHANS"], embed_dim=s["EMBED_DIM"],
        depths=s["DEPTHS"], num_heads=s["NUM_HEADS"], window_size=s["WINDOW_SIZE"], mlp_ratio=s["MLP_RATIO"],
        qkv_bias=s["QKV_BIAS"], pretrained_window_sizes=s["PRETRAINED_WINDOW_SIZES"], drop_rate=s["DROP_RATE"],
        drop_path_rate=s["DROP_PATH_RATE"], w_dim=derived["w_dim"], num_ws=tiny_config["encoder"]["ctor"]["ws_dim"],
        mlp_layer=tiny_config["encoder"]["ctor"]["mlp_layer"], cross_att_heads=ca["nhead"],
        cross_att_ff=ca["dim_feedforward"])


def tiny_afa(tiny_config: dict) -> AFA:
    # Tiny AFA = every official width divided by the same factor (README §3).
    factor = 512 // tiny_config["afa"]["feature_channels"]
    return AFA(stage_channels=tuple(c // factor for c in (64, 128, 256)),
               feature_channels=tiny_config["afa"]["feature_channels"])


def tiny_generator(tiny_config: dict, gdir: Path):
    from goae.models.eg3d import EG3DGenerator

    g = tiny_config["generator"]
    G = EG3DGenerator.from_official_kwargs(g["ctor"], neural_rendering_resolution=g["neural_rendering_resolution"],
                                           sr_channels=[16, 8])
    G.load_state_dict(load_file(gdir / "tiny_generator.safetensors"), strict=True)
    return G.eval()


def tiny_pipeline(tiny_config: dict, gdir: Path):
    from goae.pipeline import GOAEPipeline

    enc = tiny_encoder(tiny_config)
    enc.load_state_dict(load_file(gdir / "tiny_encoder.safetensors"), strict=True)
    afa = tiny_afa(tiny_config)
    afa.load_state_dict(load_file(gdir / "tiny_afa.safetensors"), strict=True)
    blur = tiny_config["pipeline"]["gaussian_blur"]["sigma_fixed"]
    return GOAEPipeline(generator=tiny_generator(tiny_config, gdir), encoder=enc.eval(), afa=afa.eval(),
                        mask_blur_sigma=blur, deterministic=True)




def make_eg3d_dataset(folder, examples_dir, photos):
    """An EG3D dataset folder of real example photos: symlinks + dataset.json (nothing copied)."""
    import json

    src = examples_dir / "goae" / "real_person"
    labels = dict(json.loads((src / "label.json").read_text())["labels"])
    for name in photos:
        (folder / name).symlink_to(src / name)
    (folder / "dataset.json").write_text(json.dumps({"labels": [[n, labels[n]] for n in photos]}))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the subprocess runs of test_train.py (OMP_NUM_THREADS=1): small CPU models run
    several times slower with two threads fighting over a busy 2-core machine. Import it to use it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# Official-format network pickles (the converter tests): goae modules written the way EG3D pickles them.


def persistence_modules() -> dict[str, types.ModuleType]:
    """Stand-in `torch_utils` / `torch_utils.persistence` modules whose `_reconstruct_persistent_obj` returns its
    meta: pickling against it writes the same global an official network pickle references."""
    pers = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        return meta

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    return {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": pers}


@contextlib.contextmanager
def fake_persistence():
    """persistence_modules() installed for the block; yields the stand-in rebuild function."""
    modules = persistence_modules()
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield modules["torch_utils.persistence"]._reconstruct_persistent_obj
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


def module(params=None, modules=None, buffers=None, class_name="TriPlaneGenerator", **attrs) -> dict:
    """A module record as nested dicts (network_pickle turns them into persistent objects)."""
    return {"__class__": class_name, "_parameters": params or {}, "_buffers": buffers or {},
            "_modules": modules or {}, **attrs}


def network_pickle(g: dict, **top) -> bytes:
    """{'G_ema': g, **top} written the way EG3D pickles modules; a dict reachable twice stays shared. Top-level
    module records (G, D, augment_pipe) become persistent objects too; other values are pickled as they are."""
    with fake_persistence() as rebuild:
        memo = {}

        class Persistent:
            def __init__(self, d):
                self.class_name = d["__class__"]
                self.state = {k: v for k, v in d.items() if k != "__class__"}

            def __reduce__(self):
                return (rebuild, (dict(type="class", version=6, module_src="# never run", class_name=self.class_name,
                                       state=self.state),))

        def wrap(d):
            if not isinstance(d, dict):  # e.g. a torch.nn.Sequential, pickled as it is
                return d
            if id(d) not in memo:
                memo[id(d)] = p = Persistent(d)
                p.state["_modules"] = {k: wrap(v) for k, v in d["_modules"].items()}
            return memo[id(d)]

        top = {k: wrap(v) if isinstance(v, dict) and "__class__" in v else v for k, v in top.items()}
        return pickle.dumps({"G_ema": wrap(g), **top}, protocol=4)


def generator_record(G: torch.nn.Module, kwargs: dict, nrr: int = 32, class_name="TriPlaneGenerator") -> dict:
    """The module record of a goae generator as an official pickle holds it (kwargs = its constructor kwargs)."""
    def record(m, name):
        return module(dict(m._parameters), {n: record(c, type(c).__name__) for n, c in m._modules.items()},
                      dict(m._buffers), class_name=name, _non_persistent_buffers_set=set(m._non_persistent_buffers_set))

    g = record(G, class_name)
    g.update(_init_kwargs=kwargs, rendering_kwargs=kwargs.get("rendering_kwargs"), neural_rendering_resolution=nrr)
    return g


def official_pickle(G: torch.nn.Module, kwargs: dict, nrr: int = 32, class_name="TriPlaneGenerator", **top) -> bytes:
    """A goae module written as an official network pickle (the converter must read it back); `top`: further
    entries of the pickle's dict (training_set_kwargs, augment_pipe, ...)."""
    return network_pickle(generator_record(G, kwargs, nrr, class_name), **top)


# ------------------------------------------------------------------------------ cats (AFHQ layout)
AFHQ_RADIUS = 2.7
AFHQ_INTRINSICS = [4.2647, 0.0, 0.5, 0.0, 4.2647, 0.5, 0.0, 0.0, 1.0]


def afhq_label(yaw: float, pitch: float) -> list[float]:
    """The 25-number label of EG3D's AFHQ preparation, written out independently of goae.camera: a camera at
    radius 2.7 from the origin (yaw towards +x, pitch towards -y), translation = -2.7 * forward, OpenCV axes
    (columns right, down, forward), then the normalised intrinsics."""
    import numpy as np

    position = AFHQ_RADIUS * np.array([np.cos(pitch) * np.sin(yaw), -np.sin(pitch), np.cos(pitch) * np.cos(yaw)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return [float(v) for v in pose.reshape(-1)] + list(AFHQ_INTRINSICS)


def make_afhq_dataset(folder, poses, seed: int = 0, preset: str = "small-cat"):
    """A tiny AFHQv2-cats dataset in EG3D's layout: for each (yaw, pitch) in `poses` (radians) a 512x512 PNG
    `cat{i}.png` rendered by the random-weight `preset` generator at that AFHQ camera, its horizontal mirror
    `cat{i}_mirror.png` labelled with the camera at -yaw (both labels from `afhq_label`), and dataset.json.
    -> (folder, {file name: (yaw, pitch) of its label})."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from goae.pipeline import GOAEPipeline

    G = GOAEPipeline.from_preset(preset, seed=seed).generator
    cams = torch.tensor([afhq_label(y, p) for y, p in poses], dtype=torch.float32)
    z = torch.randn(len(poses), G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = G.mapping(z, torch.tensor([afhq_label(0.0, 0.0)], dtype=torch.float32).expand(len(poses), 25),
                       truncation_psi=0.7)
        images = G.render_planes(G.synthesize_planes(ws), ws, cams, deterministic=True)["image"]
    labels, angles = [], {}
    for i, ((yaw, pitch), img) in enumerate(zip(poses, images)):
        arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        im = Image.fromarray(np.ascontiguousarray(arr))
        for name, pic, pose in ((f"cat{i}.png", im, (yaw, pitch)),
                                (f"cat{i}_mirror.png", im.transpose(Image.FLIP_LEFT_RIGHT), (-yaw, pitch))):
            pic.save(folder / name)
            labels.append([name, afhq_label(*pose)])
            angles[name] = pose
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return folder, angles
