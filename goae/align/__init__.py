"""photo -> AlignedFace: mediapipe landmarks, the official EG3D in-the-wild crop, an EG3D camera estimate.
Cat photo -> AlignedCat (align_cat): a cat-face detector or a given box, an AFHQ-style crop, the AFHQ camera.

  image.py      decoding and validation of the photo (raster formats only, pixel limit, modes, EXIF)
  detect.py     mediapipe FaceLandmarker instances, tiled detection of small faces, the face cap
  crop.py       the official crop arithmetic (Deep3DFaceRecon align_img + EG3D's centre crop), bit for bit
  canonical.py  mediapipe's canonical face mesh, read from the landmarker model file
  pose.py       head pose -> 25-number camera label (with goae.camera)
  cat.py        cats: OpenCV cat-face cascades (or a user box) -> AFHQ-style 512 crop, the AFHQ camera
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from goae.align.crop import (CENTER_CROP_SIZE, LM3D_STD_5, OUTPUT_SIZE, RESCALE_FACTOR, TARGET_SIZE, CropParams,
                             crop_image, crop_params_from_lm5)
from goae.align.cat import AlignedCat, NoCatError, align_cat, cat_crop_box, crop_cat, detect_cats
from goae.align.detect import (MAX_FACES, MAX_FACES_LIMIT, MIN_CONFIDENCE, MP_LM5_INDEX, TILE, TILE_MIN_CONFIDENCE,
                               Face, FaceList, find_faces)
from goae.align.errors import AlignError, FaceIndexError, ImageTooLargeError, InvalidImageError, NoFaceError
from goae.align.image import MAX_PIXELS, RASTER_FORMATS, Photo, load_image, open_image
from goae.align.pose import estimate_camera
from goae.landmarker import find_landmarker

# Constants here are copies: to change one (as tests do), set it on its module, e.g. goae.align.crop.
__all__ = [
    "align_face", "AlignedFace", "detect_faces", "load_image", "open_image", "estimate_camera",
    "crop_image", "crop_params_from_lm5", "CropParams", "Face", "FaceList", "Photo",
    "AlignError", "InvalidImageError", "ImageTooLargeError", "NoFaceError", "FaceIndexError",
    "MAX_PIXELS", "RASTER_FORMATS", "MAX_FACES", "MAX_FACES_LIMIT", "MIN_CONFIDENCE", "TILE", "TILE_MIN_CONFIDENCE",
    "MP_LM5_INDEX", "LM3D_STD_5", "RESCALE_FACTOR", "TARGET_SIZE", "CENTER_CROP_SIZE", "OUTPUT_SIZE",
    "align_cat", "AlignedCat", "detect_cats", "cat_crop_box", "crop_cat", "NoCatError",
]


@dataclass
class AlignedFace:
    image: Image.Image                       # 512x512 RGB, the official EG3D/FFHQ-style crop
    camera: np.ndarray                       # float32[25] EG3D label (cam2world 4x4 + normalised K 3x3)
    box: tuple[float, float, float, float]   # final_box_src: source region [l, t, r, b] the crop covers
    landmarks: np.ndarray                    # [5,2] float32, the 5 points the crop was fitted to (source px)
    landmarks478: np.ndarray                 # [478,3] float32 mediapipe landmarks (source px)
    face_index: int                          # index into `faces`
    faces: list[Face] = field(repr=False)    # the faces kept, left to right (at most max_faces)
    source_size: tuple[int, int] = (0, 0)    # (W, H) after EXIF orientation
    crop_params: CropParams | None = field(default=None, repr=False)
    faces_found: int = 0                     # faces in the photo before the max_faces cap (see FaceList.found)

    @property
    def faces_capped(self) -> bool:
        """The photo had more faces than max_faces: `faces` holds the largest; align again with a higher one."""
        return self.faces_found > len(self.faces)


def detect_faces(photo: Photo, *, landmarker_model: str | os.PathLike | None = None, tiled: bool | None = None,
                 max_faces: int = MAX_FACES) -> FaceList:
    """All faces (at most max_faces, the largest), ordered left to right; `.capped` says whether some were left
    out. If the whole photo gives none and it is larger than a tile, retry on overlapping 640 px tiles
    (mediapipe's short-range detector misses faces under ~10% of the image width)."""
    return find_faces(load_image(photo), find_landmarker(landmarker_model), tiled, max_faces)


def align_face(photo: Photo, face_index: int | None = None, *, max_faces: int = MAX_FACES,
               landmarker_model: str | os.PathLike | None = None) -> AlignedFace:
    """Photo (path, bytes, PIL image or numpy array) -> aligned 512 portrait + its EG3D camera.

    Picks the largest face unless `face_index` (0-based, faces ordered left to right) says otherwise. A photo
    with more than `max_faces` faces keeps the largest ones (a warning is logged, `faces_capped` is set);
    pass a higher max_faces (up to MAX_FACES_LIMIT) to choose among more.
    Raises a subclass of AlignError with a readable message for anything wrong with the photo.
    """
    image = load_image(photo)
    faces = find_faces(image, find_landmarker(landmarker_model), max_faces=max_faces)
    if not faces:
        raise NoFaceError(f"No face found in the photo ({image.width}x{image.height}). Use a photo where the face "
                          "is visible, roughly frontal (up to ~50 degrees of yaw) and not tiny.")
    if face_index is None:
        face_index = max(range(len(faces)), key=lambda i: faces[i].area)
    elif isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)) \
            or not 0 <= face_index < len(faces):
        more = (f" The photo has more faces than max_faces={max_faces}: pass a higher max_faces to choose "
                "among them." if faces.capped else "")
        raise FaceIndexError(f"face_index {face_index!r} is not valid: found {len(faces)} face(s), "
                             f"choose 0..{len(faces) - 1} (ordered left to right) or None for the largest.{more}")
    face = faces[int(face_index)]
    params = crop_params_from_lm5(face.lm5, image.size)
    return AlignedFace(
        image=crop_image(image, params),
        camera=estimate_camera(face, params, landmarker_model=landmarker_model),
        box=params.final_box_src, landmarks=face.lm5, landmarks478=face.landmarks478,
        face_index=int(face_index), faces=faces, source_size=image.size, crop_params=params,
        faces_found=faces.found)
