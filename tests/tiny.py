"""Builders of the tiny GOAE configuration of the goldens (parity/goae/tiny_config.json, README §3),
shared by the parity, export, CLI and app tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
