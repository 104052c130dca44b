"""Parity of the EG3D in-the-wild crop with the official goldens (shared/parity/align, see its README).

Pure numpy/PIL: the crop arithmetic is checked from the goldens' own 5 points, so no mediapipe is needed.
"""
import json

import numpy as np
import pytest
from PIL import Image

import goae.align.crop as crop
from goae.align import crop_image, crop_params_from_lm5


def _cases(parity_dir, with_png=False):
    cases = json.loads((parity_dir / "align" / "golden_cases.json").read_text())["cases"]
    assert cases, "no golden cases"
    return [c for c in cases if c.get("crop_png") or not with_png]


def _source(parity_dir, case):
    # source_image is "examples/..." relative to the shared folder that holds parity/
    return Image.open(parity_dir.parent / case["source_image"])


def test_crop_arithmetic_matches_goldens(parity_dir):
    for c in _cases(parity_dir):
        p = crop_params_from_lm5(np.array(c["lm5_image_xy"], dtype=np.float32), c["image_size"])
        name = c["name"]
        np.testing.assert_array_equal(p.lm5_flipped_xy, np.array(c["lm5_flipped_xy"], np.float32), err_msg=name)
        np.testing.assert_allclose(p.pos_t, c["pos_t"], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(p.pos_s_raw, c["pos_s_raw"], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(p.s, c["s"], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose([p.w_float, p.h_float, p.left_float, p.up_float],
                                   [c["w_float"], c["h_float"], c["left_float"], c["up_float"]], rtol=1e-6,
                                   atol=1e-6, err_msg=name)
        assert list(p.resized_wh) == c["resized_wh"], name
        assert list(p.crop1024_box_in_resized) == c["crop1024_box_in_resized"], name
        assert list(p.final_box_in_resized) == c["final_box_in_resized"], name
        err = np.abs(np.array(p.final_box_src) - c["final_box_src"]).max()
        assert err < 0.5, f"{name}: final_box_src off by {err:.4f} px"
        # the truncations matter: the no-truncation box is a different answer in most cases
        assert err < 1e-6, f"{name}: final_box_src off by {err:.2e} px (expected float-exact)"


def test_truncation_is_toward_zero(parity_dir):
    # GOAE inputs have left ~ -162.4: int32 truncation gives -162 (floor would give -163).
    c = next(c for c in _cases(parity_dir) if c["left_float"] < 0 and c["left_float"] != int(c["left_float"]))
    p = crop_params_from_lm5(c["lm5_image_xy"], c["image_size"])
    assert p.crop1024_box_in_resized[0] == int(c["left_float"]) == c["crop1024_box_in_resized"][0]


@pytest.mark.parametrize("exact_limit", [crop.EXACT_RESIZE_MAX_PIXELS, 0], ids=["full-resize", "region-resize"])
def test_crop_pixels_match_official_png(parity_dir, monkeypatch, exact_limit):
    monkeypatch.setattr(crop, "EXACT_RESIZE_MAX_PIXELS", exact_limit)
    cases = _cases(parity_dir, with_png=True)
    assert cases, "no golden crops"
    for c in cases:
        p = crop_params_from_lm5(c["lm5_image_xy"], c["image_size"])
        ours = np.asarray(crop_image(_source(parity_dir, c), p), dtype=np.float64)
        ref = np.asarray(Image.open(parity_dir / "align" / c["crop_png"]).convert("RGB"), dtype=np.float64)
        assert ours.shape == ref.shape == (512, 512, 3)
        mad = np.abs(ours - ref).mean()
        print(f"{c['name']} [{'full' if exact_limit else 'region'}]: mean abs diff {mad:.5f} levels, "
              f"max {np.abs(ours - ref).max():.0f}")
        assert mad <= 1.5, f"{c['name']}: mean abs diff {mad:.3f} uint8 levels > 1.5"
        if exact_limit:  # the two-step PIL pipeline is the official one: well under the 0.5 two-step bound
            assert mad <= 0.5, f"{c['name']}: {mad:.3f}"


def test_crop_outside_the_photo_is_black(parity_dir):
    src = Image.open(parity_dir.parent / "examples" / "wild" / "obama.jpg")
    c = next(c for c in _cases(parity_dir) if c["name"] == "syn_obama_topleft_corner")
    p = crop_params_from_lm5(c["lm5_image_xy"], c["image_size"])
    assert p.final_box_src[3] < 0                            # the whole crop lies above the photo
    assert np.asarray(crop_image(src, p)).max() == 0
    # Face moved toward the top-left corner: part of the crop is outside, on the left and top.
    c = next(c for c in _cases(parity_dir) if c["name"] == "wild_obama_face0")
    p = crop_params_from_lm5(np.array(c["lm5_image_xy"]) - [380, 0], c["image_size"])
    l, t, r, b = p.final_box_src
    assert l < 0 < r
    out = np.asarray(crop_image(src, p))
    edge = int(-l / (r - l) * 512)                           # first output column inside the photo
    assert out[:, : edge - 2].max() == 0
    assert out[:, edge + 2:].mean() > 20
