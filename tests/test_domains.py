"""Domains (goae.domains): human portraits and cats through presets, pipeline folders, cameras, edit
directions, the command line and the app's routing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from goae.camera import camera_label_degrees, orbit_cameras, yaw_pitch_from_label
from goae.domains import CAT, HUMAN, DomainError, domain_of_direction_name, get_domain
from goae.edit import load_direction, load_direction_folder, save_direction
from goae.weights.checks import check_pipeline_folder
from goae.weights.errors import WeightsFolderError
from goae.models.eg3d import AFHQ512_KWARGS, FFHQ512_KWARGS
from goae.pipeline import GOAEPipeline
from goae.presets import PRESETS, RANDOM_WEIGHTS


@pytest.fixture(scope="module")
def cat_pipe():
    return GOAEPipeline.from_preset("small-cat", 0)


def test_presets_and_their_domains():
    assert {n: p.domain for n, p in PRESETS.items()} == {"ffhq": "human", "afhq": "cat", "small": "human",
                                                        "small-cat": "cat"}
    assert {RANDOM_WEIGHTS[n] for n in ("random-cat", "random-small-cat")} == {"afhq", "small-cat"}
    # AFHQ cats and FFHQ share the architecture; only the visualiser's pivot differs.
    diff = {k: (FFHQ512_KWARGS["rendering_kwargs"][k], v) for k, v in AFHQ512_KWARGS["rendering_kwargs"].items()
            if FFHQ512_KWARGS["rendering_kwargs"][k] != v}
    assert diff == {"avg_camera_pivot": ([0, 0, 0.2], [0, 0, -0.06])}
    assert {k: v for k, v in AFHQ512_KWARGS.items() if k != "rendering_kwargs"} == \
        {k: v for k, v in FFHQ512_KWARGS.items() if k != "rendering_kwargs"}
    with pytest.raises(DomainError, match="unknown domain 'dog'"):
        get_domain("dog")
    with pytest.raises(DomainError, match="unknown domain"):
        GOAEPipeline.from_random(0, generator=GOAEPipeline.from_preset("small", 0).generator, domain="dog")


def test_cameras_follow_the_domain(cat_pipe):
    human = GOAEPipeline.from_preset("small", 0)
    assert human.domain is HUMAN and human.orbit_pivot == (0.0, 0.0, 0.2)
    assert cat_pipe.domain is CAT and cat_pipe.orbit_pivot == (0.0, 0.0, -0.06)
    # Human views are what they were before domains existed.
    torch.testing.assert_close(human.view_camera(25, -10), camera_label_degrees(25, -10), rtol=0, atol=0)
    torch.testing.assert_close(human.orbit_cameras(8), orbit_cameras(8), rtol=0, atol=0)
    # Cat views turn around AFHQ's pivot: every camera looks at it, at radius 2.7.
    cams = cat_pipe.view_camera([-30, 0, 30], [0, 10, -5]).reshape(-1, 25)
    pose = cams[:, :16].reshape(-1, 4, 4)
    to_pivot = torch.tensor([0, 0, -0.06]) - pose[:, :3, 3]
    cos = torch.nn.functional.cosine_similarity(pose[:, :3, 2], to_pivot, dim=1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-6) and torch.allclose(to_pivot.norm(dim=1), torch.full((3,), 2.7))
    # A cat photo's camera is built like the AFHQ labels: translation = -2.7 * forward (looks at the origin).
    c = CAT.input_camera(20, 5)[0]
    pose = c[:16].reshape(4, 4)
    torch.testing.assert_close(pose[:3, 3], -2.7 * pose[:3, 2], rtol=0, atol=1e-6)
    yaw, pitch = yaw_pitch_from_label(c[None], lookat=CAT.label_lookat)
    assert np.degrees(float(yaw[0])) == pytest.approx(20, abs=1e-4)
    assert np.degrees(float(pitch[0])) == pytest.approx(5, abs=1e-4)
    assert c[16:].tolist() == pytest.approx([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1])


def test_folder_records_its_domain(cat_pipe, tmp_path):
    folder = cat_pipe.save_pretrained(tmp_path / "cat")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["domain"] == "cat"
    card = (folder / "README.md").read_text()
    assert "cat" in card.split("---")[1] and "(cat domain)" in card
    unnamed = GOAEPipeline(cat_pipe.generator, cat_pipe.encoder, cat_pipe.afa, domain=None)
    assert unnamed.config.domain == "human"  # None is the default domain, written by name
    loaded = GOAEPipeline.from_pretrained(folder)
    assert loaded.domain is CAT and loaded.orbit_pivot == (0.0, 0.0, -0.06)
    # A folder written before domains existed is human; a folder with an unknown domain is refused up front.
    del index["domain"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert GOAEPipeline.from_pretrained(folder).domain is HUMAN
    index["domain"] = "dog"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsFolderError, match=r"domain must be one of \['cat', 'human'\], got 'dog'"):
        check_pipeline_folder(folder)


def test_directions_are_offered_to_their_domain_only(examples_dir, tmp_path):
    ws_edit_dir = examples_dir / "goae" / "ws_edit"
    # The official folder: cat_* (torch zips named .npy) by name, the rest are human.
    assert domain_of_direction_name("cat_black") == "cat" and domain_of_direction_name("age") == "human"
    dirs, notes = load_direction_folder(ws_edit_dir, 14, 512, domain="cat")
    assert sorted(dirs) == ["cat_black", "cat_smalleyes"] and all(d.domain == "cat" for d in dirs.values())
    assert sum("another model (FFHQ; this one is AFHQv2 cats)" in n for n in notes) == 3
    dirs, notes = load_direction_folder(ws_edit_dir, 14, 512)
    assert sorted(dirs) == ["age", "anger", "glass"] and all(d.domain == "human" for d in dirs.values())
    # Metadata beats the name: a cat direction may be called anything once saved by goae.
    t = torch.randn(1, 14, 32, generator=torch.Generator().manual_seed(0))
    save_direction(tmp_path / "whiskers.safetensors", t, domain="cat")
    save_direction(tmp_path / "smile.safetensors", t)
    save_direction(tmp_path / "cat_ears.safetensors", t)  # the name's domain when none is given
    with safe_open(tmp_path / "whiskers.safetensors", "pt") as f:
        assert f.metadata()["domain"] == "cat"
    assert load_direction(tmp_path / "whiskers.safetensors").domain == "cat"
    assert load_direction(tmp_path / "cat_ears.safetensors").domain == "cat"
    assert sorted(load_direction_folder(tmp_path, 14, 32, domain="cat")[0]) == ["cat_ears", "whiskers"]
    assert sorted(load_direction_folder(tmp_path, 14, 32)[0]) == ["smile"]
    with pytest.raises(DomainError, match="unknown domain"):
        save_direction(tmp_path / "x.safetensors", t, domain="dog")


def test_human_aligner_refuses_cat_options():
    with pytest.raises(DomainError, match="box and camera are for cat photos; these weights invert human portraits"):
        HUMAN.align("unused.png", box=(0, 0, 10, 10), yaw=10)
    with pytest.raises(DomainError, match="box and camera are for cat photos"):
        HUMAN.align("unused.png", pitch=0)


def test_cli_cat_options_need_a_cat_pipeline(tmp_path, capsys):
    from goae import cli

    code = cli.main(["invert", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--weights", "random-small",
                     "--box", "1,2,30,40"])
    err = capsys.readouterr().err
    assert code == 2 and "goae: error: box and camera are for cat photos" in err, err
    code = cli.main(["invert", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--weights", "random-small-cat",
                     "--box", "1,2,30,40", "--face-index", "0"])
    assert code == 2 and "box and face index exclude each other" in capsys.readouterr().err
    for bad in (["--box", "1,2,3"], ["--box", "1,2,nan,4"], ["--camera", "10:0,5:0"], ["--camera", "orbit"]):
        with pytest.raises(SystemExit):
            cli.main(["invert", "x.png", "--out", str(tmp_path / "o"), *bad])


# ------------------------------------------------------------------------------------------ cats end to end
def test_cli_inverts_a_cat_photo(repo_examples, tmp_path, capsys):
    from goae import cli

    out = tmp_path / "out"
    chelsea = repo_examples / "chelsea.png"
    code = cli.main(["invert", str(chelsea), str(repo_examples / "coffee.png"), "--out", str(out),
                     "--weights", "random-small-cat", "--views=-20:0", "--camera", "10:-5", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and "coffee.png: error: No cat face found" in captured.err, captured.err
    result = json.loads((out / "chelsea" / "result.json").read_text())
    assert result["domain"] == "cat" and result["camera_estimated"] is False and result["detector"] == "cascade"
    assert result["camera_yaw_deg"] == pytest.approx(10, abs=1e-3)
    assert result["camera_pitch_deg"] == pytest.approx(-5, abs=1e-3)
    torch.testing.assert_close(torch.tensor(result["camera"]), CAT.input_camera(10, -5)[0], rtol=0, atol=1e-6)
    assert {"aligned.png", "reconstruction.png", "view_yaw-20_pitch+0.png"} <= {p.name for p in (out / "chelsea").iterdir()}
    # A user box replaces the detector.
    code = cli.main(["invert", str(chelsea), "--out", str(tmp_path / "boxed"), "--weights", "random-small-cat",
                     "--box", "70,0,440,300"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "boxed" / "chelsea" / "result.json").read_text())
    assert result["face_index"] is None and result["camera_yaw_deg"] == pytest.approx(0, abs=1e-3)
    assert result["detector"] == "user box" and result["cat_face_box"] == [70, 0, 440, 300]
    # Clips follow human landmarks: a cat pipeline refuses them with one line.
    from goae.video import VideoError, invert_video

    with pytest.raises(VideoError, match="human portraits only"):
        invert_video(GOAEPipeline.from_preset("small-cat", 0), tmp_path / "clip.mp4", tmp_path / "clip")


def test_app_routes_each_session_to_its_domain(examples_dir):
    from appserver import build_apps
    from goae.app.service import USER_ERRORS

    apps = build_apps(directions=str(examples_dir / "goae" / "ws_edit"))
    assert sorted(apps.apps) == ["cat", "human"] and apps.default is apps.get("human") is apps.get(None)
    # Random weights: each domain gets only its own directions (projected to the small width).
    assert sorted(apps.get("cat").directions) == ["cat_black", "cat_smalleyes"]
    assert sorted(apps.get("human").directions) == ["age", "anger", "glass"]
    quiet = lambda *a, **k: None  # noqa: E731
    aligned = apps.align(examples_dir / "wild" / "chelsea.png", None, "cat", None, "", 12, 0)
    cat, text = aligned.session, aligned.camera_text
    assert cat.domain == "cat" and "not estimated" in text and "yaw +12.0°" in text and aligned.several_faces is False
    aligned = apps.align(examples_dir / "wild" / "obama.jpg", None, "human", None, "", 0, 0)
    human = aligned.session
    assert human.domain == "human" and "Estimated camera" in aligned.camera_text
    assert apps.of(cat) is apps.get("cat") and apps.of(human) is apps.get("human")
    apps.of(cat).invert(cat, 20, 0, 32, progress=quiet)
    apps.of(human).invert(human, 20, 0, 32, progress=quiet)
    edited = apps.get("cat").edit(cat, 0, 0, 32, 1.0, 0.0, progress=quiet).image
    assert edited.shape == (512, 512, 3)
    # The wrong aligner says what to do instead.
    with pytest.raises(USER_ERRORS, match="human portrait. Use the human domain"):
        apps.align(examples_dir / "wild" / "obama.jpg", None, "cat", None, "", 0, 0)
    with pytest.raises(USER_ERRORS, match="If it is a cat, choose 'Cat face'"):
        apps.align(examples_dir / "wild" / "chelsea.png", None, "human", None, "", 0, 0)
    with pytest.raises(USER_ERRORS, match="box must be left,top,right,bottom"):
        apps.align(examples_dir / "wild" / "chelsea.png", None, "cat", None, "1,2,3", 0, 0)
    with pytest.raises(USER_ERRORS, match="box and camera are for cat photos"):
        apps.api_invert(examples_dir / "wild" / "obama.jpg", box=[1, 2, 30, 40])
    boxed = apps.api_invert(examples_dir / "wild" / "chelsea.png", domain="cat", box=[70, 0, 440, 300],
                            camera=[0, 5])
    assert boxed.camera["domain"] == "cat" and boxed.camera["camera_estimated"] is False
    assert boxed.camera["pitch_deg"] == pytest.approx(5, abs=1e-3)
