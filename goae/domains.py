"""Domains: what kind of photo a pipeline inverts. The paper shows two, each on its own EG3D model.

  human  EG3D FFHQ-512 (ffhqrebalanced512-128.pkl): portraits, aligned by goae.align.align_face
         (mediapipe landmarks, the official crop), camera estimated from the head pose.
  cat    EG3D AFHQv2 cats (afhqcats512-128.pkl): cat faces, aligned by goae.align.align_cat (a cat-face
         detector or a box the user gives, AFHQ-style square crop). The camera is not estimated: it is
         the AFHQ frontal one unless the user sets yaw/pitch.

The Domain record says what each one supports (aligner, box, camera, clips, official directions), so the
CLI, the app and goae.video read a field instead of testing the name or `camera_estimated`.

A pipeline folder records its domain in model_index.json (`domain`, default "human" for folders made
before cats existed); edit directions record theirs in their file metadata (or, for the official
files, by the `cat_` name prefix), so an app offers cat directions only on cat models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from goae import align
from goae.align.cat import AFHQ_LABEL_LOOKAT
from goae.camera import LOOKAT, camera_label_degrees


class DomainError(ValueError):
    """Unknown domain name, or a pipeline/aligner/direction of another domain."""


@dataclass(frozen=True)
class Domain:
    name: str                       # "human" | "cat": the value stored in folders and metadata
    title: str                      # what a person reads in the app
    dataset: str                    # the EG3D training set of the generator
    generator_file: str             # the official EG3D pickle of this domain
    # Where the training labels' cameras look (the input camera of an inversion is built like them).
    # FFHQ labels look at EG3D's pivot (0, 0, 0.2); AFHQ labels sit at -2.7 * forward: they look at the origin.
    label_lookat: tuple[float, float, float]
    # Default orbit centre for new views when a generator does not carry `avg_camera_pivot`.
    pivot: tuple[float, float, float]
    camera_estimated: bool          # a fact: the aligner estimates the camera from the photo (bundles record it)
    direction_prefix: str | None    # official direction files of this domain are named <prefix>*.npy
    # What the domain supports. Callers read these instead of testing the name or `camera_estimated`.
    face_noun: str                  # what one found face is called on screen ("Face", "Cat face")
    aligner: str                    # its function in goae.align (looked up per call: align_face, align_cat)
    accepts_box: bool               # a box the user gives may replace the face detector
    accepts_camera: bool            # the user may set the photo's camera (yaw, pitch in degrees)
    supports_clips: bool            # goae.video can track its faces through a clip (human face landmarks)
    preset: str                     # goae.presets name of the released architecture
    official_directions: tuple[str, ...]   # the GOAE authors' edit directions for this model (example/ws_edit)

    def photo_options_error(self, box=None, camera=None) -> str | None:
        """The one message for a box or a camera (anything but None is "given") that this domain does not take;
        None when all is well. It names every photo option the domain refuses."""
        if not ((box is not None and not self.accepts_box) or (camera is not None and not self.accepts_camera)):
            return None
        refused = [n for n, ok in (("box", self.accepts_box), ("camera", self.accepts_camera)) if not ok]
        takers = [d.name for d in DOMAINS.values() if d.accepts_box or d.accepts_camera]
        return (f"{' and '.join(refused)} {'are' if len(refused) > 1 else 'is'} for {' or '.join(takers)} photos; "
                f"these weights invert {self.title.lower()}s, whose crop and camera come from the "
                f"{self.face_noun.lower()} landmarks")

    def align(self, photo, face_index: int | None = None, *, box: Sequence[float] | None = None,
              yaw: float | None = None, pitch: float | None = None, **options):
        """photo -> aligned 512x512 crop + camera with this domain's aligner (goae.align.align_face for
        humans, goae.align.align_cat for cats). `box` (l, t, r, b source px) and `yaw`/`pitch` (degrees) only
        where the domain accepts them (cats, whose camera is not estimated; a portrait's comes from its face)."""
        problem = self.photo_options_error(box, None if yaw is None and pitch is None else (yaw, pitch))
        if problem:
            raise DomainError(problem)
        if self.accepts_box:
            options["box"] = box
        if self.accepts_camera:
            options.update(yaw=yaw or 0.0, pitch=pitch or 0.0)
        return getattr(align, self.aligner)(photo, face_index=face_index, **options)

    def input_camera(self, yaw_degrees: float = 0.0, pitch_degrees: float = 0.0) -> torch.Tensor:
        """[1, 25] label of a camera at (yaw, pitch) degrees from frontal, radius 2.7, built like this
        domain's training labels (what the encoder saw)."""
        return camera_label_degrees(yaw_degrees, pitch_degrees, lookat=self.label_lookat)


HUMAN = Domain("human", "Human portrait", "FFHQ", "ffhqrebalanced512-128.pkl", label_lookat=LOOKAT, pivot=LOOKAT,
               camera_estimated=True, direction_prefix=None, face_noun="Face", aligner="align_face",
               accepts_box=False, accepts_camera=False, supports_clips=True, preset="ffhq",
               official_directions=("age", "anger", "glass"))
CAT = Domain("cat", "Cat face", "AFHQv2 cats", "afhqcats512-128.pkl", label_lookat=AFHQ_LABEL_LOOKAT,
             pivot=(0.0, 0.0, -0.06), camera_estimated=False, direction_prefix="cat_", face_noun="Cat face",
             aligner="align_cat", accepts_box=True, accepts_camera=True, supports_clips=False, preset="afhq",
             official_directions=("cat_black", "cat_smalleyes"))
DOMAINS: dict[str, Domain] = {d.name: d for d in (HUMAN, CAT)}
DEFAULT_DOMAIN = "human"


def get_domain(name: str | Domain | None) -> Domain:
    """A Domain by name ('human', 'cat'); None -> human (folders written before domains existed)."""
    if isinstance(name, Domain):
        return name
    if name is None:
        return DOMAINS[DEFAULT_DOMAIN]
    if name not in DOMAINS:
        raise DomainError(f"unknown domain {name!r}; choose from {sorted(DOMAINS)}")
    return DOMAINS[name]


def domain_of_direction_name(stem: str) -> str:
    """The domain an official-style direction file name implies: `cat_*` -> cat, anything else -> human."""
    for d in DOMAINS.values():
        if d.direction_prefix and stem.startswith(d.direction_prefix):
            return d.name
    return DEFAULT_DOMAIN


def domain_of_pivot(pivot) -> Domain | None:
    """The domain whose released generator has this avg_camera_pivot (3 numbers), or None (another pivot, or
    not 3 numbers): how a generator without a recorded domain can still give itself away."""
    if not (isinstance(pivot, (list, tuple)) and len(pivot) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pivot)):
        return None
    return next((d for d in DOMAINS.values() if all(abs(float(a) - b) < 1e-6 for a, b in zip(pivot, d.pivot))), None)


def pivot_of(generator, domain: str | Domain | None = None) -> tuple[float, float, float]:
    """Orbit centre for new views: the generator's own `avg_camera_pivot` (EG3D's visualiser uses it),
    else the domain's."""
    p = getattr(generator, "rendering_kwargs", {}).get("avg_camera_pivot")
    if isinstance(p, Sequence) and len(p) == 3:
        return tuple(float(v) for v in p)
    return get_domain(domain).pivot
