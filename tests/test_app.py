"""The app's steps (goae.app.service) called directly (no browser, no Gradio in between), on the small random
model; and the Space's entry, app.py, imported from the environment."""
from __future__ import annotations

import types
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from appserver import build_apps, import_app
from goae.app.components import user_errors
from goae.app.start import load_model, parse_args
from goae.app.service import USER_ERRORS, Aligned, Inverted, Session

ROOT = Path(__file__).resolve().parents[1]


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def goae_app(examples_dir: Path):
    """The human pipeline's steps, built as the app builds them."""
    return build_apps(directions=str(examples_dir / "goae" / "ws_edit"), examples=str(examples_dir / "wild")).default


@pytest.fixture(scope="module")
def inverted(goae_app, examples_dir) -> Inverted:
    """One session with obama.jpg aligned and inverted."""
    session = goae_app.align(examples_dir / "wild" / "obama.jpg", None).session
    return goae_app.invert(session, 0, 0, 64, progress=no_progress)


def test_module_level_demo(examples_dir):
    """app.py imported the way a Space does: the page and the app from the environment."""
    app_module = import_app({"GOAE_WEIGHTS": "random-small", "GOAE_DIRECTIONS": str(examples_dir / "goae" / "ws_edit"),
                             "GOAE_EXAMPLES": str(examples_dir / "wild")})
    goae_app = app_module.goae_app
    assert isinstance(app_module.demo, gr.Blocks) and goae_app is app_module.goae_apps.default
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
        with pytest.raises(gr.Error, match=message) as e:   # what the visitor sees
            user_errors(goae_app.align)(photo, None)
        assert "Traceback" not in e.value.message


def test_steps_in_the_wrong_order_give_clear_errors(goae_app):
    with pytest.raises(USER_ERRORS, match="Upload a photo with a face first"):
        goae_app.invert(None, 0, 0, 64, progress=no_progress)
    empty = goae_app.new_session()
    for call in (lambda: goae_app.video(empty, 4, 24, 64, progress=no_progress),
                 lambda: goae_app.mesh(empty, 32, progress=no_progress),
                 lambda: goae_app.edit(empty, 0, 0, 64, *[1.0] * len(goae_app.directions), progress=no_progress)):
        with pytest.raises(USER_ERRORS, match="Run the inversion first"):
            call()
    with pytest.raises(USER_ERRORS, match="Upload a photo first"):
        goae_app.choose_face(0, empty)
    # Moving the view sliders before any inversion is not an error: nothing to show yet.
    assert goae_app.view(empty, 10, 0, 64).view is None


def test_session_keeps_working_after_an_error(goae_app, examples_dir):
    session = goae_app.align(examples_dir / "wild" / "obama.jpg", None).session
    with pytest.raises(USER_ERRORS):
        goae_app.align(examples_dir / "wild" / "coffee.png", session)
    out = goae_app.align(examples_dir / "wild" / "astronaut.png", session)
    assert out.image.shape == (512, 512, 3) and "512×512 photo" in out.camera_text
    assert goae_app.invert(out.session, 0, 0, 32, progress=no_progress).reconstruction.shape == (512, 512, 3)


def test_align_outputs(goae_app, examples_dir):
    out = goae_app.align(examples_dir / "wild" / "obama.jpg", None)
    assert isinstance(out, Aligned) and isinstance(out.session, Session)
    assert out.image.dtype == np.uint8 and out.image.shape == (512, 512, 3)
    assert "Estimated camera" in out.camera_text and "Face** 1 of 1" in out.camera_text
    assert out.several_faces is False and out.face_index == 0
    assert Path(out.path).is_file() and Path(out.path).parent == out.session.folder


def test_face_choice(goae_app, examples_dir):
    first = goae_app.align(examples_dir / "wild" / "t1.jpg", None)
    n = len(first.choices)
    assert n > 1 and first.several_faces is True
    largest = max(range(n), key=lambda i: first.session.face.faces[i].area)
    assert first.face_index == largest and "(largest)" in first.choices[largest][0]
    other = (largest + 1) % n
    second = goae_app.choose_face(other, first.session)
    assert second.session.face.face_index == other and second.face_index == other
    assert f"Face** {other + 1} of {n}" in second.camera_text and second.camera_text != first.camera_text


def test_invert_and_views_from_cache(goae_app, inverted, monkeypatch):
    session, recon, latent, view = inverted.session, inverted.reconstruction, inverted.latent_path, inverted.view.image
    assert recon.dtype == np.uint8 and recon.shape == (512, 512, 3)
    assert Path(inverted.reconstruction_path).is_file() and Path(latent).is_file() and "Inverted in" in inverted.status
    # The library's bundle writer made the session's inversion folder (as `goae invert` does).
    assert (Path(latent).parent / "result.json").is_file() and Path(latent).parent.parent == session.folder
    assert view.shape == (512, 512, 3) and Path(inverted.view.depth16).is_file()
    assert Path(inverted.view.depth_preview).is_file() and Path(inverted.view.path).is_file()

    # Slider moves re-render the cached tri-planes: the encoder must not run again.
    from goae.models.goae import GOAE

    def no_encoding(*args, **kwargs):
        raise AssertionError("a view re-ran the encoder")
    monkeypatch.setattr(GOAE, "encode", no_encoding)
    turned = goae_app.view(session, 35, 10, 64).view.image
    assert turned.shape == (512, 512, 3) and np.abs(turned.astype(int) - view.astype(int)).mean() > 1
    again = goae_app.view(session, 35, 10, 64).view.image
    assert np.array_equal(turned, again)                # deterministic renderer
    assert goae_app.view(session, 35, 10, 32).view.image.shape == (512, 512, 3)   # a lower resolution
    # The slider preview: neural rendering without super-resolution, with its depth.
    quick = goae_app.preview(session, 36, 10)
    preview = quick.image
    assert preview.shape == quick.depth.shape == (512, 512, 3) and preview.dtype == np.uint8
    assert np.abs(preview.astype(int) - turned.astype(int)).mean() < 60   # roughly the same picture
    # A late preview of the position whose full render is shown (35, 10 above) is not shown over it.
    late = goae_app.preview(session, 35, 10)
    assert late.image is None and late.depth is None


def test_video_mesh_edit(goae_app, inverted):
    import av

    session = inverted.session
    video = goae_app.video(session, 4, 12, 32, progress=no_progress).path
    assert video.endswith(".mp4") and Path(video).parent == session.folder
    with av.open(video) as f:
        assert sum(1 for _ in f.decode(video=0)) == 4

    mesh = goae_app.mesh(session, 32, progress=no_progress)
    assert Path(mesh.glb).read_bytes()[:4] == b"glTF" and Path(mesh.ply).read_bytes()[:3] == b"ply"
    assert "vertices" in mesh.text

    names = list(goae_app.directions)
    strengths = [2.0 if n == "age" else 0.0 for n in names]
    out = goae_app.edit(session, 0, 0, 64, *strengths, progress=no_progress)
    edited, path = out.image, out.path
    recon = inverted.reconstruction
    assert edited.shape == (512, 512, 3) and np.abs(edited.astype(int) - recon.astype(int)).mean() > 0.5
    assert session.edits == {"age": 2.0} and session.current != session.inversion
    assert "age+2" in Path(path).name
    # All strengths zero: back to the inversion itself.
    back = goae_app.edit(session, 0, 0, 64, *[0.0] * len(names), progress=no_progress).image
    assert session.current == session.inversion and session.edits == {}
    assert np.array_equal(back, recon)


def test_two_sessions_do_not_share_state(goae_app, examples_dir):
    a = goae_app.align(examples_dir / "wild" / "obama.jpg", None)
    b = goae_app.align(examples_dir / "wild" / "astronaut.png", None)
    assert a.session is not b.session and a.session.folder != b.session.folder and a.camera_text != b.camera_text
    ra = goae_app.invert(a.session, 0, 0, 32, progress=no_progress)
    rb = goae_app.invert(b.session, 0, 0, 32, progress=no_progress)
    assert a.session.inversion != b.session.inversion
    assert not torch.equal(goae_app.cache.get(a.session.inversion)["ws"], goae_app.cache.get(b.session.inversion)["ws"])
    assert not np.array_equal(ra.reconstruction, rb.reconstruction)


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
    session = inverted.session
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
        with pytest.raises(USER_ERRORS, match=what):  # a user error with its message, not an internal one
            call()
    assert session.current == session.inversion  # nothing changed


def test_fit_direction():
    from goae.edit import fit_direction

    d = torch.randn(14, 512, generator=torch.Generator().manual_seed(3))
    f = fit_direction(d, 32)
    assert f.shape == (14, 32) and torch.equal(f, fit_direction(d, 32))
    assert 0.5 < float(f.norm() / d.norm()) < 1.5          # length roughly kept
    assert torch.equal(fit_direction(f, 32), f)


def test_unloadable_weights_fall_back_to_random_with_banner(monkeypatch):
    import goae.app.start

    monkeypatch.setattr(goae.app.start, "FALLBACK_WEIGHTS", "random-small")
    pipe, banner = load_model("/nonexistent/weights", "cpu")
    assert "random weights" in banner and "could not be loaded" in banner
    assert pipe.weights_label.startswith("random-small")
    monkeypatch.setattr(goae.app.start, "default_weights_folder", lambda: None)  # no `goae download` folder here
    pipe, banner = load_model(None, "cpu")
    assert "no weights configured" in banner


def test_cli_arguments():
    args = parse_args(["--weights", "random-small", "--host", "0.0.0.0", "--port", "7000", "--share"])
    assert (args.weights, args.host, args.port, args.share) == ("random-small", "0.0.0.0", 7000, True)
