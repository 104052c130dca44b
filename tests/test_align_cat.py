"""align_cat: OpenCV cat-face cascades or a user box -> AFHQ-style 512 crop + the AFHQ camera, real photos.

The cat is skimage's chelsea.png (CC0, in the repository's examples/). Scenes with several cats are made here, in
memory, by pasting it into coffee.png. Box bounds are generous (tens of px): the cascades run on the same bytes
on every CPU (PIL preprocessing), but a different OpenCV build may move a box by a few px.
"""
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import goae.align.cat as cat
from goae.align import (AlignedCat, AlignError, FaceIndexError, InvalidImageError, NoCatError, NoFaceError,
                        align_cat, align_face, cat_crop_box, crop_cat, detect_cats)
from goae.align.detect import box_iou
from goae.domains import CAT

ROOT = Path(__file__).resolve().parents[1]
# chelsea.png's face as the cascades box it, checked by eye: from the top of the head between the ears to below
# the chin, eyes at y ~ 130, nose tip at (260, 235); measured box (76, -23, 439, 340), centre (258, 159).
CHELSEA_CENTRE, CHELSEA_SIDE = (258.0, 159.0), 363.0
CHELSEA_HEAD = (40, -60, 440, 330)          # a user's box around the head, ears to chin (by eye)


@pytest.fixture(scope="module")
def wild(repo_examples):
    return repo_examples  # chelsea.png, coffee.png, astronaut.png; obama.jpg is only in ../shared


@pytest.fixture(scope="module")
def chelsea(wild):
    return Image.open(wild / "chelsea.png").convert("RGB")


@pytest.fixture(scope="module")
def aligned_chelsea(wild):
    return align_cat(wild / "chelsea.png")


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _iou(a, b):
    return box_iou(a, b)


def _scene(chelsea, coffee, size, cats):
    """coffee.png resized to `size`, with chelsea pasted at (scale, x, y, mirrored) for each cat."""
    scene = coffee.resize(size, Image.LANCZOS)
    for s, x, y, flip in cats:
        c = chelsea.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else chelsea
        scene.paste(c.resize((round(c.width * s), round(c.height * s)), Image.LANCZOS), (x, y))
    return scene


# --------------------------------------------------------------------------------------------- chelsea
def test_chelsea_cat_is_found_and_cropped(aligned_chelsea):
    a = aligned_chelsea
    assert isinstance(a, AlignedCat) and a.detector == "cascade"
    assert len(a.faces) == 1 and a.faces_found == 1 and a.face_index == 0 and not a.faces_capped
    assert a.face_box == a.faces[0] and a.source_size == (451, 300)
    cx, cy = _centre(a.face_box)
    side = a.face_box[2] - a.face_box[0]
    assert abs(cx - CHELSEA_CENTRE[0]) < 30 and abs(cy - CHELSEA_CENTRE[1]) < 30, a.face_box
    assert 0.8 * CHELSEA_SIDE < side < 1.2 * CHELSEA_SIDE, a.face_box
    assert a.image.size == (512, 512) and a.image.mode == "RGB"
    # the crop is the square DETECTED_SCALE x the face box, raised by DETECTED_SHIFT, reaching past the photo
    l, t, r, b = a.box
    assert r - l == pytest.approx(b - t) == pytest.approx(cat.DETECTED_SCALE * side)
    assert _centre(a.box) == pytest.approx((cx, cy - cat.DETECTED_SHIFT * side))
    assert t < 0 and b > 300


def test_chelsea_camera_is_the_afhq_frontal_one(aligned_chelsea):
    a = aligned_chelsea
    assert a.camera.dtype == np.float32 and a.camera.shape == (25,)
    np.testing.assert_array_equal(a.camera, CAT.input_camera(0, 0).reshape(25).numpy().astype(np.float32))
    assert a.camera_estimated is False and (a.yaw, a.pitch) == (0.0, 0.0)
    assert np.linalg.norm(a.camera[[3, 7, 11]]) == pytest.approx(2.7, abs=1e-5)     # AFHQ labels: radius 2.7
    assert a.camera[16] == pytest.approx(4.2647, abs=1e-4)


def test_crop_is_stable_when_aligned_again(aligned_chelsea):
    # The crop's own cat is found where the AFHQ layout puts it: cropping again changes (almost) nothing.
    again = align_cat(aligned_chelsea.image, aligned=False)
    assert again.detector == "cascade" and len(again.faces) == 1
    assert _iou(again.box, (0, 0, 512, 512)) > 0.85, again.box


def test_detect_cats_matches_align_cat(wild, aligned_chelsea):
    assert detect_cats(wild / "chelsea.png") == aligned_chelsea.faces


def test_human_aligner_finds_no_face_on_chelsea(landmarker, wild):
    with pytest.raises(NoFaceError, match="No face found"):
        align_face(wild / "chelsea.png")


# ------------------------------------------------------------------------------------------ yaw / pitch
def test_yaw_and_pitch_set_the_camera(wild):
    a = align_cat(wild / "chelsea.png", box=CHELSEA_HEAD, yaw=20, pitch=-10)
    np.testing.assert_array_equal(a.camera, CAT.input_camera(20, -10).reshape(25).numpy().astype(np.float32))
    assert (a.yaw, a.pitch) == (20.0, -10.0) and a.camera_estimated is False
    frontal = align_cat(wild / "chelsea.png", box=CHELSEA_HEAD)
    assert not np.allclose(a.camera, frontal.camera)
    assert a.image.tobytes() == frontal.image.tobytes()          # the camera does not move the crop


@pytest.mark.parametrize("kw", [dict(yaw=float("nan")), dict(pitch=float("inf")), dict(yaw=91), dict(yaw=-90.5),
                                dict(pitch=61), dict(yaw="10"), dict(pitch=True), dict(yaw=None)])
def test_bad_angles(chelsea, kw):
    name = next(iter(kw))
    with pytest.raises(AlignError, match=f"{name} must be a finite number of degrees"):
        align_cat(chelsea, box=CHELSEA_HEAD, **kw)


# ---------------------------------------------------------------------------------------------- user box
def test_user_box(chelsea):
    a = align_cat(chelsea, box=np.array(CHELSEA_HEAD))
    assert a.detector == "user box" and a.face_box == tuple(float(v) for v in CHELSEA_HEAD)
    assert a.faces == [] and a.face_index is None and a.faces_found == 0
    side = cat.BOX_SCALE * 400                                    # the box's longer side, centred
    assert a.box == pytest.approx((240 - side / 2, 135 - side / 2, 240 + side / 2, 135 + side / 2))
    assert a.image.size == (512, 512) and a.image.mode == "RGB"
    assert a.box == cat_crop_box(CHELSEA_HEAD, given=True)


def test_user_box_needs_no_opencv(wild):
    """With cv2 unimportable, a box still aligns, and detection says which package to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["cv2"] = None                       # import cv2 now raises ImportError
        from goae.align import align_cat
        photo = sys.argv[1]
        a = align_cat(photo, box=(40, -60, 440, 330))
        print("box:", a.image.size, a.detector)
        try:
            align_cat(photo)
        except ModuleNotFoundError as e:
            print("detect:", e)
    """)
    res = subprocess.run([sys.executable, "-c", code, str(wild / "chelsea.png")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "box: (512, 512) user box" in res.stdout
    assert "detect:" in res.stdout and "pip install opencv-contrib-python" in res.stdout and "box" in res.stdout


@pytest.mark.parametrize("box,match", [
    ((1, 2, 3), "4 numbers"),
    ("40,-60,440,330", "4 numbers"),
    ((40, -60, 440, None), "4 numbers"),
    ((True, 0, 100, 100), "4 numbers"),
    ((40, float("nan"), 440, 330), "finite"),
    ((40, 0, float("inf"), 330), "finite"),
    ((440, 0, 40, 330), "at least 16x16"),              # right < left
    ((100, 100, 110, 200), "at least 16x16"),           # 10 px wide
    ((100, 100, 200, 100), "at least 16x16"),           # no height
    ((500, 0, 600, 100), "outside"),                    # right of the 451 px photo
    ((-200, -200, -100, -100), "outside"),
    ((-5000, -5000, 5000, 5000), "more than 4 times"),
])
def test_bad_user_boxes(chelsea, box, match):
    with pytest.raises(AlignError, match=match):
        align_cat(chelsea, box=box)


def test_box_excludes_aligned_and_face_index(chelsea):
    with pytest.raises(AlignError, match="one or the other"):
        align_cat(chelsea.resize((512, 512)), box=CHELSEA_HEAD, aligned=True)
    with pytest.raises(AlignError, match="one or the other"):
        align_cat(chelsea, box=CHELSEA_HEAD, face_index=0)


# ---------------------------------------------------------------------------------------- the crop itself
def test_crop_inside_the_photo_is_plain_lanczos(chelsea):
    box = (100.25, 20.5, 300.75, 221.0)
    np.testing.assert_array_equal(np.asarray(crop_cat(chelsea, box)),
                                  np.asarray(chelsea.resize((512, 512), Image.LANCZOS, box=box)))


def test_padding_repeats_edges_and_blurs_them():
    # A photo of two flat colours: the padding outside it holds only those colours (no black, no mirror image).
    a = np.zeros((100, 200, 3), np.uint8)
    a[:, :100] = (200, 40, 40)
    a[:, 100:] = (40, 40, 200)
    out = np.asarray(crop_cat(Image.fromarray(a), (-150, -200, 350, 300))).astype(int)
    assert out.shape == (512, 512, 3)
    left, right = out[:, :100], out[:, -100:]                   # columns beyond the photo's sides
    assert np.abs(left - (200, 40, 40)).max() <= 1 and np.abs(right - (40, 40, 200)).max() <= 1
    top_middle = out[:100, 256]                                 # above the colour boundary: blurred in between
    assert 40 < top_middle[:, 0].mean() < 200


def test_crop_box_rules():
    assert cat_crop_box((0, 0, 100, 100)) == pytest.approx(
        (50 - 70, 50 - 5 - 70, 50 + 70, 50 - 5 + 70))           # 1.4 x the box, raised by 0.05 x its side
    assert cat_crop_box((0, 0, 100, 60), given=True) == pytest.approx((-12.5, -32.5, 112.5, 92.5))
    with pytest.raises(AlignError, match="outside"):
        crop_cat(Image.new("RGB", (50, 50)), (60, 0, 100, 40))


# ------------------------------------------------------------------------------------- already aligned
def test_aligned_true_takes_the_photo_as_is(aligned_chelsea):
    crop = aligned_chelsea.image
    a = align_cat(crop, aligned=True, yaw=10)
    assert a.detector == "as given" and a.image.tobytes() == crop.tobytes()
    assert a.box == (0.0, 0.0, 512.0, 512.0) and a.face_box is None and a.faces == []
    np.testing.assert_array_equal(a.camera, CAT.input_camera(10, 0).reshape(25).numpy().astype(np.float32))


def test_aligned_true_needs_512(chelsea):
    with pytest.raises(AlignError, match="aligned=True takes an AFHQ crop of 512x512 as it is; this photo is 451x300"):
        align_cat(chelsea, aligned=True)


def test_aligned_auto_keeps_an_aligned_crop(aligned_chelsea):
    crop = aligned_chelsea.image
    a = align_cat(crop)                                          # aligned=None: the detection agrees
    assert a.detector == "as given" and a.image.tobytes() == crop.tobytes()
    assert a.box == (0.0, 0.0, 512.0, 512.0) and len(a.faces) == 1 and a.face_box == a.faces[0]


def test_aligned_auto_crops_a_512_photo_whose_cat_is_elsewhere(chelsea, wild):
    coffee = Image.open(wild / "coffee.png").convert("RGB")
    photo = _scene(chelsea, coffee, (512, 512), [(0.6, 0, 0, False)])     # a small cat in the top-left corner
    a = align_cat(photo)
    assert a.detector == "cascade" and _iou(a.box, (0, 0, 512, 512)) < 0.5
    assert abs(_centre(a.face_box)[0] - 0.6 * CHELSEA_CENTRE[0]) < 30
    # with nothing found and no human face, a 512x512 photo is taken as is
    b = align_cat(coffee.resize((512, 512)))
    assert b.detector == "as given" and b.face_box is None and b.faces == []


# ------------------------------------------------------------------------------------------- no cat
def test_no_cat_in_coffee(wild):
    with pytest.raises(NoCatError) as e:
        align_cat(wild / "coffee.png")
    msg = str(e.value)
    assert "No cat face found in the photo (600x400)" in msg
    assert "--box l,t,r,b" in msg and "Cat options box in the app" in msg and "closer, frontal photo" in msg
    assert "human" not in msg
    assert isinstance(e.value, NoFaceError) and isinstance(e.value, AlignError)


@pytest.mark.parametrize("name,aligned", [("obama.jpg", None), ("astronaut.png", None), ("astronaut.png", False)])
def test_human_portrait_gets_the_human_hint(landmarker, wild, name, aligned, request):
    # obama.jpg: the cat cascades fire on his face (vetoed); astronaut.png is 512x512 (not taken as an AFHQ crop)
    folder = request.getfixturevalue("examples_dir") / "wild" if name == "obama.jpg" else wild
    with pytest.raises(NoCatError, match="looks like a human portrait. Use the human domain"):
        align_cat(folder / name, aligned=aligned)


def test_cascades_fire_on_human_faces_without_the_veto(landmarker, examples_dir):
    # why the veto exists: the raw cascades find a "cat" on obama.jpg's face, mediapipe's face box holds it
    obama = examples_dir / "wild" / "obama.jpg"
    raw = cat.merge_boxes(cat.cascade_boxes(Image.open(obama).convert("RGB")))
    assert len(raw) == 1 and detect_cats(obama) == []


# --------------------------------------------------------------------------------------------- several cats
@pytest.fixture(scope="module")
def two_cats(chelsea, wild):
    coffee = Image.open(wild / "coffee.png").convert("RGB")
    # a smaller cat bottom-left, a larger mirrored one top-right
    return _scene(chelsea, coffee, (1200, 800), [(0.6, 60, 400, False), (0.8, 700, 60, True)])


def test_several_cats_left_to_right_largest_first(two_cats):
    a = align_cat(two_cats)
    assert len(a.faces) == 2 and a.faces_found == 2
    assert _centre(a.faces[0])[0] < _centre(a.faces[1])[0]
    # where the pasted faces are: chelsea's face box scaled and moved (the mirrored one mirrored)
    assert abs(_centre(a.faces[0])[0] - (60 + 0.6 * CHELSEA_CENTRE[0])) < 30
    assert abs(_centre(a.faces[1])[0] - (700 + 0.8 * (451 - CHELSEA_CENTRE[0]))) < 30
    assert a.face_index == 1 and a.face_box == a.faces[1]          # the larger
    b = align_cat(two_cats, face_index=0)
    assert b.face_index == 0 and b.face_box == a.faces[0] and b.box != a.box
    capped = align_cat(two_cats, max_faces=1)
    assert capped.faces == [a.faces[1]] and capped.faces_found == 2 and capped.faces_capped


@pytest.mark.parametrize("index", [2, -1, 1.0, True])
def test_bad_face_index(two_cats, index):
    with pytest.raises(FaceIndexError, match=r"found 2 cat face\(s\), choose 0..1"):
        align_cat(two_cats, face_index=index)


# -------------------------------------------------------------------------------------------- bad inputs
def _error(fn, photo):
    try:
        fn(photo)
    except AlignError as e:
        return type(e), str(e)
    raise AssertionError(f"{fn.__name__} accepted {photo!r:.60}")


def test_bad_inputs_give_the_same_errors_as_align_face(tmp_path, wild):
    data = (wild / "astronaut.png").read_bytes()
    text = tmp_path / "notes.txt"
    text.write_text("this is not a photo\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for photo in (data[: len(data) // 3], b"\x00\x01garbage" * 100, text, empty, tmp_path / "missing.jpg", 12345,
                  np.zeros((4, 4, 2), np.uint8), b"%!PS-Adobe-3.0 EPSF-3.0\n"):
        kind, message = _error(align_cat, photo)
        assert issubclass(kind, InvalidImageError), (photo, message)
        assert (kind, message) == _error(align_face, photo)


def test_bad_max_faces(chelsea):
    with pytest.raises(AlignError, match="max_faces must be an integer"):
        align_cat(chelsea, max_faces=0)
    with pytest.raises(AlignError, match="aligned must be True, False or None"):
        align_cat(chelsea, aligned="yes")
