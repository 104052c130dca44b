"""The Gradio app's callbacks called directly (no browser), on the small random model."""
from __future__ import annotations

import sys
import types
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from appserver import import_app

ROOT = Path(__file__).resolve().parents[1]


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def app_module(examples_dir: Path):
    """Import app.py the way a Space does (module-level `demo` from the environment)."""
    return import_app({"GOAE_WEIGHTS": "random-small", "GOAE_DIRECTIONS": str(examples_dir / "goae" / "ws_edit"),
                       "GOAE_EXAMPLES": str(examples_dir / "wild")})


@pytest.fixture(scope="module")
def goae_app(app_module):
    return app_module.goae_app


@pytest.fixture(scope="module")
def inverted(goae_app, examples_dir):
    """One session with obama.jpg aligned and inverted."""
    session = goae_app.align(examples_dir / "wild" / "obama.jpg", None)[0]
    out = goae_app.invert(session, 0, 0, 64, progress=no_progress)
    return out


def test_module_level_demo(app_module, goae_app):
    assert isinstance(app_module.demo, gr.Blocks)
    assert "random weights" in goae_app.banner and "random-small" in goae_app.banner
    assert {"age", "anger", "glass"} <= set(goae_app.directions)
    assert all(d.tensor.shape == (14, 32) for d in goae_app.directions.values())
    assert any("obama.jpg" in p for p in goae_app.examples)
    assert goae_app.default_resolution == 64 and goae_app.default_frames == 24


def _huge_png(path: Path, w: int = 8000, h: int = 8000) -> Path:
    """A valid PNG header announcing w x h pixels (no pixel data): a decompression-bomb stand-in."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_bad_photos_give_clear_errors(goae_app, examples_dir, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image" * 10)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((examples_dir / "wild" / "obama.jpg").read_bytes()[:5000])
    cases = {
        examples_dir / "wild" / "coffee.png": "No face found",
        garbage: "not an image file",
        truncated: "corrupt or truncated",
        _huge_png(tmp_path / "huge.png"): "MP limit",
        tmp_path / "missing.jpg": "does not exist",
    }
    for photo, message in cases.items():
        with pytest.raises(gr.Error, match=message) as e:
            goae_app.align(photo, None)
        assert "Traceback" not in e.value.message


def test_steps_in_the_wrong_order_give_clear_errors(goae_app):
    with pytest.raises(gr.Error, match="Upload a photo with a face first"):
        goae_app.invert(None, 0, 0, 64, progress=no_progress)
    empty = goae_app.new_session()
    for call in (lambda: goae_app.video(empty, 4, 24, 64, progress=no_progress),
                 lambda: goae_app.mesh(empty, 32, progress=no_progress),
                 lambda: goae_app.edit(empty, 0, 0, 64, *[1.0] * len(goae_app.directions), progress=no_progress)):
        with pytest.raises(gr.Error, match="Run the inversion first"):
            call()
    with pytest.raises(gr.Error, match="Upload a photo first"):
        goae_app.choose_face(0, empty)
    # Moving the view sliders before any inversion is not an error: nothing to show yet.
    assert goae_app.view(empty, 10, 0, 64)[1] is None


def test_session_keeps_working_after_an_error(goae_app, examples_dir):
    session = goae_app.align(examples_dir / "wild" / "obama.jpg", None)[0]
    with pytest.raises(gr.Error):
        goae_app.align(examples_dir / "wild" / "coffee.png", session)
    session, image, text, radio, path = goae_app.align(examples_dir / "wild" / "astronaut.png", session)
    assert image.shape == (512, 512, 3) and "512×512 photo" in text
    assert goae_app.invert(session, 0, 0, 32, progress=no_progress)[1].shape == (512, 512, 3)


def test_align_outputs(goae_app, examples_dir):
    session, image, text, radio, path = goae_app.align(examples_dir / "wild" / "obama.jpg", None)
    assert isinstance(session, sys.modules["app"].Session)
    assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
    assert "Estimated camera" in text and "Face** 1 of 1" in text
    assert radio["visible"] is False and radio["value"] == 0
    assert Path(path).is_file() and Path(path).parent == session.folder


def test_face_choice(goae_app, examples_dir):
    session, _, text, radio, _ = goae_app.align(examples_dir / "wild" / "t1.jpg", None)
    n = len(radio["choices"])
    assert n > 1 and radio["visible"] is True
    largest = max(range(n), key=lambda i: session.face.faces[i].area)
    assert radio["value"] == largest and "(largest)" in radio["choices"][largest][0]
    other = (largest + 1) % n
    session, image, text2, radio2, _ = goae_app.choose_face(other, session)
    assert session.face.face_index == other and radio2["value"] == other
    assert f"Face** {other + 1} of {n}" in text2 and text2 != text


def test_invert_and_views_from_cache(goae_app, inverted, monkeypatch):
    session, recon, recon_path, latent, status, view, view_path, depth, preview, depth16 = inverted
    assert recon.dtype == np.uint8 and recon.shape == (512, 512, 3)
    assert Path(recon_path).is_file() and Path(latent).is_file() and "Inverted in" in status
    # The library's bundle writer made the session's inversion folder (as `goae invert` does).
    assert (Path(latent).parent / "result.json").is_file() and Path(latent).parent.parent == session.folder
    assert view.shape == (512, 512, 3) and Path(depth16).is_file() and Path(preview).is_file()

    # Slider moves re-render the cached tri-planes: the encoder must not run again.
    from goae.models.goae import GOAE

    def no_encoding(*args, **kwargs):
        raise AssertionError("a view re-ran the encoder")
    monkeypatch.setattr(GOAE, "encode", no_encoding)
    turned = goae_app.view(session, 35, 10, 64)[1]
    assert turned.shape == (512, 512, 3) and np.abs(turned.astype(int) - view.astype(int)).mean() > 1
    again = goae_app.view(session, 35, 10, 64)[1]
    assert np.array_equal(turned, again)                # deterministic renderer
    assert goae_app.view(session, 35, 10, 32)[1].shape == (512, 512, 3)   # a lower resolution
    # The slider preview: neural rendering without super-resolution, with its depth.
    _, preview, depth_preview = goae_app.preview(session, 36, 10)
    assert preview.shape == depth_preview.shape == (512, 512, 3) and preview.dtype == np.uint8
    assert np.abs(preview.astype(int) - turned.astype(int)).mean() < 60   # roughly the same picture
    # A late preview of the position whose full render is shown (35, 10 above) is not shown over it.
    assert goae_app.preview(session, 35, 10)[1:] == (None, None)


def test_video_mesh_edit(goae_app, inverted):
    import av

    session = inverted[0]
    _, video, dl = goae_app.video(session, 4, 12, 32, progress=no_progress)
    assert video == dl and video.endswith(".mp4")
    with av.open(video) as f:
        assert sum(1 for _ in f.decode(video=0)) == 4

    _, glb, glb_dl, ply, msg = goae_app.mesh(session, 32, progress=no_progress)
    assert Path(glb).read_bytes()[:4] == b"glTF" and Path(ply).read_bytes()[:3] == b"ply"
    assert "vertices" in msg

    names = list(goae_app.directions)
    strengths = [2.0 if n == "age" else 0.0 for n in names]
    _, edited, path, view, *_ = goae_app.edit(session, 0, 0, 64, *strengths, progress=no_progress)
    recon = inverted[1]
    assert edited.shape == (512, 512, 3) and np.abs(edited.astype(int) - recon.astype(int)).mean() > 0.5
    assert session.edits == {"age": 2.0} and session.current != session.inversion
    assert "age+2" in Path(path).name
    # All strengths zero: back to the inversion itself.
    _, back, *_ = goae_app.edit(session, 0, 0, 64, *[0.0] * len(names), progress=no_progress)
    assert session.current == session.inversion and session.edits == {}
    assert np.array_equal(back, recon)


def test_two_sessions_do_not_share_state(goae_app, examples_dir):
    a = goae_app.align(examples_dir / "wild" / "obama.jpg", None)
    b = goae_app.align(examples_dir / "wild" / "astronaut.png", None)
    assert a[0] is not b[0] and a[0].folder != b[0].folder and a[2] != b[2]
    ra = goae_app.invert(a[0], 0, 0, 32, progress=no_progress)
    rb = goae_app.invert(b[0], 0, 0, 32, progress=no_progress)
    assert a[0].inversion != b[0].inversion
    assert not torch.equal(goae_app.cache.get(a[0].inversion)["ws"], goae_app.cache.get(b[0].inversion)["ws"])
    assert not np.array_equal(ra[1], rb[1])


def test_directions_that_do_not_fit_real_weights_are_skipped(examples_dir):
    from goae.edit import directions_for  # what the app (and the CLI) load direction folders with

    fake = types.SimpleNamespace(generator=types.SimpleNamespace(num_ws=14, w_dim=32), weights_label="someone/goae")
    dirs, notes = directions_for(fake, str(examples_dir / "goae" / "ws_edit"))
    assert dirs == {} and notes and all("skipped" in n for n in notes)
    dirs, notes = directions_for(fake, "/nonexistent/folder")
    assert dirs == {} and "not found" in notes[0]
    # Random weights: other widths are projected; the cat directions (another model) are left out either way.
    fake.weights_label = "random-small (seed 0)"
    dirs, notes = directions_for(fake, str(examples_dir / "goae" / "ws_edit"))
    assert sorted(dirs) == ["age", "anger", "glass"] and sum("cat_" in n and "skipped" in n for n in notes) == 2


def test_non_finite_inputs_are_refused(goae_app, inverted):
    """#15.7: NaN reaching a camera rendered a black image; every numeric input is checked."""
    session = inverted[0]
    nan, inf = float("nan"), float("inf")
    calls = {
        "yaw": lambda: goae_app.view(session, nan, 0, 64),
        "pitch": lambda: goae_app.view(session, 0, inf, 64),
        "neural rendering resolution": lambda: goae_app.view(session, 0, 0, nan),
        "video frames": lambda: goae_app.video(session, nan, 12, 32, progress=no_progress),
        "fps": lambda: goae_app.video(session, 4, inf, 32, progress=no_progress),
        "mesh grid resolution": lambda: goae_app.mesh(session, nan, progress=no_progress),
        "strength": lambda: goae_app.edit(session, 0, 0, 64, *[nan] * len(goae_app.directions), progress=no_progress),
    }
    for what, call in calls.items():
        with pytest.raises(gr.Error, match=what) as e:
            call()
        assert "Internal error" not in e.value.message
    assert session.current == session.inversion  # nothing changed


def test_fit_direction():
    from goae.edit import fit_direction

    d = torch.randn(14, 512, generator=torch.Generator().manual_seed(3))
    f = fit_direction(d, 32)
    assert f.shape == (14, 32) and torch.equal(f, fit_direction(d, 32))
    assert 0.5 < float(f.norm() / d.norm()) < 1.5          # length roughly kept
    assert torch.equal(fit_direction(f, 32), f)


def test_unloadable_weights_fall_back_to_random_with_banner(app_module, monkeypatch):
    monkeypatch.setattr(app_module, "FALLBACK_WEIGHTS", "random-small")
    pipe, banner = app_module.load_model("/nonexistent/weights", "cpu")
    assert "random weights" in banner and "could not be loaded" in banner
    pipe, banner = app_module.load_model(None, "cpu")
    assert "no weights configured" in banner


def test_cli_arguments(app_module):
    args = app_module.parse_args(["--weights", "random-small", "--host", "0.0.0.0", "--port", "7000", "--share"])
    assert (args.weights, args.host, args.port, args.share) == ("random-small", "0.0.0.0", 7000, True)
