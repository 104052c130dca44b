"""pipe(photo) as a user calls it: photos as they come (aligned here with the pipeline's domain) or prepared
crops with their cameras, batches, one clear error per bad case, stage reports, results kept and restored,
goae's interface first in help(), Hub calls without a network. Small random model, the repository's examples/."""
import http.server
import io
import os
import pydoc
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from goae.align import AlignedCat, AlignedFace, FaceIndexError, NoFaceError, align_face
from goae.camera import yaw_pitch_from_label
from goae.domains import DomainError
from goae.pipeline import NOT_IN_GOAE, STAGES, GOAEOutput, GOAEPipeline

ROOT = Path(__file__).resolve().parents[1]
NO_ALIGN = [(name, desc) for name, desc, _ in STAGES if name != "align"]


@pytest.fixture(scope="module")
def pipe():
    return GOAEPipeline.from_preset("small", 0)


@pytest.fixture(scope="module")
def portrait(repo_examples):
    return repo_examples / "astronaut.png"


@pytest.fixture(scope="module")
def inverted(pipe, portrait, landmarker):
    return pipe(Image.open(portrait))


def test_a_photo_is_aligned_its_camera_estimated_and_inverted(pipe, portrait, inverted):
    face = align_face(portrait)
    out = inverted
    assert isinstance(out.alignment[0], AlignedFace) and out.alignment[0].face_index == face.face_index
    assert np.array_equal(np.asarray(out.aligned[0]), np.asarray(face.image))
    assert out.face_box == [tuple(face.box)]
    assert torch.equal(out.camera.cpu(), torch.as_tensor(face.camera)[None])
    yaw, pitch = yaw_pitch_from_label(torch.as_tensor(face.camera)[None], lookat=pipe.domain.label_lookat)
    assert out.yaw_pitch == [pytest.approx((float(np.degrees(yaw[0])), float(np.degrees(pitch[0]))))]
    assert out.images[0].size == (512, 512) and out.ws.shape[0] == 1
    # the same as inverting the crop with its camera, the way prepared crops and datasets are given
    crop = pipe(face.image, face.camera)
    assert torch.equal(crop.image, out.image) and torch.equal(crop.planes, out.planes)
    assert crop.aligned is None and crop.alignment is None and crop.yaw_pitch == out.yaw_pitch


def test_a_512_photo_is_aligned_not_taken_as_a_crop(portrait, inverted):
    photo = Image.open(portrait).convert("RGB")
    assert photo.size == (512, 512)                       # the NASA portrait: 512x512 but not an aligned crop
    l, t, r, b = inverted.face_box[0]
    assert r - l < 400 and not np.array_equal(np.asarray(inverted.aligned[0]), np.asarray(photo))


def test_photos_as_they_come(pipe, portrait, inverted):
    u8 = np.array(Image.open(portrait).convert("RGB"))
    t = torch.from_numpy(u8).permute(2, 0, 1)
    for photo in (str(portrait), portrait, u8, t, t.float() / 127.5 - 1):
        out = pipe(photo, output_type=None)
        assert out.face_box == inverted.face_box and torch.equal(out.ws, inverted.ws), type(photo).__name__


def test_a_batch_of_photos(pipe, portrait, inverted):
    mirrored = Image.open(portrait).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = pipe([portrait, mirrored], face_index=[None, 0], output_type="np")
    assert out.images.shape == (2, 512, 512, 3) and len(out.aligned) == len(out.face_box) == 2
    torch.testing.assert_close(out.planes[:1], inverted.planes, atol=1e-3, rtol=0)
    assert out.yaw_pitch[0][0] == pytest.approx(-out.yaw_pitch[1][0], abs=3)   # mirrored: the yaw turns over


def test_each_bad_case_is_one_clear_error(pipe, portrait, repo_examples, inverted):
    crop, camera = inverted.aligned[0], inverted.camera
    cases = [
        (lambda: pipe(repo_examples / "coffee.png"), NoFaceError, "No face found"),
        (lambda: pipe([portrait, repo_examples / "chelsea.png"]), NoFaceError, "photo 2 of 2: No face found"),
        (lambda: pipe(portrait, face_index=1), FaceIndexError, r"found 1 face\(s\), choose 0..0"),
        (lambda: pipe([portrait], face_index=[0, 0]), ValueError, "2 entries for 1 photos"),
        (lambda: pipe(portrait, box=(0, 0, 100, 100)), DomainError, "box and camera are for cat photos"),
        (lambda: pipe(crop, aligned=True), ValueError, "give the crops' camera too"),
        (lambda: pipe(portrait, camera, aligned=False), ValueError, "camera= is for aligned crops"),
        (lambda: pipe(crop, camera, face_index=0), ValueError, "already aligned crops"),
        (lambda: pipe(crop, None, aligned=True), ValueError, "give the crops' camera too"),
        (lambda: pipe(crop, [1.0, 2.0, 3.0]), ValueError, r"25 numbers per image .*got shape \(3,\)"),
        (lambda: pipe(crop, torch.zeros(5, 5)), ValueError, r"got shape \(5, 5\)"),
        (lambda: pipe(crop, torch.full((25,), float("nan"))), ValueError, "non-finite"),
        (lambda: pipe(crop, "front"), ValueError, "25 numbers per image"),
        (lambda: pipe(crop.resize((256, 256)), camera), ValueError, "aligned 512x512 crops, got"),
        (lambda: pipe(123), TypeError, "the photo is of type int: pass a PIL image"),
        (lambda: pipe([portrait, {"a": 1}]), TypeError, "photo 2 of 2 is of type dict"),
        (lambda: pipe(torch.rand(3, 64, 64) * 5), ValueError, r"float images are in \[-1, 1\]"),
        (lambda: pipe(torch.zeros(3, 64, 64, dtype=torch.int64)), TypeError, "pass uint8"),
        (lambda: pipe(torch.zeros(64, 64)), ValueError, r"\[3,H,W\] or \[B,3,H,W\]"),
        (lambda: pipe([]), ValueError, "no images given"),
        (lambda: pipe(portrait, output_type="latent"), ValueError, "output_type"),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()


def test_progress_reports_each_stage_and_changes_nothing(pipe, portrait, inverted):
    seen = []
    out = pipe(portrait, progress=lambda fraction, description: seen.append((fraction, description)))
    assert [d for _, d in seen] == [d for _, d, _ in STAGES]
    # the cumulative shares of goae.pipeline.STAGES before each stage starts
    assert [f for f, _ in seen] == pytest.approx([0.0, 0.10, 0.25, 0.45, 0.60, 0.70])
    assert torch.equal(out.image, inverted.image) and torch.equal(out.planes, inverted.planes)
    # crops with cameras: no alignment stage; the fractions still run from 0 and grow
    seen.clear()
    pipe(inverted.aligned[0], inverted.camera, output_type=None, progress=lambda f, d: seen.append((f, d)))
    assert [d for _, d in seen] == [d for _, d in NO_ALIGN]
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0 and fractions == sorted(fractions) and fractions[-1] < 1


def test_progress_bar_in_diffusers_manner(pipe, inverted):
    bar = io.StringIO()
    pipe.set_progress_bar_config(disable=False, file=bar)
    try:
        pipe(inverted.aligned[0], inverted.camera, output_type=None)
    finally:
        pipe.set_progress_bar_config(disable=True)
    text = bar.getvalue()
    assert "Final render" in text and f"{len(NO_ALIGN)}/{len(NO_ALIGN)}" in text


def test_a_result_is_kept_and_restored(pipe, inverted, tmp_path):
    entry = inverted.to_cache()
    assert set(entry) == {"ws", "planes", "camera", "x_rec", "adain_rec"}
    for k, v in entry.items():
        assert v.device.type == "cpu" and v.is_contiguous(), k
        assert v.untyped_storage().nbytes() == v.numel() * v.element_size(), k   # owns its memory, no view
    save_file(entry, tmp_path / "entry.safetensors")
    back = GOAEOutput.from_cache(load_file(tmp_path / "entry.safetensors"), "cpu")
    assert back.image is None and back.mask is None
    cam = pipe.view_camera(25, -5)
    assert torch.equal(pipe.render_view(back, cam, output_type=None).image,
                       pipe.render_view(inverted, cam, output_type=None).image)
    offset = torch.randn(pipe.generator.num_ws, pipe.generator.w_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pipe.edit(back, offset, output_type=None).image, pipe.edit(inverted, offset, output_type=None).image)

    small = inverted.to_cache(edit_features=False)
    assert set(small) == {"ws", "planes", "camera"}
    with pytest.raises(ValueError, match="no edit features"):
        pipe.edit(GOAEOutput.from_cache(small), offset)
    with pytest.raises(ValueError, match="no tensor planes"):
        GOAEOutput.from_cache({"ws": entry["ws"], "camera": entry["camera"]})
    with pytest.raises(ValueError, match="shapes do not fit"):
        GOAEOutput.from_cache({**entry, "camera": entry["camera"][:, :16]})


def test_cat_photos_take_the_cats_box_and_camera(repo_examples):
    cat = GOAEPipeline.from_preset("small-cat", 0)
    out = cat(repo_examples / "chelsea.png", box=(40, -60, 440, 330), yaw=20, pitch=-10, output_type=None)
    assert isinstance(out.alignment[0], AlignedCat) and out.alignment[0].detector == "user box"
    assert out.yaw_pitch[0] == pytest.approx((20, -10), abs=1e-3)      # the AFHQ camera convention, both ways
    with pytest.raises(ValueError, match="yaw"):
        cat(repo_examples / "chelsea.png", box=(40, -60, 440, 330), yaw=400)


def test_help_shows_goae_first_and_diffusers_leftovers_say_so(pipe):
    text = pydoc.render_doc(GOAEPipeline, renderer=pydoc.plaintext)
    own, inherited = text.index("Methods defined here"), text.index("Methods inherited from")
    assert text.index("render_view / preview_view") < own < inherited       # the class docstring lists them
    assert "slice_size" not in text and "offload_device" not in text   # diffusers' pages about them are gone
    for name, why in NOT_IN_GOAE.items():
        assert getattr(GOAEPipeline, name).__doc__ == f"Not in goae: {why}."
        assert name not in dir(pipe)
    with pytest.raises(NotImplementedError, match="enable_attention_slicing is not available"):
        pipe.enable_attention_slicing()
    with pytest.raises(NotImplementedError, match="from_pretrained"):
        GOAEPipeline.download("someone/goae")


class _Answers500(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = _fail

    def log_message(self, *args):
        pass


HUB_SCRIPT = """
import sys
from goae.pipeline import GOAEPipeline
for what in ("push", "load"):
    try:
        if what == "push":
            GOAEPipeline.from_preset("small").push_to_hub("someone/goae-test", token="hf_test")
        else:
            GOAEPipeline.from_pretrained("someone/goae-test")
    except Exception as e:
        print(what, type(e).__name__, str(e).replace("\\n", " "))
"""


@pytest.mark.parametrize("hub", ["closed port", "HTTP 500"])
def test_hub_calls_without_a_hub_say_what_to_do(tmp_path, hub):
    with socket.socket() as closed:                  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        server = None
        if hub == "HTTP 500":
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers500)
            threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1] if server else closed.getsockname()[1]
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_TOKEN", None)
        try:
            proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert set(lines) == {"push", "load"}, proc.stdout
    push, load = lines["push"], lines["load"]
    assert push.startswith("HubUnavailableError push_to_hub('someone/goae-test'): ")
    want = "answered HTTP 500" if hub == "HTTP 500" else "cannot be reached (ConnectError)"
    assert want in push and "pipe.save_pretrained(folder)" in push and "hf upload someone/goae-test" in push
    assert load.startswith("WeightsNotFoundError weights for 'someone/goae-test' are not in the local")
    assert "hf download someone/goae-test" in load
    assert "Traceback" not in proc.stderr
