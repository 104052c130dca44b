"""One face followed through a clip: detection per frame, matching, re-detection, smoothed alignment.

Every frame is searched with goae.align's detector (mediapipe FaceLandmarker, image mode; a tiled second
pass when a large frame gives nothing). The tracked face is the one that overlaps the previous frame's
face most (IoU >= MATCH_IOU), or failing that the face nearest to it (centre within NEAR_WIDTHS box
widths: a fast move). When none is near, the track is lost and a face is taken again: the largest
(`reacquired`, the filters restart). On the first frame with faces the face is the largest one, or
`face_index` (0-based, left to right, as for photos).

The crop is the official EG3D crop (goae.align.crop) of the *smoothed* 5 points; the camera is the
estimate of goae.align.pose for that crop, smoothed (goae.video.filters). The unsmoothed box and camera
(what each frame alone gives) are kept in every TrackedFrame for comparison.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from goae.align import AlignedFace, FaceIndexError, crop_image, crop_params_from_lm5, estimate_camera, load_image
from goae.align.detect import MAX_FACES, Face, FaceList, box_iou, find_faces
from goae.landmarker import find_landmarker
from goae.video.filters import CameraFilter, LandmarkFilter, SmoothingOptions

MATCH_IOU = 0.3
NEAR_WIDTHS = 1.0

OK, NO_FACE = "ok", "no_face"


@dataclass
class TrackedFrame:
    """The track in one frame. `face` (the aligned crop and camera the inversion uses) is None when no face
    was found; `note` then says so."""
    index: int
    time: float
    status: str                                  # "ok" or "no_face"
    face: AlignedFace | None = None
    raw_box: tuple[float, float, float, float] | None = None   # crop box of this frame's own landmarks
    raw_camera: np.ndarray | None = field(default=None, repr=False)   # camera of this frame alone
    reacquired: bool = False                     # the face was taken again (first frame, or after a loss)
    note: str | None = None
    faces_found: int = 0

    def record(self) -> dict:
        """This frame's entry in a video's result.json."""
        from goae.camera import yaw_pitch_from_label
        import torch

        rec = {"frame": self.index, "time": round(float(self.time), 6), "status": self.status,
               "faces_found": self.faces_found}
        if self.face is not None:
            yaw, pitch = yaw_pitch_from_label(torch.from_numpy(np.asarray(self.face.camera))[None])
            rec.update(face_box=[round(float(x), 3) for x in self.face.box],
                       camera=[float(x) for x in self.face.camera],
                       camera_yaw_deg=round(float(np.degrees(yaw[0])), 4),
                       camera_pitch_deg=round(float(np.degrees(pitch[0])), 4),
                       face_index=self.face.face_index)
        if self.reacquired:
            rec["reacquired"] = True
        if self.note:
            rec["note"] = self.note
        return rec


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


class FaceTracker:
    """Feed frames in order (`update(image, time)`); get one TrackedFrame each (module docstring).

    smoothing=None turns the filters off (each frame's own crop and camera). `detect` replaces the detector
    (image -> goae.align.FaceList), e.g. to replay recorded detections with other filter settings."""

    def __init__(self, face_index: int | None = None, smoothing: SmoothingOptions | None = SmoothingOptions(),
                 max_faces: int = MAX_FACES, landmarker_model: str | os.PathLike | None = None,
                 detect: Callable[[Image.Image], FaceList] | None = None):
        self.face_index = face_index
        self.smoothing = smoothing
        self.max_faces = max_faces
        self.landmarker_model = landmarker_model
        if detect is None:
            model = find_landmarker(landmarker_model)
            detect = lambda im: find_faces(im, model, max_faces=max_faces)  # noqa: E731
        self.detect = detect
        self._lm = LandmarkFilter(smoothing) if smoothing else None
        self._cam = CameraFilter(smoothing) if smoothing else None
        self._last: Face | None = None     # the tracked face where it was last seen
        self._started = False
        self._index = 0

    def _reset_filters(self) -> None:
        if self._lm is not None:
            self._lm.reset()
            self._cam.reset()

    def _choose(self, faces: list[Face]) -> tuple[int, bool]:
        """(index into faces, reacquired)."""
        if not self._started:
            if self.face_index is None:
                return max(range(len(faces)), key=lambda i: faces[i].area), True
            if not 0 <= self.face_index < len(faces):
                raise FaceIndexError(f"face_index {self.face_index} is not valid: the first frame with faces has "
                                     f"{len(faces)} face(s), choose 0..{len(faces) - 1} (ordered left to right) or "
                                     "leave it out for the largest.")
            return self.face_index, True
        last = self._last.box
        ious = [box_iou(last, f.box) for f in faces]
        best = int(np.argmax(ious))
        if ious[best] >= MATCH_IOU:
            return best, False
        dist = [float(np.linalg.norm(_centre(f.box) - _centre(last))) for f in faces]
        near = int(np.argmin(dist))
        if dist[near] <= NEAR_WIDTHS * (last[2] - last[0]):
            return near, False
        return max(range(len(faces)), key=lambda i: faces[i].area), True

    def update(self, image: Image.Image | np.ndarray, time: float | None = None) -> TrackedFrame:
        image = load_image(image) if not isinstance(image, Image.Image) or image.mode != "RGB" else image
        index = self._index
        self._index += 1
        time = float(index if time is None else time)
        faces = self.detect(image)
        if not len(faces):
            return TrackedFrame(index, time, NO_FACE, note="no face found in this frame", faces_found=0)
        i, reacquired = self._choose(faces)
        note = "the tracked face was lost; a face was detected again" if reacquired and self._started else None
        if reacquired:
            self._reset_filters()
        self._started = True
        face = faces[i]
        self._last = face
        raw_params = crop_params_from_lm5(face.lm5, image.size)
        raw_camera = estimate_camera(face, raw_params, landmarker_model=self.landmarker_model)
        if self._lm is None:
            lm5, params, camera = face.lm5, raw_params, raw_camera
        else:
            lm5 = self._lm(face.lm5, time)
            params = crop_params_from_lm5(lm5, image.size)
            camera = self._cam(estimate_camera(face, params, landmarker_model=self.landmarker_model), time)
        aligned = AlignedFace(image=crop_image(image, params), camera=np.asarray(camera, np.float32),
                              box=params.final_box_src, landmarks=np.asarray(lm5, np.float32),
                              landmarks478=face.landmarks478, face_index=i, faces=list(faces),
                              source_size=image.size, crop_params=params,
                              faces_found=getattr(faces, "found", len(faces)))
        return TrackedFrame(index, time, OK, face=aligned, raw_box=raw_params.final_box_src, raw_camera=raw_camera,
                            reacquired=reacquired, note=note, faces_found=getattr(faces, "found", len(faces)))

