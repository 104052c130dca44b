"""Cat photo -> AlignedCat: a cat face (OpenCV's Haar cascades, or a box the user gives), an AFHQ-style square
crop and the AFHQ camera.

The cat generator (EG3D AFHQv2 cats) was trained on 512x512 AFHQ crops: the cat's head, ears to chin, fills most
of the square frame, roughly centred. There is no official AFHQ alignment code to copy (AFHQ was released as
crops) and no AFHQ data here to calibrate against, so every crop constant below was set BY EYE on a CC0 photo
(skimage's chelsea.png), not fitted to AFHQ statistics.

The camera is not estimated (domains.CAT.camera_estimated is False): a cat photo gets the AFHQ frontal label, or
the yaw/pitch the user sets, built like the training labels (looking at AFHQ_LABEL_LOOKAT, what goae.domains.CAT
reads).

Steps, in the order align_cat runs them:
  1. load_image        the same decoding and validation as align_face (formats, pixel limit, EXIF)
  2. the face box      box= from the user, or the photo as is (aligned=), or detect_cats: two OpenCV cascades at
                       five sizes, boxes found by at least two of those passes, minus boxes on human faces
                       (mediapipe, when its model is installed)
  3. cat_crop_box      face box -> square source region (may extend past the photo)
  4. crop_cat          that region -> 512x512, LANCZOS; outside the photo: edge pixels, progressively blurred
  5. the camera        camera_label_degrees(yaw, pitch, lookat=AFHQ_LABEL_LOOKAT)

The cascades are weak detectors (see "the detector" below): they want a frontal, upright face of at least ~8%
of the photo's longer side, and they also fire on human faces and some textures. A box always works, and the
error messages say so.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from goae.align.detect import MAX_FACES, box_iou, check_max_faces, find_faces
from goae.align.errors import AlignError, FaceIndexError, NoFaceError
from goae.align.image import Photo, load_image
from goae.camera import camera_label_degrees
from goae.landmarker import LandmarkerModelMissing, find_landmarker

log = logging.getLogger("goae.align")

OUTPUT_SIZE = 512            # AFHQ crops (and the cat generator) are 512x512

# ------------------------------------------------------------------------------------------ the detector
# OpenCV ships two frontal cat-face Haar cascades (Joseph Howse's, "OpenCV for Secret Agents"; they assume an
# upright cat); the "extended" one also uses diagonal Haar features. Measured on chelsea.png, on chelsea pasted at 4 scales into a larger
# scene, and on 13 human photos and coffee.png (numbers in the report of the "Cats" issue): any ONE setting is
# a coin toss. Whether chelsea's face is found flips with the resampling filter, a 20 px change of the working
# size, scaleFactor 1.04 vs 1.05 or minNeighbors 2 vs 3. So the photo is searched several times, at
# DETECT_SIDES (its longer side scaled to each), by both cascades, and a face must be found by MIN_VOTES of those
# 10 passes. Measured: the cat faces found got 3-10 votes (chelsea 4; chelsea enlarged 1.5x into a scene, its
# face cut by the edges, 1: missed), stray boxes mostly 1 (coffee.png: one box, 1 vote), but human faces 2-9
# (hence the veto below) and a pattern on one portrait's clothes 3.
CASCADES = ("haarcascade_frontalcatface.xml", "haarcascade_frontalcatface_extended.xml")
# The cascades' smallest window is 24 px: at 256-384 px a cat face must be at least ~8% of the photo's longer
# side. The time per photo is bounded (~0.8 s for the 10 passes on 2 cores) whatever the photo's size.
DETECT_SIDES = (256, 288, 320, 352, 384)
MIN_VOTES = 2
# A close-up fills the whole frame (chelsea.png: the face is as tall as the photo) and a cascade only fires
# when its window holds the whole face. A black border of DETECT_PAD x the longer side lets the window reach
# past the photo: without it neither cascade finds chelsea's face, only parts of it (the nose, an eye).
# Black, not repeated edge pixels: with repeated edges only the nose region was found.
DETECT_PAD = 0.25
SCALE_FACTOR = 1.05          # 1.1 loses chelsea in most passes; 1.02-1.03 is 2x slower and finds more stray boxes
MIN_NEIGHBORS = 2            # per pass; the votes across passes do the rest
MIN_FACE = 0.10              # smallest face searched for, as a fraction of the photo's shorter side
MERGE_IOU = 0.3              # boxes (of any pass) overlapping more are one face
PART = 0.5                   # a box less than half as wide as a face holding its centre is a part of that face

# ------------------------------------------------------------------------------------------ the crop
# Set by eye on chelsea.png (CC0), see the module docstring. The cascades' box covers the face without the ears:
# on chelsea from the top of the head between the ears to just below the chin, cheek to cheek, ~2.4x the
# distance between the eyes, the eyes 0.42 of the way down. The ear tips stand roughly 0.1-0.2 box sides above
# it. An AFHQ-style crop is DETECTED_SCALE times that box, its centre raised by DETECTED_SHIFT x the box side so
# the ears fit: on chelsea the head then spans ~75% of the frame's height (ear tips ~0.1 from the top), the
# eyes sit just below the middle and are ~0.3 of the width apart. 1.3 crowds the ears, 1.5-1.7 leaves the head
# small in the frame; shifts of -0.05..0.1 were compared.
DETECTED_SCALE, DETECTED_SHIFT = 1.4, 0.05
# A box the user gives means "the cat's head, ears to chin": it already holds the ears, so it only gets a
# margin, centred, that leaves the head at about the same share of the frame (~80%) as a detected face gets.
# A rectangular box is squared on its longer side.
BOX_SCALE = 1.25
MIN_BOX = 16                 # a smaller given box is a slip of the mouse, not a cat (source px)
# Outside the photo the crop repeats the edge pixels, blurred more the farther out they are. AFHQ crops hold
# only real pixels, so any padding is unlike the training data; this is the least unlike, judged by eye on
# chelsea.png (a close-up: the crop reaches well past the photo). Reflecting the photo duplicates the eyes
# above the head (a second face for the encoder), black adds hard straight edges, bare edge pixels make sharp
# streaks. Blurred streaks look like the out-of-focus background of most pet photos. Radius 10 left the
# streaks sharp, 40 did not look better than 24.
PAD_BLUR = 24.0              # Gaussian radius (output px) of the padding
PAD_RAMP = 24.0              # output px over which the padding goes from sharp (at the photo's edge) to blurred

# ------------------------------------------------------------------------------------------ the rest
# AFHQ labels sit at -2.7 * forward: they look at the origin (FFHQ's look at EG3D's pivot (0, 0, 0.2)).
AFHQ_LABEL_LOOKAT = (0.0, 0.0, 0.0)
YAW_LIMIT, PITCH_LIMIT = 90.0, 60.0   # degrees: AFHQ cameras stay well inside; beyond is a typo, not a view
AGREE_IOU = 0.6              # an exactly 512x512 photo is "already aligned" if its detection's crop is the frame


class NoCatError(NoFaceError):
    """No cat face was found (and no box was given)."""


@dataclass
class AlignedCat:
    image: Image.Image                           # 512x512 RGB, the AFHQ-style crop
    camera: np.ndarray                           # float32[25] EG3D label at (yaw, pitch), built like AFHQ's
    box: tuple[float, float, float, float]       # source region [l, t, r, b] the crop covers (may pass the edges)
    face_box: tuple[float, float, float, float] | None   # the cat face found or given (source px); None when
                                                         # the photo was taken as is with no face detected
    faces: list[tuple[float, float, float, float]] = field(default_factory=list, repr=False)  # found, left to right
    face_index: int | None = None                # index into `faces`; None when no detection chose the crop
    faces_found: int = 0                         # faces found before the max_faces cap
    source_size: tuple[int, int] = (0, 0)        # (W, H) after EXIF orientation
    camera_estimated: bool = False               # always False: the camera of a cat is set, not estimated
    detector: str = "cascade"                    # "cascade", "user box" or "as given"
    yaw: float = 0.0                             # degrees used for the camera
    pitch: float = 0.0

    @property
    def faces_capped(self) -> bool:
        """The photo had more cat faces than max_faces: `faces` holds the largest."""
        return self.faces_found > len(self.faces)


# ------------------------------------------------------------------------------------------ validation
def _check_angles(yaw, pitch) -> tuple[float, float]:
    out = []
    for name, value, limit in (("yaw", yaw, YAW_LIMIT), ("pitch", pitch, PITCH_LIMIT)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or abs(value) > limit:
            raise AlignError(f"{name} must be a finite number of degrees from -{limit:g} to {limit:g}, "
                             f"got {value!r}.")
        out.append(float(value))
    return out[0], out[1]


def _check_box(box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A user box: 4 finite numbers l, t, r, b in source px, at least MIN_BOX px each way, overlapping the photo
    and not absurdly larger than it."""
    W, H = size
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 4 or isinstance(box, (str, bytes)) \
            or any(isinstance(v, bool) for v in box):
        raise AlignError(f"box must be 4 numbers (left, top, right, bottom) in photo pixels, got {box!r}.")
    if not all(math.isfinite(v) for v in values):
        raise AlignError(f"box must be finite numbers, got {box!r}.")
    l, t, r, b = values
    if r - l < MIN_BOX or b - t < MIN_BOX:
        raise AlignError(f"box ({l:g}, {t:g}, {r:g}, {b:g}) is {r - l:g}x{b - t:g} px: it must be at least "
                         f"{MIN_BOX}x{MIN_BOX} px, with right > left and bottom > top.")
    if r <= 0 or b <= 0 or l >= W or t >= H:
        raise AlignError(f"box ({l:g}, {t:g}, {r:g}, {b:g}) lies outside the {W}x{H} photo.")
    if max(r - l, b - t) > 4 * max(W, H):
        raise AlignError(f"box ({l:g}, {t:g}, {r:g}, {b:g}) is more than 4 times the size of the {W}x{H} photo.")
    return l, t, r, b


# ------------------------------------------------------------------------------------------ detection
_CASCADES: list[tuple[object, threading.Lock]] = []
_CASCADES_LOCK = threading.Lock()


def _cascades() -> list[tuple[object, threading.Lock]]:
    """The two OpenCV cascades, loaded once. A CascadeClassifier keeps scratch buffers between calls, so each
    has a lock (threads of the app share them)."""
    with _CASCADES_LOCK:
        if not _CASCADES:
            try:
                import cv2   # lazily: align_face and box-only users never need it
                make, folder = cv2.CascadeClassifier, cv2.data.haarcascades
            except (ImportError, AttributeError) as e:
                raise ModuleNotFoundError(
                    "Finding cat faces needs OpenCV with its Haar cascades: pip install opencv-contrib-python "
                    "(mediapipe's OpenCV). Or give the cat's head as a box (box=(l, t, r, b)).") from e
            loaded = []
            for name in CASCADES:
                path = os.path.join(folder, name)
                classifier = make(path)
                if classifier.empty():
                    raise FileNotFoundError(f"OpenCV's cat-face cascade {path} is missing or unreadable: "
                                            "reinstall opencv-contrib-python, or give the cat's head as a box.")
                loaded.append((classifier, threading.Lock()))
            _CASCADES.extend(loaded)
        return list(_CASCADES)


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def cascade_boxes(image: Image.Image) -> list[tuple[int, tuple[float, float, float, float]]]:
    """Every raw detection, as (pass number, box in source px): both cascades at each of DETECT_SIDES."""
    W, H = image.size
    gray = image.convert("L")
    found = []
    for i, side in enumerate(DETECT_SIDES):
        s = side / max(W, H)
        w, h = max(1, round(W * s)), max(1, round(H * s))
        # PIL's grayscale and resampling are integer arithmetic: the same bytes on every CPU, so the cascades
        # (exact integer integral images, then per-window sums in OpenCV's plain C++) see the same input on
        # every machine. BOX (area averaging) to shrink, like OpenCV's INTER_AREA; BICUBIC to enlarge.
        small = np.asarray(gray.resize((w, h), Image.BOX if s < 1 else Image.BICUBIC))
        pad = round(DETECT_PAD * side)
        small = np.pad(small, pad)          # black border, see DETECT_PAD
        least = max(24, round(MIN_FACE * min(w, h)))
        for j, (classifier, lock) in enumerate(_cascades()):
            with lock:
                boxes = classifier.detectMultiScale(small, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
                                                    minSize=(least, least))
            for x, y, bw, bh in np.asarray(boxes).reshape(-1, 4).tolist():
                found.append((2 * i + j, ((x - pad) / s, (y - pad) / s, (x - pad + bw) / s, (y - pad + bh) / s)))
    return found


def merge_boxes(found: list) -> list[tuple[float, float, float, float]]:
    """One box per face: the passes' boxes of one face (IoU >= MERGE_IOU with its largest box) are averaged, and
    kept when MIN_VOTES passes found it. The cascades also fire on parts of a face (the nose, an eye) at scales
    where the whole face does not fit: a kept box inside a larger kept face and less than half as wide is one."""
    groups: list[list] = []
    # Ties in area (one scale) are ordered by pass and box: OpenCV may return them in any order.
    for n, b in sorted(found, key=lambda f: ((f[1][2] - f[1][0]) * (f[1][3] - f[1][1]), -f[0], f[1]), reverse=True):
        for g in groups:
            if box_iou(b, g[0][1]) >= MERGE_IOU:
                g.append((n, b))
                break
        else:
            groups.append([(n, b)])
    faces = [tuple(float(v) for v in np.mean([b for _, b in g], axis=0))
             for g in groups if len({n for n, _ in g}) >= MIN_VOTES]
    kept: list[tuple[float, float, float, float]] = []
    for f in sorted(faces, key=lambda f: f[2] - f[0], reverse=True):
        if not any(_inside(_centre(f), k) and f[2] - f[0] < PART * (k[2] - k[0]) for k in kept):
            kept.append(f)
    return kept


def _human_faces(image: Image.Image, landmarker_model, tiled: bool | None = False):
    """Human face boxes (mediapipe), or None when the landmarker model is not installed: then nothing is checked.
    An explicit landmarker_model that does not exist still raises. tiled=False: the whole photo only, enough for
    the veto (a human face mistaken for a cat's is as large as the cat faces the cascades find); tiled=None also
    searches tiles when the whole photo gives none, for the hint (small faces of a group photo)."""
    try:
        model = find_landmarker(landmarker_model)
    except LandmarkerModelMissing:
        if landmarker_model is not None:
            raise
        log.warning("no face landmarker model (see goae.landmarker): cat detections are not checked against "
                    "human faces, and a human portrait is not recognised as one")
        return None
    return [f.box for f in find_faces(image, model, tiled=tiled)]


def detect_cats(photo: Photo, *, max_faces: int = MAX_FACES,
                landmarker_model: str | os.PathLike | None = None) -> list[tuple[float, float, float, float]]:
    """Cat face boxes (l, t, r, b, source px), left to right, at most max_faces (the largest). Boxes on a human
    face (one holds the other's centre) are dropped when mediapipe's face landmarker model is installed."""
    return _detect(load_image(photo), check_max_faces(max_faces), landmarker_model)[0]


def _detect(image: Image.Image, max_faces: int, landmarker_model, humans=None):
    """(cat boxes left to right, capped; how many before the cap); `humans` may be given to reuse a search."""
    cats = merge_boxes(cascade_boxes(image))
    if cats:
        humans = _human_faces(image, landmarker_model) if humans is None else humans
        if humans:   # the cat cascades fire on human faces (measured: 7 of 9 FFHQ-style portraits, obama.jpg)
            cats = [c for c in cats if not any(_inside(_centre(h), c) or _inside(_centre(c), h) for h in humans)]
    found = len(cats)
    if found > max_faces:
        cats = sorted(cats, key=lambda c: (c[2] - c[0]) * (c[3] - c[1]), reverse=True)[:max_faces]
        log.warning("found %d cat faces, kept the %d largest; pass a higher max_faces to choose among them all",
                    found, max_faces)
    return sorted(cats, key=lambda c: _centre(c)[0]), found


# ------------------------------------------------------------------------------------------ the crop
def cat_crop_box(face_box, *, given: bool = False) -> tuple[float, float, float, float]:
    """The square source region of the AFHQ-style crop: from a detected face box (DETECTED_SCALE, raised by
    DETECTED_SHIFT) or from a head box the user gave (BOX_SCALE, centred)."""
    l, t, r, b = (float(v) for v in face_box)
    side = max(r - l, b - t)
    cx, cy = (l + r) / 2, (t + b) / 2
    if given:
        half = BOX_SCALE * side / 2
    else:
        half = DETECTED_SCALE * side / 2
        cy -= DETECTED_SHIFT * side
    return cx - half, cy - half, cx + half, cy + half


def crop_cat(image: Image.Image, box, size: int = OUTPUT_SIZE) -> Image.Image:
    """The source region `box` (l, t, r, b floats, square for an undistorted crop, may pass the photo's edges)
    -> size x size RGB, LANCZOS.

    Only the part of the photo inside the box is resampled, so memory stays bounded by the photo however far the
    box reaches; the rest of the output repeats that part's edge pixels, blurred (see PAD_BLUR). A box inside
    the photo gives exactly PIL's image.resize((size, size), LANCZOS, box=box)."""
    l, t, r, b = (float(v) for v in box)
    W, H = image.size
    if not (r > l and b > t and r > 0 and b > 0 and l < W and t < H):
        raise AlignError(f"crop box ({l:g}, {t:g}, {r:g}, {b:g}) is empty or outside the {W}x{H} photo.")
    sx, sy = size / (r - l), size / (b - t)
    # Output pixels covered by the photo (rounded to whole pixels), and the source rectangle they map to.
    u0, v0 = max(0, round(-l * sx)), max(0, round(-t * sy))
    u1, v1 = min(size, round((W - l) * sx)), min(size, round((H - t) * sy))
    u1, v1 = max(u1, u0 + 1), max(v1, v0 + 1)
    src = (l + u0 / sx, t + v0 / sy, l + u1 / sx, t + v1 / sy)
    # The rounding may put that rectangle up to half an output pixel past the photo, and LANCZOS reads 3 output
    # pixels' worth around it: cut the photo with that margin, made of repeated edge pixels past the photo.
    m = math.ceil(3 * max(1.0, 1 / sx, 1 / sy)) + 2
    x0, y0 = math.floor(src[0]) - m, math.floor(src[1]) - m
    x1, y1 = math.ceil(src[2]) + m, math.ceil(src[3]) + m
    a = np.asarray(image)
    region = a[np.ix_(np.clip(np.arange(y0, y1), 0, H - 1), np.clip(np.arange(x0, x1), 0, W - 1))]
    part = Image.fromarray(region).resize((u1 - u0, v1 - v0), Image.LANCZOS,
                                          box=(src[0] - x0, src[1] - y0, src[2] - x0, src[3] - y0))
    if (u0, v0, u1, v1) == (0, 0, size, size):
        return part
    # Outside the photo: repeat the edge pixels of the resampled part, then blend in a blurred copy by distance.
    p = np.asarray(part)
    us, vs = np.arange(size), np.arange(size)
    out = p[np.ix_(np.clip(vs - v0, 0, v1 - v0 - 1), np.clip(us - u0, 0, u1 - u0 - 1))]
    blurred = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(PAD_BLUR)), np.float32)
    du = np.maximum(u0 - us - 0.5, us + 0.5 - u1).clip(0)       # distance outside the photo, output px
    dv = np.maximum(v0 - vs - 0.5, vs + 0.5 - v1).clip(0)
    weight = np.clip(np.maximum(du[None, :], dv[:, None]) / PAD_RAMP, 0, 1)[..., None]
    mixed = out * (1 - weight) + blurred * weight
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------ align_cat
def _no_cat(image: Image.Image, humans) -> NoCatError:
    W, H = image.size
    if humans:
        return NoCatError(
            f"No cat face found in the photo ({W}x{H}), but it has a human face: it looks like a human portrait. "
            "Use the human domain for people. For a cat, give a box around the cat's head, ears to chin "
            "(--box l,t,r,b on the command line, the Cat options box in the app).")
    return NoCatError(
        f"No cat face found in the photo ({W}x{H}). Give a box around the cat's head, ears to chin "
        "(--box l,t,r,b on the command line, the Cat options box in the app), or use a closer, frontal photo of the cat.")


def _choose(faces, face_index, found: int, max_faces: int) -> int:
    if face_index is None:
        return max(range(len(faces)), key=lambda i: (faces[i][2] - faces[i][0]) * (faces[i][3] - faces[i][1]))
    if isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)) \
            or not 0 <= face_index < len(faces):
        more = (f" The photo has more cat faces than max_faces={max_faces}: pass a higher max_faces to choose "
                "among them." if found > len(faces) else "")
        raise FaceIndexError(f"face_index {face_index!r} is not valid: found {len(faces)} cat face(s), "
                             f"choose 0..{len(faces) - 1} (ordered left to right) or None for the largest.{more}")
    return int(face_index)


def align_cat(photo: Photo, box=None, face_index: int | None = None, *, yaw: float = 0.0, pitch: float = 0.0,
              aligned: bool | None = None, max_faces: int = MAX_FACES,
              landmarker_model: str | os.PathLike | None = None) -> AlignedCat:
    """Cat photo (path, bytes, PIL image or numpy array) -> AFHQ-style 512 crop + the AFHQ camera at yaw/pitch.

    box        (l, t, r, b) source px around the cat's head, ears to chin: used instead of detection.
    face_index which detected cat (0-based, left to right); None: the largest. Not with box=.
    yaw, pitch degrees of the camera (|yaw| <= 90, |pitch| <= 60); the camera is never estimated for cats.
    aligned    True: the photo is an AFHQ crop already (must be 512x512), used as is. False: always detect.
               None: a 512x512 photo is used as is unless a detected cat face puts the crop elsewhere.
    Human faces (mediapipe; skipped when its model is not installed) veto cat detections on them and turn
    "no cat" into a hint to use the human domain. Raises a subclass of AlignError with a readable message.
    """
    yaw, pitch = _check_angles(yaw, pitch)
    max_faces = check_max_faces(max_faces)
    if aligned not in (None, True, False):
        raise AlignError(f"aligned must be True, False or None (decide from the photo), got {aligned!r}.")
    if box is not None and aligned:
        raise AlignError("box= crops the photo, aligned=True takes it as it is: give one or the other.")
    if box is not None and face_index is not None:
        raise AlignError("face_index chooses among detected cat faces; with box= nothing is detected: "
                         "give one or the other.")
    image = load_image(photo)
    size = image.size
    camera = camera_label_degrees(yaw, pitch, lookat=AFHQ_LABEL_LOOKAT).reshape(25).numpy().astype(np.float32)
    square = size == (OUTPUT_SIZE, OUTPUT_SIZE)
    frame = (0.0, 0.0, float(OUTPUT_SIZE), float(OUTPUT_SIZE))

    def result(crop, region, face_box, faces=(), index=None, found=0, detector="cascade"):
        return AlignedCat(image=crop, camera=camera, box=tuple(float(v) for v in region), face_box=face_box,
                          faces=list(faces), face_index=index, faces_found=found, source_size=size,
                          detector=detector, yaw=yaw, pitch=pitch)

    if box is not None:
        face_box = _check_box(box, size)
        region = cat_crop_box(face_box, given=True)
        return result(crop_cat(image, region), region, face_box, detector="user box")
    if aligned:
        if not square:
            raise AlignError(f"aligned=True takes an AFHQ crop of {OUTPUT_SIZE}x{OUTPUT_SIZE} as it is; this photo "
                             f"is {size[0]}x{size[1]}. Use aligned=None or False to find and crop the cat.")
        return result(image, frame, None, detector="as given")

    humans = None
    if aligned is None and square:
        # Looks up human faces once, for the veto and for a 512x512 human portrait (not a cat taken as is).
        humans = _human_faces(image, landmarker_model)
    faces, found = _detect(image, max_faces, landmarker_model, humans)
    if not faces:
        if aligned is None and square and not humans:
            return result(image, frame, None, detector="as given")
        if not humans:   # not looked up yet, or none in the whole photo: also search tiles for small faces
            humans = _human_faces(image, landmarker_model, tiled=None)
        raise _no_cat(image, humans)
    index = _choose(faces, face_index, found, max_faces)
    region = cat_crop_box(faces[index])
    if aligned is None and square and box_iou(region, frame) >= AGREE_IOU:
        # the detection puts the crop where it already is: an AFHQ crop, used as is (no resampling)
        return result(image, frame, faces[index], faces, index, found, detector="as given")
    return result(crop_cat(image, region), region, faces[index], faces, index, found)
