"""`goae invert PHOTO... --out DIR` (also `python -m goae`): a thin face over the library.

Each photo gets its own folder, written by `goae.export.save_inversion` (atomically: an interrupted
run never leaves a half-written result) and named by `goae.export.output_folder` (never outside --out
or --out itself; `face.avif` and `face.webp` get `face` and `face-2`). A photo that fails for any
reason (no face, unreadable file, damaged weights, full disk) prints one line and the batch goes on;
the exit code is 1 if any photo failed, 2 for bad arguments or set-up (weights, device, directions).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from goae.export.errors import ExportError, finite, whole


def _number(what: str, low=None, high=None, integer: bool = False):
    """An argparse type: a finite number (NaN, inf and text are refused) in [low, high]."""
    def parse(text: str):
        try:
            return (whole if integer else finite)(text, what, low, high)
        except ExportError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _parse_edits(text: str) -> dict[str, float]:
    """'age=2,glasses=-1' -> {'age': 2.0, 'glasses': -1.0} (finite strengths only)."""
    edits: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--edit expects name=strength[,name=strength...], got {item!r}")
        edits[name.strip()] = _number(f"edit strength of {name.strip()!r}")(value)
    return edits


def _parse_views(text: str) -> list[tuple[float, float]]:
    """'yaw:pitch,yaw:pitch' in degrees -> [(yaw, pitch)] ('-30:0,0:0,30:0'); pitch defaults to 0."""
    views = []
    for item in text.split(","):
        yaw, _, pitch = item.partition(":")
        views.append((_number("view yaw (degrees)", -180, 180)(yaw),
                      _number("view pitch (degrees)", -90, 90)(pitch or "0")))
    return views


def _parse_level(text: str) -> float | str:
    """--mesh-level: a finite number or 'auto'."""
    if text == "auto":
        return text
    try:
        return finite(text, "--mesh-level")
    except ExportError:
        raise argparse.ArgumentTypeError(f"--mesh-level expects a finite number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="goae", description="GOAE 3D GAN inversion of portrait photos.")
    sub = p.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("invert", help="invert photos into EG3D and export views, video, depth, mesh, edits")
    inv.add_argument("photos", nargs="+", help="photo files (any size; the face is found and aligned)")
    inv.add_argument("--out", required=True, help="output folder (one sub-folder per photo)")
    inv.add_argument("--weights", default=None,
                     help="pipeline folder or Hub repo id (default: $GOAE_WEIGHTS); 'random' = full-size "
                          "architecture on seeded random weights, for trying the tool without weights")
    inv.add_argument("--seed", type=_number("--seed", 0, 2**63 - 1, integer=True), default=0,
                     help="seed of --weights random")
    inv.add_argument("--views", type=_parse_views, default=None,
                     help="extra views, 'yaw:pitch' in degrees, comma separated (e.g. --views=-30:0,30:0,0:15)")
    inv.add_argument("--video", action="store_true", help="write a turntable MP4")
    inv.add_argument("--frames", type=_number("--frames", 1, 10000, integer=True), default=120,
                     help="turntable frame count")
    inv.add_argument("--fps", type=_number("--fps", 1, 1000), default=30, help="turntable frames per second")
    inv.add_argument("--mesh", action="store_true", help="write mesh.ply and mesh.glb")
    inv.add_argument("--mesh-resolution", type=_number("--mesh-resolution", 2, 1024, integer=True), default=256,
                     help="marching-cubes grid size")
    inv.add_argument("--mesh-level", type=_parse_level, default="auto",
                     help="density iso-level of the mesh; 'auto' (default) = EG3D's 10 where the density reaches "
                          "it, else the densest 10%% of the grid (random weights)")
    inv.add_argument("--edit", type=_parse_edits, default=None, help="semantic edits, e.g. age=2,glass=1")
    inv.add_argument("--directions", default=None,
                     help="folder of edit direction files (.npy/.safetensors; default $GOAE_DIRECTIONS)")
    inv.add_argument("--face-index", type=_number("--face-index", 0, 10000, integer=True), default=None,
                     help="which face when several (default: largest)")
    inv.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    inv.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16", "fp16"),
                     help="fp32 (default: the parity path) or the fast path: auto = bf16 where the device has "
                          "it, bf16, fp16 (CUDA)")
    inv.add_argument("--overwrite", action="store_true",
                     help="replace existing result folders (folders with a result.json, or empty ones)")
    return p


class SetupError(Exception):
    """Weights, device or directions that cannot be used: exit code 2."""


def one_line(e: BaseException) -> str:
    """A clear one-line message: input and file errors (goae's are ValueErrors) by their text, anything
    else with its type."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    elif isinstance(e, (OSError, ValueError)) and str(e):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _setup(args):
    """(pipeline, directions, export options) or SetupError."""
    from goae.edit import directions_for, random_weights, resolve_names
    from goae.export import ExportOptions, check_weights
    from goae.pipeline import load_pipeline
    from goae.runtime import setup_runtime

    try:
        device = setup_runtime(args.device or "auto")
        pipe = load_pipeline(args.weights, seed=args.seed, device=device)
        check_weights(pipe)
        if args.precision != "fp32":
            pipe.enable_fast_path(args.precision)
    except Exception as e:  # weights missing / unreadable, no such device
        raise SetupError(one_line(e)) from None
    if random_weights(pipe):
        print("goae: NOTE: running on RANDOM weights (no trained checkpoint): outputs are not faces.", file=sys.stderr)
    directions, edits = {}, {}
    if args.edit:
        folder = args.directions or os.environ.get("GOAE_DIRECTIONS")
        if not folder:
            raise SetupError("--edit needs edit directions: pass --directions FOLDER or set $GOAE_DIRECTIONS (the "
                             "official ones are age.npy, anger.npy, glass.npy from the GOAE repository)")
        directions, notes = directions_for(pipe, folder)
        try:
            edits = resolve_names(args.edit, directions, notes)
        except ValueError as e:
            raise SetupError(one_line(e)) from None
    try:
        options = ExportOptions(views=args.views or (), video_frames=args.frames if args.video else 0, fps=args.fps,
                                mesh_resolution=args.mesh_resolution if args.mesh else 0, mesh_level=args.mesh_level,
                                edits=edits)
    except ExportError as e:
        raise SetupError(one_line(e)) from None
    return pipe, directions, options


def invert_one(pipe, photo: Path, folder: Path, options, directions, face_index=None, overwrite=False) -> Path:
    """Align one photo, then invert it and write its folder (goae.export.save_inversion)."""
    from goae.align import align_face
    from goae.export import save_inversion

    face = align_face(photo, face_index=face_index)
    warn = lambda msg: tqdm.write(f"{photo}: {msg}", file=sys.stderr)  # noqa: E731
    return save_inversion(pipe, face, folder, options, directions=directions, overwrite=overwrite,
                          source=str(photo), warn=warn)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from goae.export import output_folder

    try:
        pipe, directions, options = _setup(args)
    except SetupError as e:
        print(f"goae: error: {e}", file=sys.stderr)
        return 2
    out_root = Path(args.out)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"goae: error: cannot create --out: {one_line(e)}", file=sys.stderr)
        return 2
    failures, taken = 0, set()
    for photo in tqdm([Path(p) for p in args.photos], desc="photos", unit="photo", file=sys.stderr):
        try:
            folder = output_folder(out_root, photo, taken)
            invert_one(pipe, photo, folder, options, directions, args.face_index, args.overwrite)
            tqdm.write(f"{photo}: ok -> {folder}", file=sys.stderr)
        except Exception as e:  # one bad photo costs its own result, never the batch (Ctrl-C still stops it)
            failures += 1
            tqdm.write(f"{photo}: error: {one_line(e)}", file=sys.stderr)
    print(f"{len(args.photos) - failures} succeeded, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
