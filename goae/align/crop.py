"""The official EG3D in-the-wild crop from 5 landmarks, number for number.

EG3D's preprocessing is Deep3DFaceRecon `align_img` (a 5-point POS fit, resize so the face is RESCALE_FACTOR
px per template unit, a 1024 crop) then a 700 centre crop resized to 512. Its int32 truncations are kept:
they move the box by up to a pixel, and the parity goldens (shared/parity/align/README.md) check them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from goae.align.errors import AlignError

# Deep3DFaceRecon `load_lm3d` 5-point template (float32, [eyeA, eyeB, nose, mouthA, mouthB]), BFM axes:
# x toward the subject's left, y up, z out of the face; units ~ decimetres. No centring (origin as in the .mat).
LM3D_STD_5 = np.array([
    [-0.31148657, 0.29036078, 0.13377953],
    [0.30979887, 0.28972036, 0.13179526],
    [0.0032534988, -0.046179324, 0.55244243],
    [-0.25216928, -0.38133916, 0.22405732],
    [0.2484662, -0.38128236, 0.22235769],
], dtype=np.float32)

RESCALE_FACTOR = 300.0   # align_img's rescale_factor in EG3D's in-the-wild script
TARGET_SIZE = 1024       # size of align_img's crop
CENTER_CROP_SIZE = 700   # crop_images_in_the_wild.py centre crop
OUTPUT_SIZE = 512
EXACT_RESIZE_MAX_PIXELS = 40_000_000  # above this the crop resamples only the needed region


@dataclass
class CropParams:
    """Every intermediate of the official crop; names as in golden_cases.json."""
    image_size: tuple[int, int]              # source (W, H)
    lm5_flipped_xy: np.ndarray               # [5,2] float32, y' = H - 1 - y
    pos_t: np.ndarray                        # [2] (tx, ty') image position of the template origin, flipped y
    pos_s_raw: float                         # POS scale (mean norm of the two projection rows)
    s: float                                 # RESCALE_FACTOR / pos_s_raw
    w_float: float
    h_float: float
    resized_wh: tuple[int, int]              # (trunc(W*s), trunc(H*s)) passed to PIL resize
    left_float: float
    up_float: float
    crop1024_box_in_resized: tuple[int, int, int, int]
    final_box_in_resized: tuple[int, int, int, int]
    final_box_src: tuple[float, float, float, float]   # region of the source the 512 crop covers
    pos_rows: np.ndarray                     # [2,3] the affine projection rows (a, b) of the POS fit


def pos_fit(lm5_flipped: np.ndarray, lm3d: np.ndarray = LM3D_STD_5) -> tuple[np.ndarray, float, np.ndarray]:
    """Deep3DFaceRecon POS: least-squares 2x4 affine projection of the template onto the points.

    Returns t (where the template origin lands), the scale (mean of the two row norms), and the rows [2,3].
    """
    n = lm3d.shape[0]
    A = np.zeros((2 * n, 8), dtype=np.float64)
    A[0::2, 0:3] = lm3d
    A[0::2, 3] = 1
    A[1::2, 4:7] = lm3d
    A[1::2, 7] = 1
    b = np.asarray(lm5_flipped, dtype=np.float64).reshape(2 * n)
    k = np.linalg.lstsq(A, b, rcond=None)[0]
    rows = np.stack([k[0:3], k[4:7]])
    s_raw = float((np.linalg.norm(rows[0]) + np.linalg.norm(rows[1])) / 2)
    return np.array([k[3], k[7]]), s_raw, rows


def crop_params_from_lm5(lm5_xy: np.ndarray, image_size: tuple[int, int]) -> CropParams:
    """Official EG3D in-the-wild crop arithmetic from 5 points (image px, y down) and the source size (W, H)."""
    W, H = int(image_size[0]), int(image_size[1])
    lm = np.asarray(lm5_xy, dtype=np.float32).reshape(5, 2).copy()
    lm[:, 1] = np.float32(H - 1) - lm[:, 1]              # official flip, in float32
    t, s_raw, rows = pos_fit(lm)
    s = RESCALE_FACTOR / s_raw
    w_float, h_float = W * s, H * s
    w, h = int(np.int32(w_float)), int(np.int32(h_float))  # astype(int32): truncation toward zero
    left_float = w / 2 - TARGET_SIZE / 2 + (t[0] - W / 2) * s
    up_float = h / 2 - TARGET_SIZE / 2 + (H / 2 - t[1]) * s
    left, up = int(np.int32(left_float)), int(np.int32(up_float))
    o = TARGET_SIZE // 2 - CENTER_CROP_SIZE // 2           # 162
    final = (left + o, up + o, left + o + CENTER_CROP_SIZE, up + o + CENTER_CROP_SIZE)
    sx, sy = W / w, H / h                                  # the actual PIL scale factors, not 1/s
    return CropParams(
        image_size=(W, H), lm5_flipped_xy=lm, pos_t=t, pos_s_raw=s_raw, s=s,
        w_float=w_float, h_float=h_float, resized_wh=(w, h), left_float=left_float, up_float=up_float,
        crop1024_box_in_resized=(left, up, left + TARGET_SIZE, up + TARGET_SIZE),
        final_box_in_resized=final,
        final_box_src=(final[0] * sx, final[1] * sy, final[2] * sx, final[3] * sy),
        pos_rows=rows,
    )


def crop_image(image: Image.Image, params: CropParams) -> Image.Image:
    """The official resize(BICUBIC) -> crop 1024 (black outside) -> centre 700 -> LANCZOS 512, as one RGB image.

    Bit-exact with the official script when the resized photo fits in EXACT_RESIZE_MAX_PIXELS. Beyond that
    (a tiny face in a big photo), only the visible part of the 700 box is resampled with PIL `resize(box=...)`:
    the same filter up to float rounding of the weights (mean difference ~5e-4 uint8 levels).
    """
    image = image.convert("RGB")
    if image.size != tuple(params.image_size):
        raise AlignError(f"image size {image.size} differs from the crop parameters' {tuple(params.image_size)}")
    (w, h), (W, H) = params.resized_wh, params.image_size
    l, u, r, b = params.final_box_in_resized
    if w * h <= EXACT_RESIZE_MAX_PIXELS:
        crop700 = image.resize((w, h), Image.Resampling.BICUBIC).crop((l, u, r, b))  # black outside
    else:
        x0, y0, x1, y1 = max(l, 0), max(u, 0), min(r, w), min(b, h)  # visible part, resized coordinates
        crop700 = Image.new("RGB", (CENTER_CROP_SIZE, CENTER_CROP_SIZE))
        if x1 > x0 and y1 > y0:
            sx, sy = W / w, H / h
            part = image.resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC,
                                box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
            crop700.paste(part, (x0 - l, y0 - u))
    return crop700.resize((OUTPUT_SIZE, OUTPUT_SIZE), Image.Resampling.LANCZOS)
