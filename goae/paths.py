"""Where goae keeps what it fetches and builds: one cache root that every part honours.

  <root>                      $GOAE_HOME, else ($XDG_CACHE_HOME or ~/.cache)/goae
  <root>/weights/goae-ffhq/   the pipeline folder `goae download` converts the official weights into
  <root>/downloads/           the official files, their .part files and SHA256SUMS
  <root>/downloads/ws_edit/   the official edit directions
  <root>/face_landmarker.task mediapipe's face landmarker model (goae.landmarker)
  <root>/torch_extensions/    the compiled kernels (goae.models.kernels)

Standard library only: the pipeline, the app and the aligner read it without the downloader.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "GOAE_HOME"
PIPELINE_NAME = "goae-ffhq"
DIRECTIONS_DIR = "ws_edit"  # <downloads>/ws_edit/, and <mirror>/ws_edit/ with a mirror


def cache_root() -> Path:
    """$GOAE_HOME, else ($XDG_CACHE_HOME or ~/.cache)/goae."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "goae"


def weights_folder() -> Path:
    """Where `goae download` puts the converted pipeline (complete or not)."""
    return cache_root() / "weights" / PIPELINE_NAME


def downloads_folder() -> Path:
    """Where the official files (and their .part files and SHA256SUMS) are kept."""
    return cache_root() / "downloads"


def default_weights_folder() -> Path | None:
    """The downloaded pipeline folder if it is complete (model_index.json; it is published atomically),
    else None. Cheap: reads no weights."""
    folder = weights_folder()
    return folder if (folder / "model_index.json").is_file() else None
