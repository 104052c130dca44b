"""Issue "Cats", parts 1 and 2: NVIDIA's afhqcats512-128.pkl and the GOAE authors' cat checkpoints convert
like the FFHQ ones, with the domain recorded and every key-mapping rule reported.

What differs between the FFHQ and AFHQ-cats EG3D pickles (the released models, `train.py --cfg=ffhq` vs
`--cfg=afhq --gamma=5 --aug=ada ... --gpc_reg_prob=0.8`, fine-tuned from FFHQ):
  * generator constructor kwargs: only rendering_kwargs.avg_camera_pivot, [0, 0, 0.2] -> [0, 0, -0.06]
    (test_ffhq_and_afhq_kwargs_differ_only_in_the_pivot computes this from goae's FFHQ512_KWARGS /
    AFHQ512_KWARGS); gamma is a loss weight and ADA an augmentation: neither is a generator kwarg;
  * the pickle's other entries: `augment_pipe` is an AugmentPipe record (ADA) instead of None, and
    `training_set_kwargs` point at an AFHQ zip. The converter reads only G_ema, so both must just be
    read safely and ignored.
The pivot flows pickle -> G_ema's rendering_kwargs -> generator/config.json -> EG3DGenerator.rendering_kwargs
-> GOAEPipeline.orbit_pivot -> view_camera / orbit_cameras.

The cat GOAE checkpoints cannot be downloaded here; their key mismatch is handled by named rules
(goae.weights.checkpoints' key mapping), each tested below on small configs (goae.presets SMALL_ENCODER / SMALL_AFA).
"""
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from goae.weights import checkpoints, convert, unpickle
from goae.weights.checkpoints import load_goae_checkpoint
from goae.weights.convert import convert_eg3d, convert_goae, main
from goae.weights.errors import DomainMismatchError, StateDictMismatchError, WrongCheckpointError
from goae.weights.unpickle import read_network_pickle
from goae.domains import CAT, HUMAN
from goae.models.afa import AFA
from goae.models.eg3d import AFHQ512_KWARGS, FFHQ512_KWARGS, EG3DGenerator
from goae.models.encoder import GOAEncoder
from goae.presets import SMALL_AFA, SMALL_CAT_GENERATOR, SMALL_ENCODER, SMALL_GENERATOR
from tiny import generator_record, module, network_pickle

ROOT = Path(__file__).resolve().parents[1]
AFHQ_PIVOT = [0, 0, -0.06]


def _small(kwargs: dict) -> dict:
    """A preset's official kwargs with a 2X super-resolution to 128 px (the SR widths are not official kwargs,
    so a pickle of the 512 px preset would render through 256/128-channel SR blocks: slow on a CPU)."""
    return dict(kwargs, img_resolution=128, rendering_kwargs=dict(
        kwargs["rendering_kwargs"], image_resolution=128,
        superresolution_module="training.superresolution.SuperresolutionHybrid2X"))


CAT_KWARGS = _small(SMALL_CAT_GENERATOR)  # w_dim 32, 128 channels at 32x32: fits SMALL_ENCODER / SMALL_AFA
HUMAN_KWARGS = _small(SMALL_GENERATOR)
NRR = 64

# What `train.py --cfg=afhq --aug=ada` pickles beside the networks (values of this test, not NVIDIA's).
AFHQ_TRAINING_SET = {"class_name": "training.dataset.ImageFolderDataset", "path": "/data/afhqv2_cats_512.zip",
                     "use_labels": True, "max_size": 5558, "xflip": True, "resolution": 512, "random_seed": 0}
ADA_KWARGS = {k: 1.0 for k in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness",
                               "contrast", "lumaflip", "hue", "saturation")}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _diff(a: dict, b: dict) -> dict:
    fa, fb = _flat(a), _flat(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def augment_pipe_record() -> dict:
    """An ADA AugmentPipe as the AFHQ pickle holds it: a persistent module with float attributes and buffers."""
    g = torch.Generator().manual_seed(3)
    return module(buffers={"p": torch.tensor(0.21), "Hz_geom": torch.randn(12, generator=g),
                           "Hz_fbank": torch.randn(4, 15, generator=g)},
                  class_name="AugmentPipe", _init_kwargs=dict(ADA_KWARGS), **ADA_KWARGS)


def afhq_pickle(G: EG3DGenerator, kwargs: dict) -> bytes:
    """{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'} like afhqcats512-128.pkl (G is G_ema)."""
    g = generator_record(G, kwargs, NRR)
    D = module({"w": torch.nn.Parameter(torch.ones(2), requires_grad=False)}, class_name="DualDiscriminator",
               _init_kwargs={"c_dim": 25, "img_resolution": kwargs["img_resolution"], "img_channels": 3})
    return network_pickle(g, G=g, D=D, augment_pipe=augment_pipe_record(), training_set_kwargs=AFHQ_TRAINING_SET)


@pytest.fixture(scope="module")
def cat_source(tmp_path_factory):
    torch.manual_seed(0)
    G = EG3DGenerator.from_official_kwargs(CAT_KWARGS, neural_rendering_resolution=NRR).eval()
    with torch.no_grad():
        G.backbone.mapping.w_avg.normal_()  # a non-trivial buffer to carry over
    path = tmp_path_factory.mktemp("cat") / "afhqcats512-128.pkl"
    path.write_bytes(afhq_pickle(G, CAT_KWARGS))
    return path, G


@pytest.fixture(scope="module")
def human_pkl(tmp_path_factory):
    torch.manual_seed(0)
    G = EG3DGenerator.from_official_kwargs(HUMAN_KWARGS, neural_rendering_resolution=NRR)
    path = tmp_path_factory.mktemp("human") / "ffhq-small.pkl"
    path.write_bytes(network_pickle(generator_record(G, HUMAN_KWARGS, NRR)))
    return path


@pytest.fixture
def ws_edit_dir(examples_dir: Path) -> Path:
    return examples_dir / "goae" / "ws_edit"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _render(G: EG3DGenerator) -> dict:
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1, G.z_dim, generator=g)
    c = CAT.input_camera(15.0, -5.0)
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7)
        return G.synthesis(ws, c, neural_rendering_resolution=NRR, noise_mode="const", deterministic=True)


# ----------------------------------------------------------------------------- part 1: the AFHQ generator


def test_ffhq_and_afhq_kwargs_differ_only_in_the_pivot():
    assert _diff(FFHQ512_KWARGS, AFHQ512_KWARGS) == {"rendering_kwargs.avg_camera_pivot": ([0, 0, 0.2], AFHQ_PIVOT)}
    assert _diff(SMALL_GENERATOR, SMALL_CAT_GENERATOR) == _diff(FFHQ512_KWARGS, AFHQ512_KWARGS)
    assert _diff(HUMAN_KWARGS, CAT_KWARGS) == _diff(FFHQ512_KWARGS, AFHQ512_KWARGS)
    assert tuple(HUMAN.pivot) == (0.0, 0.0, 0.2) and tuple(CAT.pivot) == (0.0, 0.0, -0.06)


def test_afhq_pickle_converts_and_its_kwargs_flow_through(cat_source, tmp_path):
    from goae.camera import camera_label_degrees, orbit_cameras
    from goae.pipeline import GOAEPipeline

    pkl, G = cat_source
    data = read_network_pickle(pkl)  # the whole pickle, ADA pipe included, read as inert records
    assert set(data) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"} and data["G"] is data["G_ema"]
    pipe_rec = data["augment_pipe"]
    assert isinstance(pipe_rec, unpickle.PickledObject) and pipe_rec.class_name == "AugmentPipe"
    assert pipe_rec.state["_buffers"]["Hz_fbank"].shape == (4, 15) and pipe_rec.state["xflip"] == 1.0
    assert data["training_set_kwargs"]["path"].endswith(".zip")

    out = convert_eg3d(pkl, tmp_path / "generator", domain="cat")
    config = json.loads((out / "config.json").read_text())
    assert config["rendering_kwargs"]["avg_camera_pivot"] == AFHQ_PIVOT
    assert config["rendering_kwargs"] == CAT_KWARGS["rendering_kwargs"]  # every rendering kwarg, as pickled
    assert config["neural_rendering_resolution"] == NRR and config["w_dim"] == 32
    card = (out / "README.md").read_text()
    assert "(cat domain)" in card and "AFHQv2 cats" in card and "CC BY-NC 4.0" in card and "non-commercial" in card

    G2 = EG3DGenerator.from_pretrained(out).eval()
    assert G2.rendering_kwargs["avg_camera_pivot"] == AFHQ_PIVOT
    sd, sd2 = G.state_dict(), G2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)  # bitwise
    a, b = _render(G), _render(G2)
    for k in ("image", "image_raw", "image_depth"):
        assert torch.equal(a[k], b[k]), k

    pipe = GOAEPipeline(generator=G2, encoder=GOAEncoder(**SMALL_ENCODER), afa=AFA(**SMALL_AFA), domain="cat")
    assert pipe.orbit_pivot == (0.0, 0.0, -0.06)
    assert torch.allclose(pipe.view_camera(20.0, 5.0), camera_label_degrees(20.0, 5.0, lookat=(0, 0, -0.06)))
    assert not torch.allclose(pipe.view_camera(20.0, 5.0), camera_label_degrees(20.0, 5.0, lookat=(0, 0, 0.2)))
    assert torch.allclose(pipe.orbit_cameras(6), orbit_cameras(6, lookat=(0, 0, -0.06)))


def test_eg3d_cli_cat_and_the_domain_checks(cat_source, human_pkl, tmp_path, capsys):
    pkl, _ = cat_source
    r = subprocess.run([sys.executable, "-m", "goae.convert", "eg3d", str(pkl), str(tmp_path / "g"), "--domain", "cat"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "g" / "config.json").read_text())["rendering_kwargs"]["avg_camera_pivot"] == AFHQ_PIVOT
    assert "- domain: cat (generator trained on AFHQv2 cats)" in (tmp_path / "g" / "README.md").read_text()

    # No --domain on a generator with AFHQ's pivot: refused, one line, nothing written.
    assert main(["eg3d", str(pkl), str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[0, 0, -0.06]" in err and "--domain cat" in err and "--domain human" in err
    assert not (tmp_path / "g2").exists() and _leftovers(tmp_path) == []
    # --domain human overrides it, with a warning that the card keeps.
    assert main(["eg3d", str(pkl), str(tmp_path / "g3"), "--domain", "human"]) == 0
    err = capsys.readouterr().err
    assert "warning: domain 'human' was chosen by the command" in err
    card = (tmp_path / "g3" / "README.md").read_text()
    assert "(human domain)" in card and "domain 'human' was chosen by the command" in card
    # --domain cat on an FFHQ-pivot generator: kept as asked, with the warning; no domain: human, silently.
    assert main(["eg3d", str(human_pkl), str(tmp_path / "g4"), "--domain", "cat"]) == 0
    assert "warning: domain 'cat' was chosen" in capsys.readouterr().err
    assert main(["eg3d", str(human_pkl), str(tmp_path / "g5")]) == 0
    assert "warning" not in capsys.readouterr().err and "(human domain)" in (tmp_path / "g5" / "README.md").read_text()


# ----------------------------------------------------------------------------- part 2: GOAE cat checkpoints


@pytest.fixture(scope="module")
def small_parts():
    torch.manual_seed(1)
    return GOAEncoder(**SMALL_ENCODER).eval(), AFA(**SMALL_AFA).eval()


def _derived(keys) -> list[str]:
    return [k for k in keys if k.rsplit(".", 1)[-1] in ("relative_coords_table", "relative_position_index", "attn_mask")]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _convert(cat_pkl, tmp_path, enc_obj, afa_obj, out="cat", **kwargs):
    enc = _save(tmp_path / "encoder_AFHQ.pt", enc_obj)
    afa = _save(tmp_path / "afa_AFHQ.pt", afa_obj)
    kwargs.setdefault("domain", "cat")
    return convert_goae(cat_pkl, enc, afa, tmp_path / out, encoder_config=SMALL_ENCODER, afa_config=SMALL_AFA, **kwargs)


def _mapping_lines(err: str) -> list[str]:
    return [line[len("goae.convert: "):] for line in err.splitlines()
            if line.startswith("goae.convert: ") and "checkpoint" in line]


def _card_mapping(out: Path) -> list[str]:
    card = (out / "README.md").read_text()
    assert "### Key mapping" in card
    section = card.split("### Key mapping", 1)[1].split("##", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def _assert_loaded_equal(out: Path, enc_sd: dict, afa_sd: dict, mlp_layer: int = 2):
    from goae.pipeline import GOAEPipeline

    pipe = GOAEPipeline.from_pretrained(out)
    assert pipe.domain.name == "cat" and pipe.encoder.config.mlp_layer == mlp_layer
    for part, ref in ((pipe.encoder, enc_sd), (pipe.afa, afa_sd)):
        sd = part.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    return pipe


def _prefixed(sd: dict) -> dict:
    return {"module." + k: v for k, v in sd.items()}


RULES = {
    # name: (encoder object, AFA object, expected lines) built from the reference state dicts
    "module_prefix": lambda e, a: (_prefixed(e), a, [
        f"encoder checkpoint encoder_AFHQ.pt: removed the 'module.' prefix from {len(e)} keys (a DataParallel save)"]),
    "wrapper": lambda e, a: ({"state_dict": e}, {"afa": a}, [
        "encoder checkpoint encoder_AFHQ.pt: took the weights from its single entry 'state_dict' "
        "(a training script's wrapper around the state dict)",
        "AFA checkpoint afa_AFHQ.pt: took the weights from its single entry 'afa' "
        "(a training script's wrapper around the state dict)"]),
    "derived_buffers": lambda e, a: ({k: v for k, v in e.items() if k not in _derived(e)}, a, [
        "encoder checkpoint encoder_AFHQ.pt: filled 18 Swin-V2 buffers it lacks (attn_mask, relative_coords_table, "
        "relative_position_index) from the model built on the config: they are fixed by the architecture "
        "(a save with non-persistent buffers, as timm's Swin-V2); the file cannot confirm the config's window sizes"]),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_key_rule_applied_and_reported(rule, cat_source, small_parts, tmp_path, capsys):
    enc, afa = small_parts
    e, a = enc.state_dict(), afa.state_dict()
    assert len(_derived(e)) == 18  # 8 blocks x (coords table, index) + 2 shifted-window masks
    enc_obj, afa_obj, lines = RULES[rule](e, a)
    out = _convert(cat_source[0], tmp_path, enc_obj, afa_obj)
    assert _mapping_lines(capsys.readouterr().err) == lines
    assert _card_mapping(out) == lines
    _assert_loaded_equal(out, e, a)


def test_mlp_layer_read_from_the_keys(cat_source, tmp_path, capsys):
    torch.manual_seed(2)
    enc3 = GOAEncoder(**dict(SMALL_ENCODER, mlp_layer=3)).state_dict()  # the config below says 2 (the default)
    a = AFA(**SMALL_AFA).state_dict()
    out = _convert(cat_source[0], tmp_path, enc3, a)
    line = ("encoder checkpoint encoder_AFHQ.pt: read mlp_layer 3 from its keys (each mapper_* MLP has 3 Linear "
            "layers; the config said 2)")
    assert _mapping_lines(capsys.readouterr().err) == [line] and _card_mapping(out) == [line]
    assert json.loads((out / "encoder" / "config.json").read_text())["mlp_layer"] == 3
    _assert_loaded_equal(out, enc3, a, mlp_layer=3)
    assert checkpoints.mlp_layers_in(GOAEncoder(**dict(SMALL_ENCODER, mlp_layer=1)).state_dict()) == 1
    assert checkpoints.mlp_layers_in({k: v for k, v in enc3.items() if not k.startswith("mapper_base_spatial.4")}) is None


def test_all_rules_at_once(cat_source, tmp_path, capsys):
    torch.manual_seed(4)
    enc3 = GOAEncoder(**dict(SMALL_ENCODER, mlp_layer=3)).state_dict()
    a = AFA(**SMALL_AFA).state_dict()
    stored = _prefixed({k: v for k, v in enc3.items() if k not in _derived(enc3)})
    out = _convert(cat_source[0], tmp_path, {"model": stored}, {"state_dict": _prefixed(a)})
    lines = _mapping_lines(capsys.readouterr().err)
    assert [line.split(": ", 1)[1].split(" ", 1)[0] for line in lines] == ["took", "removed", "read", "filled", "took", "removed"]
    assert lines[0].startswith("encoder checkpoint encoder_AFHQ.pt: took the weights from its single entry 'model'")
    assert lines[5] == f"AFA checkpoint afa_AFHQ.pt: removed the 'module.' prefix from {len(a)} keys (a DataParallel save)"
    assert _card_mapping(out) == lines
    _assert_loaded_equal(out, enc3, a, mlp_layer=3)


def test_still_mismatched_after_the_rules(cat_source, small_parts, tmp_path, capsys):
    enc, afa = small_parts
    e = enc.state_dict()
    gone = "cross_att_fine.linear2.weight"
    stored = _prefixed({k: v for k, v in e.items() if k != gone})
    stored["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as info:
        _convert(cat_source[0], tmp_path, {"state_dict": stored}, afa.state_dict())
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"encoder checkpoint {tmp_path / 'encoder_AFHQ.pt'} does not match the model")
    assert "after 2 key-mapping rule(s)" in msg and f"1 missing keys: {gone}" in msg and "1 unexpected keys: extra.weight" in msg
    assert not (tmp_path / "cat").exists() and _leftovers(tmp_path) == []
    assert _mapping_lines(capsys.readouterr().err) == []  # nothing reported as applied
    # Partly prefixed: no rule applies, the mismatch lists the file's own keys.
    half = dict(e)
    half["module.x"] = half.pop(gone)
    with pytest.raises(StateDictMismatchError, match=f"1 missing keys: {gone}; 1 unexpected keys: module.x"):
        load_goae_checkpoint(_save(tmp_path / "half.pt", half), "encoder", SMALL_ENCODER)
    # A wrapper named for the other part is not unwrapped; nor is a training checkpoint with other entries.
    with pytest.raises(WrongCheckpointError, match="single entry 'afa' is not a name for the encoder weights"):
        load_goae_checkpoint(_save(tmp_path / "swapped.pt", {"afa": e}), "encoder", SMALL_ENCODER)
    with pytest.raises(WrongCheckpointError, match="not a training checkpoint with other entries"):
        load_goae_checkpoint(_save(tmp_path / "train.pt", {"state_dict": e, "epoch": 3}), "encoder", SMALL_ENCODER)


def test_derived_buffers_of_another_architecture_are_an_error(cat_source, small_parts, tmp_path):
    _, afa = small_parts
    # Another pre-training window gives the same shapes but other log-spaced coordinates.
    other = GOAEncoder(**dict(SMALL_ENCODER, pretrained_window_sizes=(2, 2, 2, 2))).state_dict()
    with pytest.raises(StateDictMismatchError, match="Swin-V2 buffers hold other values than the config's architecture") as info:
        _convert(cat_source[0], tmp_path, other, afa.state_dict())
    assert "relative_coords_table" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cat").exists() and _leftovers(tmp_path) == []
    e = GOAEncoder(**SMALL_ENCODER).state_dict()
    mask = _derived(e)[2]
    assert mask.endswith("attn_mask")
    e[mask] = e[mask].clone().fill_(0.0)
    with pytest.raises(StateDictMismatchError, match=f"1 Swin-V2 buffers .*{mask}"):
        load_goae_checkpoint(_save(tmp_path / "mask.pt", e), "encoder", SMALL_ENCODER)


# ----------------------------------------------------------------------------- part 2: domain, card, directions


def _direction_file(path: Path, w_dim: int, seed: int) -> Path:
    np.save(path, np.random.default_rng(seed).standard_normal((1, 14, w_dim)).astype(np.float32))
    return path


def _safetensors_domain(path: Path) -> str:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])["__metadata__"]["domain"]


def test_cat_pipeline_folder(cat_source, small_parts, ws_edit_dir, tmp_path, capsys):
    from goae.edit import directions_for

    enc, afa = small_parts
    d = tmp_path / "ws_edit"
    d.mkdir()
    for f in ws_edit_dir.iterdir():  # the official files: human ones (512 wide) and cat_* (512 wide)
        (d / f.name).symlink_to(f)
    _direction_file(d / "cat_ears.npy", 32, 0)  # synthetic cat directions that fit this w_dim-32 model
    _direction_file(d / "cat_fluffy.npy", 32, 1)
    _direction_file(d / "smile.npy", 32, 2)  # a human one of the right width
    (d / "notes.txt").write_text("not a direction")
    out = _convert(cat_source[0], tmp_path, enc.state_dict(), afa.state_dict(), directions=d)
    err = capsys.readouterr().err
    assert _mapping_lines(err) == []

    assert json.loads((out / "model_index.json").read_text())["domain"] == "cat"
    shipped = sorted(p.name for p in (out / "directions").iterdir())
    assert shipped == ["cat_ears.safetensors", "cat_fluffy.safetensors"]
    assert all(_safetensors_domain(out / "directions" / n) == "cat" for n in shipped)
    for name in ("age.npy", "anger.npy", "glass.npy", "smile.npy"):
        assert f"edit direction {name} left out: a direction of another model (FFHQ; this one is AFHQv2 cats)" in err
    for name in ("cat_black.npy", "cat_smalleyes.npy"):  # right domain, wrong width for this small model
        assert f"edit direction {name} left out: width 512, the model's W+ is 14x32" in err
    assert "edit direction notes.txt left out: not a direction file" in err
    assert "copied 2 cat edit direction(s): cat_ears, cat_fluffy" in err

    card = (out / "README.md").read_text()
    assert "# GOAE pipeline (cat domain)" in card and "- domain: cat (generator trained on AFHQv2 cats)" in card
    assert "[AFHQv2 cats](https://github.com/clovaai/stargan-v2)" in card and "CC BY-NC 4.0" in card
    assert "NVIDIA Source Code License-NC" in card and "ask its authors" in card  # EG3D and GOAE terms
    assert "edit directions (cat): cat_ears, cat_fluffy, from ws_edit/" in card and '"cat"' in card  # tag
    for f in ("afhqcats512-128.pkl", "encoder_AFHQ.pt", "afa_AFHQ.pt"):
        assert f"| {f} | `" in card

    pipe = _assert_loaded_equal(out, enc.state_dict(), afa.state_dict())
    assert pipe.orbit_pivot == (0.0, 0.0, -0.06)
    dirs, notes = directions_for(pipe, pipe.directions_dir)
    assert sorted(dirs) == ["cat_ears", "cat_fluffy"] and all(x.domain == "cat" for x in dirs.values()) and not notes


def test_goae_domain_must_be_said_for_an_afhq_generator(cat_source, small_parts, tmp_path, capsys, monkeypatch):
    enc, afa = small_parts
    with pytest.raises(DomainMismatchError) as info:
        _convert(cat_source[0], tmp_path, enc.state_dict(), afa.state_dict(), domain=None)
    msg = str(info.value)
    assert "avg_camera_pivot [0, 0, -0.06]" in msg and "AFHQv2 cats" in msg and "--domain cat" in msg and "\n" not in msg
    assert not (tmp_path / "cat").exists() and _leftovers(tmp_path) == []
    # The command line: the same one-line refusal; with --domain cat the folder is written.
    real = convert.convert_goae  # main() converts with the released configs; these files are the small ones
    monkeypatch.setattr(convert, "convert_goae", lambda *a, **k: real(*a, encoder_config=SMALL_ENCODER,
                                                                       afa_config=SMALL_AFA, **k))
    args = ["goae", "--eg3d", str(cat_source[0]), "--encoder", str(tmp_path / "encoder_AFHQ.pt"),
            "--afa", str(tmp_path / "afa_AFHQ.pt"), str(tmp_path / "cli")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m goae.convert: error: ") and "--domain cat" in err and not (tmp_path / "cli").exists()
    assert main([*args, "--domain", "cat"]) == 0
    assert json.loads((tmp_path / "cli" / "model_index.json").read_text())["domain"] == "cat"


def test_real_directions_by_domain(ws_edit_dir, parity_dir, tmp_path, capsys):
    """The official files at their real width (512): the FFHQ-format tiny pickle of the goldens converted as a
    human folder ships age/anger/glass only; as a cat folder (asked for against its FFHQ pivot: a warning) it
    ships cat_black/cat_smalleyes only, tagged 'cat'."""
    from test_convert import TINY_AFA, TINY_ENCODER

    pkl = parity_dir / "eg3d" / "g_tiny_official_format.pkl"
    torch.manual_seed(0)
    enc = _save(tmp_path / "encoder.pt", GOAEncoder(**TINY_ENCODER).state_dict())
    afa = _save(tmp_path / "afa.pt", AFA(**TINY_AFA).state_dict())
    shipped = {}
    for domain in ("human", "cat"):
        out = convert_goae(pkl, enc, afa, tmp_path / domain, encoder_config=TINY_ENCODER, afa_config=TINY_AFA,
                           directions=ws_edit_dir, domain=domain)
        shipped[domain] = sorted(p.stem for p in (out / "directions").iterdir())
        assert all(_safetensors_domain(p) == domain for p in (out / "directions").iterdir())
        assert json.loads((out / "model_index.json").read_text())["domain"] == domain
    err = capsys.readouterr().err
    assert shipped == {"human": ["age", "anger", "glass"], "cat": ["cat_black", "cat_smalleyes"]}
    assert "edit direction cat_black.npy left out: a direction of another model (AFHQv2 cats; this one is FFHQ)" in err
    assert "edit direction age.npy left out: a direction of another model (FFHQ; this one is AFHQv2 cats)" in err
    assert err.count("warning: domain 'cat' was chosen by the command") == 1
    assert "domain 'cat' was chosen by the command" in (tmp_path / "cat" / "README.md").read_text()
    # The directions are the official tensors, unchanged.
    from goae.edit import load_direction

    for name in ("cat_black", "age"):
        folder = "cat" if name.startswith("cat_") else "human"
        a = load_direction(ws_edit_dir / f"{name}.npy").tensor
        b = load_file(tmp_path / folder / "directions" / f"{name}.safetensors")["direction"][0]
        assert torch.equal(a, b)
