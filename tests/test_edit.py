"""Edit directions: the official files load (incl. the torch zips named .npy), bad files fail clearly,
the official combination rule, and an edit through the tiny pipeline moves ws along exactly that offset."""
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from goae.edit import DirectionError, EditDirection, combine, load_direction, load_directions, save_direction
from goae.pipeline import GOAEPipeline
from tiny import load_tiny_config, tiny_pipeline

NAMES = ["age", "anger", "cat_black", "cat_smalleyes", "glass"]


@pytest.fixture(scope="module")
def ws_edit_dir(examples_dir: Path) -> Path:
    return examples_dir / "goae" / "ws_edit"


# ----------------------------------------------------------------------------------------- loading
def test_official_directions_load(ws_edit_dir):
    dirs = load_directions(ws_edit_dir)
    assert sorted(dirs) == NAMES
    for d in dirs.values():
        assert d.tensor.shape == (14, 512) and d.tensor.dtype == torch.float32
    row = {k: d.tensor.norm(dim=1) for k, d in dirs.items()}
    for name, norm in (("age", 2.0), ("anger", 3.0), ("glass", 0.95)):  # README: identical rows of this norm
        torch.testing.assert_close(row[name], torch.full((14,), norm), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(dirs[name].tensor.numpy(), np.load(ws_edit_dir / f"{name}.npy")[0])
    assert (row["cat_black"][:4] == 0).all() and torch.allclose(row["cat_black"][4:], torch.tensor(7.0), atol=1e-4)
    nz = (row["cat_smalleyes"] > 0).nonzero().flatten().tolist()
    assert nz == [4, 5] and torch.allclose(row["cat_smalleyes"][4:6], torch.tensor(8.0), atol=1e-4)
    for name in ("cat_black", "cat_smalleyes"):  # torch zips: compare with the raw storage bytes
        raw = zipfile.ZipFile(ws_edit_dir / f"{name}.npy").read("archive/data/0")
        np.testing.assert_array_equal(dirs[name].tensor.numpy(), np.frombuffer(raw, "<f4").reshape(14, 512))


def test_bad_direction_files(tmp_path, ws_edit_dir):
    np.save(tmp_path / "wide.npy", np.zeros((1, 14, 511), np.float32))
    with pytest.raises(DirectionError, match=r"expected \[1, 14, 512\] or \[14, 512\]"):
        load_direction(tmp_path / "wide.npy", w_dim=512)
    np.save(tmp_path / "batch.npy", np.zeros((2, 14, 512), np.float32))
    with pytest.raises(DirectionError, match=r"shape \[2, 14, 512\].*expected \[1, 14, w_dim\]"):
        load_direction(tmp_path / "batch.npy")
    nan = np.zeros((1, 14, 8), np.float32)
    nan[0, 3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DirectionError, match="non-finite"):
        load_direction(tmp_path / "nan.npy")
    good = (ws_edit_dir / "age.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(good[: len(good) // 2])
    with pytest.raises(DirectionError, match="cut.npy"):
        load_direction(tmp_path / "cut.npy")
    zipped = (ws_edit_dir / "cat_black.npy").read_bytes()
    (tmp_path / "cutzip.npy").write_bytes(zipped[: len(zipped) - 2000])
    with pytest.raises(DirectionError, match="cutzip.npy"):
        load_direction(tmp_path / "cutzip.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DirectionError, match="plain numeric array"):
        load_direction(tmp_path / "obj.npy")
    np.save(tmp_path / "text.npy", np.array(["x"] * 14))
    with pytest.raises(DirectionError, match="numeric"):
        load_direction(tmp_path / "text.npy")
    (tmp_path / "notes.npy").write_text("age direction\n")
    with pytest.raises(DirectionError, match="unrecognised"):
        load_direction(tmp_path / "notes.npy")
    save_file({"other": torch.zeros(14, 8)}, tmp_path / "key.safetensors")
    with pytest.raises(DirectionError, match="'direction'"):
        load_direction(tmp_path / "key.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(DirectionError, match="safetensors"):
        load_direction(tmp_path / "junk.safetensors")
    with pytest.raises(DirectionError, match="no such file"):
        load_direction(tmp_path / "missing.npy")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (Path.touch, (self.marker,))


def test_torch_zip_pickles_are_not_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"direction": _Payload(marker)}, tmp_path / "evil.npy")
    with pytest.raises(DirectionError, match="cannot read this torch archive safely"):
        load_direction(tmp_path / "evil.npy")
    assert not marker.exists()
    torch.save({"a": torch.zeros(14, 8), "b": torch.zeros(14, 8)}, tmp_path / "two.pt")
    with pytest.raises(DirectionError, match="expected one tensor"):
        load_direction(tmp_path / "two.pt")
    torch.save({"direction": torch.ones(1, 14, 8)}, tmp_path / "dict.pt")
    assert load_direction(tmp_path / "dict.pt").tensor.shape == (14, 8)


def test_save_direction_roundtrip(tmp_path):
    t = torch.randn(14, 16, generator=torch.Generator().manual_seed(1))
    save_direction(tmp_path / "smile.safetensors", t)
    raw = load_file(tmp_path / "smile.safetensors")
    assert list(raw) == ["direction"] and raw["direction"].shape == (1, 14, 16)
    d = load_direction(tmp_path / "smile.safetensors")
    assert d.name == "smile" and torch.equal(d.tensor, t)
    with pytest.raises(DirectionError, match="safetensors"):
        save_direction(tmp_path / "smile.npy", t)
    with pytest.raises(DirectionError, match="non-finite"):
        save_direction(tmp_path / "inf.safetensors", t.clone().fill_(float("inf")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smile.safetensors"]


# ----------------------------------------------------------------------------------------- combine
def test_combine_official_rule(ws_edit_dir):
    dirs = load_directions(ws_edit_dir)
    age, anger, glass = (dirs[k].tensor for k in ("age", "anger", "glass"))
    zero = combine(dirs, {"age": 0.0, "anger": 0, "glass": 0.0})
    assert zero.shape == (14, 512) and torch.equal(zero, torch.zeros(14, 512))
    assert torch.equal(combine(dirs, {}), torch.zeros(14, 512))
    assert torch.equal(combine(dirs, {"age": 1.5}), 1.5 * age - 0.8 * glass)
    assert torch.equal(combine(dirs, {"age": -2.0}), -2.0 * age - 0.8 * glass)
    assert torch.equal(combine(dirs, {"glass": 1.0}), glass)
    assert torch.equal(combine(dirs, {"glass": 0.5, "age": 0.0}), 0.5 * glass)  # no compensation
    # Several attributes: the glasses compensation is applied once per combined edit.
    torch.testing.assert_close(combine(dirs, {"age": 1.0, "anger": 2.0}), age + 2 * anger - 0.8 * glass,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(combine(dirs, {"age": 1.0, "glass": 1.0}), age + glass - 0.8 * glass,
                               atol=1e-6, rtol=0)
    assert torch.equal(combine(dirs, {"cat_black": 1.0}, glasses_key=None), dirs["cat_black"].tensor)
    assert torch.equal(combine(dirs, {"age": 1.0}, entanglement=0.0), age)
    with pytest.raises(DirectionError, match=r"unknown edit direction\(s\) \['smile'\]"):
        combine(dirs, {"smile": 1.0})
    with pytest.raises(DirectionError, match="needs a 'glass' direction"):
        combine({"age": dirs["age"]}, {"age": 1.0})
    with pytest.raises(DirectionError, match="finite"):
        combine(dirs, {"age": float("nan")})
    with pytest.raises(DirectionError, match="different shapes"):
        combine({"age": dirs["age"], "glass": EditDirection("glass", torch.zeros(14, 8))}, {"age": 1.0})


# ----------------------------------------------------------------------------------------- pipeline edit
@pytest.fixture(scope="module")
def tiny_pipe(parity_dir: Path) -> GOAEPipeline:
    gdir = parity_dir / "goae"
    pipe = tiny_pipeline(load_tiny_config(gdir), gdir)
    pipe.generator.neural_rendering_resolution = 32  # low neural rendering resolution for speed
    return pipe


def test_pipeline_edit_follows_the_offset(tiny_pipe, examples_dir, tmp_path):
    photos = examples_dir / "goae" / "real_person"
    labels = dict(json.loads((photos / "label.json").read_text())["labels"])
    result = tiny_pipe(Image.open(photos / "1.jpg"), labels["1.jpg"])
    g = torch.Generator().manual_seed(3)
    for name in ("age", "glass"):  # tiny model: w_dim 32, so write our own files
        save_direction(tmp_path / f"{name}.safetensors", 0.5 * torch.randn(1, 14, 32, generator=g))
    dirs = load_directions(tmp_path)

    offset0 = combine(dirs, {"age": 0.0})
    same = tiny_pipe.edit(result, offset0)
    # exactly no edit: the same codes and mixed tri-planes. Its image is the mixed tri-planes' render at the
    # input camera (the official Net.edit), i.e. that view of the inversion; the inversion's own image is the
    # F render (the official reconstruction).
    assert torch.equal(same.ws, result.ws) and torch.equal(same.planes, result.planes)
    view = tiny_pipe.render_view(result, result.camera, output_type=None)
    assert torch.allclose(same.image, view.image, atol=1e-5, rtol=0)

    offset = combine(dirs, {"age": 1.5})
    edited = tiny_pipe.edit(result, offset)
    assert torch.equal(edited.ws, result.ws + offset[None])
    expected = 1.5 * dirs["age"].tensor - 0.8 * dirs["glass"].tensor
    torch.testing.assert_close(edited.ws - result.ws, expected[None], atol=1e-6, rtol=0)
    assert (edited.image - result.image).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- folders for a model
def test_direction_folder_for_a_model(ws_edit_dir, tmp_path):
    from goae.edit import load_direction_folder, resolve_names

    dirs, notes = load_direction_folder(ws_edit_dir, 14, 512)
    assert sorted(dirs) == ["age", "anger", "glass"]                      # cat_* belong to the AFHQ model
    assert [n for n in notes if "cat_" in n] and all("AFHQ" in n for n in notes)
    dirs, notes = load_direction_folder(ws_edit_dir, 14, 32)              # real 32-wide weights: nothing fits
    assert dirs == {} and sum("width 512" in n for n in notes) == 3
    with pytest.raises(DirectionError, match=r"unknown edit\(s\) \['age'\].*width 512"):
        resolve_names({"age": 1.0}, dirs, notes)                          # the error says why
    dirs, notes = load_direction_folder(ws_edit_dir, 14, 32, project=True)  # random weights: projected
    assert sorted(dirs) == ["age", "anger", "glass"] and all(d.tensor.shape == (14, 32) for d in dirs.values())
    assert resolve_names({"glasses": 1, "age": -2}, dirs) == {"glass": 1.0, "age": -2.0}
    with pytest.raises(DirectionError, match="finite"):
        resolve_names({"age": float("nan")}, dirs)

    np.save(tmp_path / "smile.npy", np.zeros((1, 14, 512), np.float32))
    torch.save(torch.zeros(14, 512), tmp_path / "smile.pt")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    dirs, notes = load_direction_folder(tmp_path, 14, 512)
    assert sorted(dirs) == ["smile"] and any("broken.npy" in n for n in notes) and any("smile.pt" in n for n in notes)


# ----------------------------------------------------------------------------------------- directions with the weights
def test_directions_travel_with_the_weights(tmp_path, monkeypatch):
    """add_directions puts the files that fit a pipeline folder into its directions/ (what `goae download` and
    the converter do); a pipeline loaded from the folder then uses them with no --directions / GOAE_DIRECTIONS."""
    from goae.edit import add_directions, directions_for, how_to_get_directions

    folder = GOAEPipeline.from_preset("small", 0).save_pretrained(tmp_path / "pipe")  # human, W+ 14 x 32
    src = tmp_path / "src"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in ("smile", "cat_whiskers"):
        np.save(src / f"{name}.npy", torch.randn(1, 14, 32, generator=g).numpy())
    np.save(src / "wide.npy", np.zeros((1, 14, 512), np.float32))
    names, notes = add_directions(folder, sorted(src.iterdir()))
    assert names == ["smile"] and len(notes) == 2
    assert any("cat_whiskers.npy" in n and "another model" in n for n in notes) and any("width 512" in n for n in notes)
    assert sorted(p.name for p in (folder / "directions").iterdir()) == ["smile.safetensors"]

    pipe = GOAEPipeline.from_pretrained(folder)
    dirs, notes = directions_for(pipe, None)
    assert sorted(dirs) == ["smile"] and notes == []
    np.testing.assert_array_equal(dirs["smile"].tensor.numpy(), np.load(src / "smile.npy")[0])
    assert directions_for(pipe, src)[0].keys() == {"smile"}  # a folder given wins over the weights' own
    assert directions_for(GOAEPipeline.from_preset("small", 0), None) == ({}, [])

    # Where none are loaded: one line that says where the official ones come from.
    monkeypatch.setenv("GOAE_HOME", str(tmp_path / "home"))
    human = how_to_get_directions()
    assert human.startswith("No edit directions loaded.") and "`goae download --accept-licences`" in human
    assert "age, anger, glass" in human and "GOAE_DIRECTIONS" in human and "\n" not in human
    cat = how_to_get_directions("cat")
    assert "cat_black, cat_smalleyes" in cat and str(tmp_path / "home" / "downloads" / "ws_edit") in cat
    assert "--domain cat --directions" in cat
