"""What the app's steps return (goae.app.service): named values that the UI shows by name."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from goae.app.model import ViewFiles
from goae.app.state import Session


@dataclass
class Aligned:
    session: Session
    image: np.ndarray | None = None      # the aligned 512x512 crop (None: no photo)
    camera_text: str = ""                # the camera and which face, in Markdown
    choices: list[tuple[str, int]] | None = None  # the faces to choose from: (label, index)
    face_index: int | None = None
    several_faces: bool = False          # whether to offer the choice
    path: str | None = None              # aligned.png


@dataclass
class Inverted:
    session: Session
    reconstruction: np.ndarray
    reconstruction_path: str
    latent_path: str                     # the W+ code (.safetensors)
    status: str
    view: ViewFiles


@dataclass
class Shown:
    """A full render of the view (None before any inversion: the sliders just move)."""
    session: Session | None
    view: ViewFiles | None = None


@dataclass
class Preview:
    """The quick preview while a slider moves (None: nothing to show, or a stale preview)."""
    session: Session | None
    image: np.ndarray | None = None
    depth: np.ndarray | None = None


@dataclass
class Video:
    session: Session
    path: str


@dataclass
class Mesh:
    session: Session
    glb: str
    ply: str
    text: str


@dataclass
class Edited:
    session: Session
    image: np.ndarray  # at the photo's camera
    path: str
    view: ViewFiles


@dataclass
class ApiView:
    view: np.ndarray
    depth: str                  # the depth picture's file
    edited: np.ndarray | None   # at the photo's camera, when edits were given
    camera: dict


@dataclass
class ApiInversion:
    aligned: np.ndarray
    camera: dict
    reconstruction: np.ndarray
    views: list[tuple[str, str]]  # (file, caption)
    files: list[str]
