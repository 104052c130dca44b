"""Training on cats (train/run.py with model.domain=cat): an AFHQv2-layout dataset, the `small-cat` generator.

The dataset is made here (tests/tiny.py `make_afhq_dataset`): a few 512x512 renders of the random-weight
small-cat generator at AFHQ cameras, their mirrored copies and dataset.json, the labels written by an
independent formula (`afhq_label`: translation = -2.7 * forward, so every camera looks at the origin). It
needs no shared fixture. What must hold for cats and keep holding for humans: the cameras the training
makes follow the domain's label convention, the written folders record the domain, a generator of the
other domain is a clear ConfigError, and a run resumes.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import afhq_label, make_afhq_dataset, one_thread  # noqa: F401  (autouse fixture)
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from train import data as D  # noqa: E402
from train.config import ConfigError, load_config, resolve_domain  # noqa: E402
from train.run import Dist, Trainer, build_models, main  # noqa: E402

TINY = ROOT / "train" / "configs" / "tiny.yaml"
TINY_CAT = ROOT / "train" / "configs" / "tiny_cat.yaml"
POSES = ((-0.3, 0.05), (0.0, -0.1), (0.25, 0.1))  # (yaw, pitch) radians of the three cats; + their mirrors


@pytest.fixture(scope="module")
def cat_data(tmp_path_factory) -> tuple[Path, dict]:
    return make_afhq_dataset(tmp_path_factory.mktemp("afhq"), POSES)


@pytest.fixture(scope="module")
def human_folder(tmp_path_factory) -> Path:
    """A GOAEPipeline folder of the human domain (the `small` preset, model_index.json domain 'human')."""
    from goae.pipeline import GOAEPipeline

    folder = tmp_path_factory.mktemp("human") / "pipe"
    GOAEPipeline.from_preset("small", seed=0).save_pretrained(str(folder))
    return folder


def camera_geometry(c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """labels [N, 25] -> (camera positions [N, 3], forward axes [N, 3]) in float64."""
    pose = c[:, :16].double().reshape(-1, 4, 4).cpu().numpy()
    return pose[:, :3, 3], pose[:, :3, 2]


def assert_look_at(c: torch.Tensor, target, radius: float = 2.7) -> None:
    """Every camera sits `radius` from `target` and its optical axis goes through it."""
    position, forward = camera_geometry(c)
    to_target = np.asarray(target, dtype=np.float64) - position
    np.testing.assert_allclose(np.linalg.norm(to_target, axis=1), radius, atol=1e-5)
    np.testing.assert_allclose(to_target / radius, forward, atol=1e-5)


def flip(label) -> np.ndarray:
    out = np.array(label, dtype=np.float64)
    out[D.FLIP_ENTRIES] *= -1
    return out


def test_afhq_labels_and_mirrors_round_trip(cat_data):
    """dataset.json as EG3D's AFHQ preparation writes it: cameras at -2.7 * forward (looking at the origin),
    x_mirror.png = the mirror image with entries [1, 2, 3, 4, 8] of the label negated; train/data.py's xflip of
    x.png gives exactly x_mirror.png and its label, and goae's cat input camera is the same convention."""
    from PIL import Image

    from goae.domains import CAT

    folder, angles = cat_data
    labels = dict(json.loads((folder / "dataset.json").read_text())["labels"])
    assert len(labels) == 2 * len(POSES)
    c = torch.tensor(list(labels.values()), dtype=torch.float64)
    assert_look_at(c, (0.0, 0.0, 0.0))
    position, forward = camera_geometry(c)
    np.testing.assert_allclose(position, -2.7 * forward, atol=1e-6)  # AFHQ: translation = -2.7 * forward
    assert all(lab[16:] == [4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1] for lab in labels.values())

    names = [f"cat{i}.png" for i in range(len(POSES))]
    for name in names:
        mirror = name.replace(".png", "_mirror.png")
        np.testing.assert_allclose(flip(labels[name]), labels[mirror], atol=1e-6)  # the yaw-flipped pose
        np.testing.assert_array_equal(flip(flip(labels[name])), labels[name])
        yaw, pitch = angles[name]
        if pitch == 0.0:  # goae.domains.CAT.input_camera: EG3D's polar pitch, the same at pitch 0
            got = CAT.input_camera(math.degrees(yaw), 0.0)[0].double().numpy()
            np.testing.assert_allclose(got, labels[name], atol=1e-6)

    ds = D.EG3DDataset(folder, xflip=True, resolution=512)  # every x.png mirrored on the fly too
    index = {f: i for i, f in enumerate(ds.files)}
    for name in names:
        mirror = name.replace(".png", "_mirror.png")
        x, _, cam = ds.load(index[name] + ds.num_images, 32)  # xflip of x.png
        x_m, _, cam_m = ds.load(index[mirror], 32)  # the dataset's own mirrored copy
        torch.testing.assert_close(cam.double(), torch.tensor(labels[mirror], dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(cam, cam_m)
        assert torch.equal(x, x_m)
        assert torch.equal(x_m.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(folder / mirror).convert("RGB"))))


def test_stage_cameras_follow_the_domain(cat_data, tmp_path):
    """Synthetic samples are rendered at cameras of the domain's label convention (cats: looking at the origin,
    radius 2.7, as AFHQ; humans: at (0, 0, 0.2), as before), and the mapping is conditioned on the domain's
    frontal camera (cats: EG3D's conditioning camera, LookAtPoseSampler(pi/2, pi/2, pivot, radius 2.7))."""
    from goae.camera import camera_label
    from goae.domains import CAT

    folder, _ = cat_data
    for config, domain, lookat in ((TINY_CAT, "cat", (0.0, 0.0, 0.0)), (TINY, "human", (0.0, 0.0, 0.2))):
        cfg = load_config(config, [f"data.path={folder}", "data.synthetic_per_batch=2", "data.workers=0",
                                   "data.synthetic_yaw=0.5", "data.synthetic_pitch=0.3"])
        assert cfg["model"]["domain"] == domain
        t = Trainer(cfg, "encoder", tmp_path / domain, tmp_path / domain / "final", Dist("cpu"))
        assert t.stage.domain.name == domain
        syn = t.stage.synthetic(step=3, micro=0)
        assert syn["c"].shape == (2, 25) and torch.isfinite(syn["x"]).all()
        assert_look_at(syn["c"], lookat)
        position, _ = camera_geometry(syn["c"])
        assert np.abs(position[:, 0]).max() > 0.1  # off-frontal cameras: the look-at test means something
        cond = t.stage.conditioning_cameras(3)
        assert cond.shape == (3, 25)
        assert_look_at(cond, lookat)
        if domain == "cat":
            eg3d = camera_label(0.0, 0.0, lookat=CAT.pivot, official=True)
            torch.testing.assert_close(cond[:1], eg3d, atol=1e-6, rtol=0)
        else:  # humans: the cameras training made before domains existed
            torch.testing.assert_close(cond[:1], camera_label(0.0, 0.0))


def test_domain_from_folders_and_mismatch_errors(human_folder, cat_data, tmp_path, capsys):
    folder, _ = cat_data
    base = [f"data.path={folder}", "model.preset=null"]
    # a human pipeline folder: supplies the domain, and refuses another one
    assert load_config(TINY, [*base, f"model.generator={human_folder}"])["model"]["domain"] == "human"
    message = (r"model.domain is 'cat' but model.generator .*pipe \(pipeline folder, domain in its model_index.json\) "
               r"is a human generator: it cannot train a cat encoder")
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [*base, f"model.generator={human_folder}", "model.domain=cat"])
    assert main(["--config", str(TINY), "--data", str(folder), "--out", str(tmp_path / "o"), "--domain", "cat",
                 "--set", "model.preset=null", "--set", f"model.generator={human_folder}"]) == 2
    err = capsys.readouterr().err
    assert "error: model.domain is 'cat'" in err and "is a human generator" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    # a cat pipeline folder supplies "cat"; a folder from before domains (no key) is human
    cat_folder = tmp_path / "cat_pipe"
    shutil.copytree(human_folder, cat_folder)
    index = json.loads((cat_folder / "model_index.json").read_text())
    (cat_folder / "model_index.json").write_text(json.dumps({**index, "domain": "cat"}))
    assert load_config(TINY, [*base, f"model.generator={cat_folder}"])["model"]["domain"] == "cat"
    with pytest.raises(ConfigError, match="model.domain is 'human' but .* is a cat generator"):
        load_config(TINY, [*base, f"model.generator={cat_folder}", "model.domain=human"])
    del index["domain"]
    (cat_folder / "model_index.json").write_text(json.dumps(index))
    assert load_config(TINY, [*base, f"model.generator={cat_folder}"])["model"]["domain"] == "human"
    # a bare generator folder records no domain: human unless model.domain says cat
    bare = tmp_path / "bare"
    shutil.copytree(human_folder / "generator", bare)
    assert load_config(TINY, [*base, f"model.generator={bare}"])["model"]["domain"] == "human"
    assert load_config(TINY, [*base, f"model.generator={bare}", "model.domain=cat"])["model"]["domain"] == "cat"
    # ... but a bare generator with AFHQ's camera pivot must be told which domain it is (as the converter does)
    config = json.loads((bare / "config.json").read_text())
    config["rendering_kwargs"]["avg_camera_pivot"] = [0, 0, -0.06]
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="pivot .* of EG3D's AFHQv2 cats model.*set model.domain: cat"):
        load_config(TINY, [*base, f"model.generator={bare}"])
    assert load_config(TINY, [*base, f"model.generator={bare}", "model.domain=cat"])["model"]["domain"] == "cat"
    assert load_config(TINY, [*base, f"model.generator={bare}", "model.domain=human"])["model"]["domain"] == "human"
    # presets, names, and a config built by hand (build_models checks it too)
    with pytest.raises(ConfigError, match="model.preset 'small' is a human generator.*'small-cat' is the cat one"):
        load_config(TINY, ["model.domain=cat"])
    with pytest.raises(ConfigError, match="model.preset 'small-cat' is a cat generator"):
        load_config(TINY_CAT, ["model.domain=human"])
    with pytest.raises(ConfigError, match="model.domain must be one of \\['cat', 'human'\\]"):
        load_config(TINY, ["model.domain=dog"])
    with pytest.raises(ConfigError, match="model.preset must be one of \\['small', 'small-cat'\\]"):
        load_config(TINY, ["model.preset=afhq"])
    cfg = load_config(TINY, [*base, f"model.generator={human_folder}"])
    cfg["model"]["domain"] = "cat"
    with pytest.raises(ConfigError, match="is a human generator"):
        build_models(cfg, "cpu")
    old = load_config(TINY)
    del old["model"]["domain"]  # a config from before domains: human
    assert resolve_domain(old["model"]) == "human"


def test_tiny_cat_training_end_to_end(cat_data, tmp_path, capsys):
    """Both stages of the tiny cat config, two steps each; the folders record the cat domain (model_index.json,
    model card, config.json); the result loads and inverts one of the images; the run resumes for one more step;
    a human config cannot resume the cat run."""
    from PIL import Image

    from goae.pipeline import GOAEPipeline

    folder, _ = cat_data
    out = tmp_path / "run"
    args = ["--config", str(TINY_CAT), "--data", str(folder), "--out", str(out), "--set", "data.workers=0",
            "--set", "log.progress=false", "--set", "log.ckpt_every=1"]
    assert main([*args, "--max-steps", "2"]) == 0
    for stage in ("encoder", "afa"):
        log = [json.loads(line) for line in (out / stage / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) for r in log)
        config = json.loads((out / stage / "config.json").read_text())
        assert config["model"]["domain"] == "cat" and config["model"]["preset"] == "small-cat"
    for final in (out / "encoder" / "final", out / "final"):
        assert json.loads((final / "model_index.json").read_text())["domain"] == "cat"
        card = (final / "README.md").read_text()
        assert "# GOAE pipeline (cat domain)" in card and '"cat"' in card.split("---")[1]  # title and tags
        assert "domain cat" in card and "trained by train/run.py" in card
    pipe = GOAEPipeline.from_pretrained(str(out / "final"))
    assert pipe.config.domain == "cat" and pipe.orbit_pivot == (0.0, 0.0, -0.06)
    label = json.loads((folder / "dataset.json").read_text())["labels"][0]
    res = pipe(Image.open(folder / label[0]), label[1])
    assert res.image.shape == (1, 3, 512, 512) and torch.isfinite(res.image).all()

    capsys.readouterr()
    assert main([*args, "--max-steps", "3", "--resume"]) == 0  # the encoder stage finished: afa goes on
    err = capsys.readouterr().err
    assert f"resumed afa from {out / 'afa' / 'checkpoints' / 'step_0000002.pt'} at step 2" in err, err
    steps = lambda stage: [json.loads(line)["step"] for line in (out / stage / "log.jsonl").read_text().splitlines()]
    assert steps("encoder") == [1, 2] and steps("afa") == [1, 2, 3]
    assert json.loads((out / "final" / "model_index.json").read_text())["domain"] == "cat"
    assert "3 steps" in (out / "final" / "README.md").read_text()

    human = ["--config", str(TINY), "--data", str(folder), "--set", "data.workers=0", "--set", "log.progress=false"]
    assert main([*human, "--out", str(out / "encoder"), "--stage", "encoder", "--max-steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and "trains the 'cat' domain, this run the 'human' one" in err, err
    assert steps("encoder") == [1, 2]
