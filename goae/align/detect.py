"""Faces in a photo: mediapipe FaceLandmarker (shared instances), a tiled second pass for small faces, the cap.

mediapipe's short-range detector misses faces under ~10% of the image width, so a photo with none found is
searched again in overlapping 640 px tiles. mediapipe returns at most `num_faces` faces; we ask it for more
than `max_faces` so that a photo with more faces than the cap is noticed, said, and can be searched further.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from goae.align.errors import AlignError

log = logging.getLogger("goae.align")

# mediapipe 478-landmark indices for the official 5 points (iris centres, nose tip, mouth corners); our choice.
MP_LM5_INDEX = (468, 473, 1, 61, 291)
TILE, TILE_OVERLAP = 640, 160
DEDUP_IOU = 0.4   # boxes overlapping more are one face: seen by two tiles, or twice by mediapipe
MAX_FACES = 8          # faces kept by default (the largest ones when a photo has more)
MAX_FACES_LIMIT = 64   # the most a caller may ask for: bounds the work per photo and the landmarker instances
# 0.3 is the golden convention (parity/align): with it our landmarks equal the goldens' bit for bit; the
# no-face examples (coffee, cat) still give no face. Tiles use mediapipe's default 0.5: many tiles mean many
# chances of a false face (0.3 finds one in a 3000x4000 random-noise image, 0.5 none; t1.jpg: 6 faces with both).
MIN_CONFIDENCE, TILE_MIN_CONFIDENCE = 0.3, 0.5


@dataclass
class Face:
    """One face found by mediapipe, in source-photo pixels."""
    box: tuple[float, float, float, float]   # [l, t, r, b] bounding box of the 478 landmarks
    lm5: np.ndarray                          # [5,2] float32 official 5 points (MTCNN order)
    landmarks478: np.ndarray                 # [478,3] float32: x px, y px, z (mediapipe depth, x's scale)
    transformation_matrix: np.ndarray        # [4,4] mediapipe face->camera (cm) for the region in `frame`
    area: float                              # box area, px^2
    frame: tuple[int, int, int, int]         # (x0, y0, w, h) region mediapipe saw: whole photo or a tile


class FaceList(list):
    """detect_faces' result: the faces kept, left to right, plus `found`, how many the photo gave before the cap
    (there may be more when mediapipe returned as many as it was asked for), and `capped`: some were left out."""

    def __init__(self, faces=(), found: int | None = None):
        super().__init__(faces)
        self.found = len(self) if found is None else found

    @property
    def capped(self) -> bool:
        return self.found > len(self)


# --------------------------------------------------------------------------------- landmarker instances
_LANDMARKERS: dict[tuple[str, float, int], tuple[object, threading.Lock]] = {}
_LANDMARKERS_LOCK = threading.Lock()


def _capacity(max_faces: int) -> int:
    """num_faces asked of mediapipe: the power of two above max_faces. Room to count what the cap leaves out,
    and few distinct values, hence few instances (each holds its own models)."""
    return 1 << int(max_faces).bit_length()


def _landmarker(model_path: Path, confidence: float, num_faces: int) -> tuple[object, threading.Lock]:
    """One mediapipe FaceLandmarker per (model file, confidence, num_faces), created once; calls are serialised."""
    path = str(Path(model_path).resolve())
    key = (path, confidence, num_faces)
    with _LANDMARKERS_LOCK:
        if key not in _LANDMARKERS:
            os.environ.setdefault("GLOG_minloglevel", "2")   # quieten mediapipe's C++ logging
            from mediapipe.tasks.python import BaseOptions, vision
            opts = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=path), running_mode=vision.RunningMode.IMAGE,
                num_faces=num_faces, output_facial_transformation_matrixes=True,
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


# ----------------------------------------------------------------------------------------- detection
def _detect_region(rgb: np.ndarray, x0: int, y0: int, model_path: Path, confidence: float,
                   num_faces: int) -> list[Face]:
    import mediapipe as mp
    lm, lock = _landmarker(model_path, confidence, num_faces)
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


def box_iou(a, b) -> float:
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


def _unique(faces: list[Face]) -> list[Face]:
    """Drop later copies of a face: overlapping tiles see a face more than once, and mediapipe itself returned
    some faces twice (IoU > 0.9) when asked for 32 in a grid of 20 (tests/test_align_faces.py)."""
    kept: list[Face] = []
    for f in faces:
        if all(box_iou(f.box, g.box) < DEDUP_IOU for g in kept):
            kept.append(f)
    return kept


def check_max_faces(max_faces) -> int:
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) \
            or not 1 <= max_faces <= MAX_FACES_LIMIT:
        raise AlignError(f"max_faces must be an integer from 1 to {MAX_FACES_LIMIT}, got {max_faces!r}.")
    return int(max_faces)


def find_faces(image: Image.Image, model: Path, tiled: bool | None = None, max_faces: int = MAX_FACES) -> FaceList:
    """Faces of an RGB image, left to right, at most max_faces of them (the largest; a warning says so)."""
    max_faces = check_max_faces(max_faces)
    n = _capacity(max_faces)
    rgb = np.asarray(image)
    H, W = rgb.shape[:2]
    raw = [] if tiled else _detect_region(rgb, 0, 0, model, MIN_CONFIDENCE, n)
    saturated = len(raw) >= n                              # mediapipe may have left faces out itself
    faces = _unique(raw)
    if not faces and tiled is not False and max(W, H) > TILE:
        for y0 in _tile_starts(H):
            for x0 in _tile_starts(W):
                tile = _detect_region(rgb[y0:y0 + TILE, x0:x0 + TILE], x0, y0, model, TILE_MIN_CONFIDENCE, n)
                raw += tile
                saturated |= len(tile) >= n
        faces = _unique(sorted(raw, key=_margin, reverse=True))   # keep the most central copy of each face
    total = len(faces)
    if total > max_faces:   # keep the largest: the default choice is among them, and they are the best crops
        keep = set(sorted(range(total), key=lambda i: faces[i].area, reverse=True)[:max_faces])
        faces = [f for i, f in enumerate(faces) if i in keep]
        log.warning("found %d%s faces, kept the %d largest; pass a higher max_faces (up to %d) to choose among "
                    "them all", total, " or more" if saturated else "", max_faces, MAX_FACES_LIMIT)
    return FaceList(sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2), found=total)
