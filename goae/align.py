"""photo -> AlignedFace: mediapipe landmarks, the official EG3D in-the-wild crop, an EG3D camera estimate.

The crop reproduces EG3D's preprocessing (Deep3DFaceRecon `align_img` with a 5-point POS fit, then a
700 centre crop resized to 512) number for number, including its int32 truncations. See
shared/parity/align/README.md for the arithmetic; the golden cases test it.
"""
from __future__ import annotations

import atexit
import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from goae.landmarker import find_landmarker

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
# mediapipe 478-landmark indices for the official 5 points (iris centres, nose tip, mouth corners); our choice.
MP_LM5_INDEX = (468, 473, 1, 61, 291)
FOCAL = 4.2647           # normalised focal of the official labels (2985.29 / 700)
MAX_PIXELS = 50_000_000  # refuse larger photos (decompression bombs)
EXACT_RESIZE_MAX_PIXELS = 40_000_000  # above this the crop resamples only the needed region


# ----------------------------------------------------------------------------------------------- errors
class AlignError(ValueError):
    """Base class of every error align_face raises for a bad photo or argument."""


class InvalidImageError(AlignError):
    """The input is not a readable image (empty, truncated, corrupt, not an image)."""


class ImageTooLargeError(AlignError):
    """The image has more pixels than MAX_PIXELS (possible decompression bomb)."""


class NoFaceError(AlignError):
    """The landmarker found no face."""


class FaceIndexError(AlignError, IndexError):
    """face_index is outside the faces found."""


# ------------------------------------------------------------------------------------- crop arithmetic
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


# ------------------------------------------------------------------------------------------ image input
Photo = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]   # what align_face accepts


def _open_bytes(data: bytes, what: str) -> Image.Image:
    if len(data) == 0:
        raise InvalidImageError(f"{what} is empty (0 bytes), not an image.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            _check_pixels(im.size, what)   # header only: refuse before decoding any pixels
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{what} is too large to decode safely (possible decompression bomb): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise InvalidImageError(f"{what} is not an image file Pillow can read.") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, AlignError):
            raise
        raise InvalidImageError(f"{what} is corrupt or truncated: {e}") from e
    return im


def _check_pixels(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InvalidImageError(f"{what} has no pixels ({w}x{h}).")
    if w * h > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{what} has {w}x{h} = {w * h / 1e6:.1f} MP, more than the {MAX_PIXELS / 1e6:.0f} MP limit "
            "(possible decompression bomb); downscale it first.")


def _array_to_image(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InvalidImageError(f"array of shape {a.shape} is not an image (expected HxW, HxWx3 or HxWx4).")
    _check_pixels((a.shape[1], a.shape[0]), "the array")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535      # 16-bit -> 8-bit with rounding
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        a = a * 255 if a.max(initial=0) <= 1.0 else a          # floats: [0,1] or already [0,255]
        a = np.clip(np.rint(a), 0, 255)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255)
    else:
        raise InvalidImageError(f"array dtype {a.dtype} is not an image type.")
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white, 16/32-bit values are rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0                                       # 0..65535 -> 0..255
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")                                # L, 1, P, CMYK, YCbCr, HSV, ...
    except (ValueError, OSError) as e:
        raise InvalidImageError(f"cannot convert a {im.mode!r} image to RGB: {e}") from e


def load_image(photo: Photo) -> Image.Image:
    """Path / bytes / PIL image / numpy array -> 8-bit RGB PIL image, EXIF orientation applied."""
    if isinstance(photo, Image.Image):
        _check_pixels(photo.size, "the image")
        im = photo
    elif isinstance(photo, np.ndarray):
        return _to_rgb(_array_to_image(photo))                  # L, RGB or RGBA; no EXIF in an array
    elif isinstance(photo, (bytes, bytearray, memoryview)):
        im = _open_bytes(bytes(photo), "the image data")
    elif isinstance(photo, (str, os.PathLike)):
        path = Path(photo)
        if not path.is_file():
            raise InvalidImageError(f"photo {str(path)!r} does not exist or is not a file.")
        im = _open_bytes(path.read_bytes(), f"photo {str(path)!r}")
    else:
        raise InvalidImageError(f"cannot read a photo from a {type(photo).__name__}; "
                                "pass a path, bytes, a PIL image or a numpy array.")
    try:
        im = ImageOps.exif_transpose(im)       # phone photos store rotation in EXIF
    except Exception:                          # broken EXIF must not stop alignment; keep pixels as stored
        pass
    return _to_rgb(im)


# ----------------------------------------------------------------------------------- face landmarking
@dataclass
class Face:
    """One face found by mediapipe, in source-photo pixels."""
    box: tuple[float, float, float, float]   # [l, t, r, b] bounding box of the 478 landmarks
    lm5: np.ndarray                          # [5,2] float32 official 5 points (MTCNN order)
    landmarks478: np.ndarray                 # [478,3] float32: x px, y px, z (mediapipe depth, x's scale)
    transformation_matrix: np.ndarray        # [4,4] mediapipe face->camera (cm) for the region in `frame`
    area: float                              # box area, px^2
    frame: tuple[int, int, int, int]         # (x0, y0, w, h) region mediapipe saw: whole photo or a tile


_LANDMARKERS: dict[str, tuple[object, threading.Lock]] = {}
_LANDMARKERS_LOCK = threading.Lock()
TILE, TILE_OVERLAP, TILE_DEDUP_IOU = 640, 160, 0.4
MAX_FACES = 8
# 0.3 is the golden convention (parity/align): with it our landmarks equal the goldens' bit for bit; the
# no-face examples (coffee, cat) still give no face. Tiles use mediapipe's default 0.5: many tiles mean many
# chances of a false face (0.3 finds one in a 3000x4000 random-noise image, 0.5 none; t1.jpg: 6 faces with both).
MIN_CONFIDENCE, TILE_MIN_CONFIDENCE = 0.3, 0.5


def _landmarker(model_path: Path, confidence: float) -> tuple[object, threading.Lock]:
    """One mediapipe FaceLandmarker per (model file, confidence), created once; calls are serialised by a lock."""
    path = str(Path(model_path).resolve())
    key = f"{path}@{confidence}"
    with _LANDMARKERS_LOCK:
        if key not in _LANDMARKERS:
            os.environ.setdefault("GLOG_minloglevel", "2")   # quieten mediapipe's C++ logging
            from mediapipe.tasks.python import BaseOptions, vision
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=path), running_mode=vision.RunningMode.IMAGE,
                num_faces=MAX_FACES, output_facial_transformation_matrixes=True,
                min_face_detection_confidence=confidence, min_face_presence_confidence=confidence)
            try:
                lm = vision.FaceLandmarker.create_from_options(opts)
            except Exception as e:
                raise RuntimeError(f"mediapipe could not load {path}: {e}. "
                                   "Re-download it with: python -m goae.landmarker --force") from e
            if not _LANDMARKERS:
                _register_close_at_exit()
            _LANDMARKERS[key] = (lm, threading.Lock())
        return _LANDMARKERS[key]


def _register_close_at_exit() -> None:
    # mediapipe closes through a concurrent.futures executor, which Python shuts down in
    # threading's exit hooks, *before* atexit handlers. Registered there (after mediapipe's
    # executor, so called before it: the hooks run in reverse), close() still works at exit.
    register = getattr(threading, "_register_atexit", None)
    try:
        register(_close_landmarkers) if register else atexit.register(_close_landmarkers)
    except RuntimeError:  # interpreter already shutting down
        pass


def _close_landmarkers() -> None:
    # Close before interpreter teardown; mediapipe's __del__ otherwise prints errors at exit.
    for lm, _ in _LANDMARKERS.values():
        try:
            lm.close()
        except Exception:
            pass
    _LANDMARKERS.clear()


def _detect_region(rgb: np.ndarray, x0: int, y0: int, model_path: Path, confidence: float) -> list[Face]:
    import mediapipe as mp
    lm, lock = _landmarker(model_path, confidence)
    h, w = rgb.shape[:2]
    if min(h, w) < 8:                          # nothing to find, and keeps odd sizes away from mediapipe
        return []
    try:
        with lock:
            res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    except Exception as e:
        raise AlignError(f"mediapipe failed on this {w}x{h} image: {e}") from e
    faces = []
    for pts, mat in zip(res.face_landmarks, res.facial_transformation_matrixes):
        L = np.array([[p.x * w + x0, p.y * h + y0, p.z * w] for p in pts], dtype=np.float32)
        l, t = L[:, :2].min(0)
        r, b = L[:, :2].max(0)
        faces.append(Face(box=(float(l), float(t), float(r), float(b)), lm5=L[list(MP_LM5_INDEX), :2].copy(),
                          landmarks478=L, transformation_matrix=np.asarray(mat, dtype=np.float32),
                          area=float((r - l) * (b - t)), frame=(x0, y0, w, h)))
    return faces


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _tile_starts(n: int) -> list[int]:
    starts = list(range(0, max(n - TILE, 0) + 1, TILE - TILE_OVERLAP))
    if starts[-1] + TILE < n:
        starts.append(n - TILE)
    return starts


def _margin(face: Face) -> float:
    """Distance from the face box to its tile's border: the most central copy of a face is the most complete."""
    x0, y0, w, h = face.frame
    l, t, r, b = face.box
    return min(l - x0, t - y0, x0 + w - r, y0 + h - b)


def detect_faces(photo: Photo, *, landmarker_model: str | os.PathLike | None = None,
                 tiled: bool | None = None) -> list[Face]:
    """All faces, ordered left to right. If the whole photo gives none and it is larger than a tile, retry on
    overlapping 640 px tiles (mediapipe's short-range detector misses faces under ~10% of the image width)."""
    return _detect_faces(load_image(photo), find_landmarker(landmarker_model), tiled)


def _detect_faces(image: Image.Image, model: Path, tiled: bool | None = None) -> list[Face]:
    rgb = np.asarray(image)
    H, W = rgb.shape[:2]
    faces = [] if tiled else _detect_region(rgb, 0, 0, model, MIN_CONFIDENCE)
    if not faces and tiled is not False and max(W, H) > TILE:
        found = []
        for y0 in _tile_starts(H):
            for x0 in _tile_starts(W):
                found += _detect_region(rgb[y0:y0 + TILE, x0:x0 + TILE], x0, y0, model, TILE_MIN_CONFIDENCE)
        for f in sorted(found, key=_margin, reverse=True):   # keep the most central copy of each face
            if all(_iou(f.box, g.box) < TILE_DEDUP_IOU for g in faces):
                faces.append(f)
    return sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2)


# ------------------------------------------------------------------------------------- camera estimate
def _protobuf_fields(buf: bytes):
    """Minimal protobuf wire-format reader: yields (field number, wire type, value)."""
    i = 0
    def varint():
        nonlocal i
        v = shift = 0
        while True:
            c = buf[i]
            i += 1
            v |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return v
    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 2:
            n = varint()
            yield num, wt, buf[i:i + n]
            i += n
        elif wt == 5:
            yield num, wt, np.frombuffer(buf[i:i + 4], "<f4")[0]
            i += 4
        elif wt == 1:
            yield num, wt, np.frombuffer(buf[i:i + 8], "<f8")[0]
            i += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")


_CANONICAL: dict[str, np.ndarray] = {}


def canonical_face(model_path: str | os.PathLike | None = None) -> np.ndarray:
    """mediapipe's canonical face mesh [468,3] (cm; x to the subject's left, y up, z out of the face), read from
    geometry_pipeline_metadata_landmarks.binarypb inside face_landmarker.task (GeometryPipelineMetadata:
    field 1 = canonical_mesh; Mesh3d field 3 = vertex_buffer, 5 floats x,y,z,u,v per vertex)."""
    import zipfile
    path = str(find_landmarker(model_path).resolve())
    if path not in _CANONICAL:
        with zipfile.ZipFile(path) as z:
            meta = z.read("geometry_pipeline_metadata_landmarks.binarypb")
        mesh = next(v for n, wt, v in _protobuf_fields(meta) if n == 1 and wt == 2)
        vb = []
        for n, wt, v in _protobuf_fields(mesh):
            if n == 3:
                vb.extend(np.frombuffer(v, "<f4") if wt == 2 else [v])   # packed or not
        _CANONICAL[path] = np.asarray(vb, dtype=np.float64).reshape(-1, 5)[:, :3]
    return _CANONICAL[path]


def _similarity(A: np.ndarray, B: np.ndarray, w: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity B ~ s R A + t (Umeyama)."""
    w = np.ones(len(A)) if w is None else w
    w = w / w.sum()
    ma, mb = w @ A, w @ B
    A0, B0 = A - ma, B - mb
    U, S, Vt = np.linalg.svd((w[:, None] * B0).T @ A0)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / (w @ (A0 ** 2).sum(1)))
    return s, R, mb - s * R @ ma


def bfm_to_canonical(canonical: np.ndarray) -> np.ndarray:
    """Rotation taking Deep3DFaceRecon (BFM) head axes to mediapipe canonical axes, from the 5 template points
    (eyes = mean of the two eye corners, as the 68-point template does; nose tip; mouth corners). ~1.6 deg pitch."""
    mp5 = np.stack([(canonical[33] + canonical[133]) / 2, (canonical[362] + canonical[263]) / 2,
                    canonical[1], canonical[61], canonical[291]])
    return _similarity(LM3D_STD_5.astype(np.float64), mp5)[1]


def head_rotation_landmarks(landmarks478: np.ndarray, canonical: np.ndarray, iters: int = 10) -> np.ndarray:
    """Head->camera rotation (camera y up, looking down -z) from the 478 landmarks: scaled-orthographic
    Procrustes of the 468 mesh points against the canonical mesh. mediapipe's z is only roughly in x's scale,
    so its scale k is fitted too (alternating; k comes out 0.85-1.07). Appearance based: the rotation is
    relative to the viewing ray, which is what the crop camera needs, whatever the real lens was."""
    P = landmarks478[:468].astype(np.float64) * np.array([1.0, -1.0, -1.0])   # y up, z toward the camera
    P = P - P.mean(0)
    k = 1.0
    for _ in range(iters):
        s, R, _ = _similarity(canonical, P * np.array([1.0, 1.0, k]))
        Q = s * (canonical - canonical.mean(0)) @ R.T                          # model in camera axes
        k = float((Q[:, 2] @ P[:, 2]) / (P[:, 2] @ P[:, 2]))
    return R


def head_rotation_matrix(face: Face, params: CropParams) -> np.ndarray:
    """Alternative: rotation of mediapipe's facial transformation matrix, turned from its 63-degree-FOV camera of
    `face.frame` to a camera looking at the crop centre."""
    U, _, Vt = np.linalg.svd(face.transformation_matrix[:3, :3].astype(np.float64))
    M = U @ Vt
    x0, y0, w, h = face.frame
    f = (h / 2) / np.tan(np.radians(63 / 2))                  # mediapipe's perspective camera
    l, t, r, b = params.final_box_src
    d = np.array([((l + r) / 2 - x0 - w / 2) / f, -((t + b) / 2 - y0 - h / 2) / f, -1.0])
    z = -d / np.linalg.norm(d)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z]) @ M


def label_from_head_pose(M: np.ndarray, T: np.ndarray) -> np.ndarray:
    """EG3D 25-number label from a head->camera rotation M and head-origin position T (BFM units, camera y up,
    looking down -z), the 3dface2idr_mat.py + fix_pose_orig + fix_intrinsics chain."""
    Rm = M.T
    c = 0.27 * (-Rm @ T) + np.array([0.0, 0.006, 0.161])
    c = 2.7 * c / np.linalg.norm(c)
    pose = np.eye(4)
    pose[:3, :3] = Rm @ np.diag([1.0, -1.0, -1.0])            # y-up/-z camera -> OpenCV camera (EG3D)
    pose[:3, 3] = c
    K = np.array([FOCAL, 0, 0.5, 0, FOCAL, 0.5, 0, 0, 1])
    return np.concatenate([pose.ravel(), K]).astype(np.float32)


def estimate_camera(face: Face, params: CropParams, *, method: str = "landmarks",
                    landmarker_model: str | os.PathLike | None = None) -> np.ndarray:
    """EG3D label of the aligned 512 crop. The camera is the crop camera (principal point at the crop centre,
    f = 4.2647 crop widths), not the physical one: that is the camera Deep3DFaceRecon assumes.
    method="landmarks" (default, best on the GOAE labels) or "matrix" (mediapipe's transformation matrix)."""
    canonical = canonical_face(landmarker_model)
    if method == "landmarks":
        M = head_rotation_landmarks(face.landmarks478, canonical)
    elif method == "matrix":
        M = head_rotation_matrix(face, params)
    else:
        raise ValueError(f"unknown camera method {method!r}; use 'landmarks' or 'matrix'")
    M = M @ bfm_to_canonical(canonical)                       # express the head in BFM axes
    # The head origin is the template origin that POS placed (pos_t); the crop is centred on it up to the int
    # truncations. Its depth follows from the crop scale: 300 px per BFM unit in a 700 crop seen with f=4.2647.
    H = params.image_size[1]
    l, t, r, b = params.final_box_src
    u = (params.pos_t[0] - l) / (r - l) - 0.5
    v = (H - 1 - params.pos_t[1] - t) / (b - t) - 0.5
    D = FOCAL * CENTER_CROP_SIZE / RESCALE_FACTOR
    return label_from_head_pose(M, np.array([u * D / FOCAL, -v * D / FOCAL, -D]))


# ------------------------------------------------------------------------------------------ align_face
@dataclass
class AlignedFace:
    image: Image.Image                       # 512x512 RGB, the official EG3D/FFHQ-style crop
    camera: np.ndarray                       # float32[25] EG3D label (cam2world 4x4 + normalised K 3x3)
    box: tuple[float, float, float, float]   # final_box_src: source region [l, t, r, b] the crop covers
    landmarks: np.ndarray                    # [5,2] float32, the 5 points the crop was fitted to (source px)
    landmarks478: np.ndarray                 # [478,3] float32 mediapipe landmarks (source px)
    face_index: int                          # index into `faces`
    faces: list[Face] = field(repr=False)    # every face found, left to right
    source_size: tuple[int, int] = (0, 0)    # (W, H) after EXIF orientation
    crop_params: CropParams | None = field(default=None, repr=False)


def align_face(photo: Photo, face_index: int | None = None, *,
               landmarker_model: str | os.PathLike | None = None) -> AlignedFace:
    """Photo (path, bytes, PIL image or numpy array) -> aligned 512 portrait + its EG3D camera.

    Picks the largest face unless `face_index` (0-based, faces ordered left to right) says otherwise.
    Raises a subclass of AlignError with a readable message for anything wrong with the photo.
    """
    image = load_image(photo)
    faces = _detect_faces(image, find_landmarker(landmarker_model))
    if not faces:
        raise NoFaceError(f"No face found in the photo ({image.width}x{image.height}). Use a photo where the face "
                          "is visible, roughly frontal (up to ~50 degrees of yaw) and not tiny.")
    if face_index is None:
        face_index = max(range(len(faces)), key=lambda i: faces[i].area)
    elif isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)) \
            or not 0 <= face_index < len(faces):
        raise FaceIndexError(f"face_index {face_index!r} is not valid: found {len(faces)} face(s), "
                             f"choose 0..{len(faces) - 1} (ordered left to right) or None for the largest.")
    face = faces[int(face_index)]
    params = crop_params_from_lm5(face.lm5, image.size)
    return AlignedFace(
        image=crop_image(image, params),
        camera=estimate_camera(face, params, landmarker_model=landmarker_model),
        box=params.final_box_src, landmarks=face.lm5, landmarks478=face.landmarks478,
        face_index=int(face_index), faces=faces, source_size=image.size, crop_params=params)
