"""`goae invert PHOTO... --out DIR` (also `python -m goae`).

One folder per photo, written atomically: everything goes to a hidden temporary folder beside the
final one and is renamed into place when the photo is done, so an interrupted run never leaves a
half-written result. A photo that fails (no face, unreadable file) prints one clear line and the
batch goes on; the exit code is 1 if any photo failed, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from goae.runtime import tune_cpu_allocator
from goae.io import atomic_dir


EDIT_ALIASES = {"glasses": "glass", "eyeglasses": "glass"}  # the official file is glass.npy


def _parse_edits(text: str | None) -> dict[str, float]:
    edits: dict[str, float] = {}
    if not text:
        return edits
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--edit expects name=strength[,name=strength...], got {item!r}")
        try:
            edits[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"edit strength for {name!r} is not a number: {value!r}") from None
    return edits


def _parse_views(text: str | None) -> list[tuple[float, float]]:
    """'yaw:pitch,yaw:pitch' in degrees -> [(yaw, pitch)] ('-30:0,0:0,30:0')."""
    if not text:
        return []
    views = []
    for item in text.split(","):
        yaw, _, pitch = item.partition(":")
        try:
            views.append((float(yaw), float(pitch or 0)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--views expects yaw:pitch in degrees, got {item!r}") from None
    return views


def _parse_level(text: str) -> float | str:
    """--mesh-level: a number or 'auto'."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mesh-level expects a number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="goae", description="GOAE 3D GAN inversion of portrait photos.")
    sub = p.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("invert", help="invert photos into EG3D and export views, video, depth, mesh, edits")
    inv.add_argument("photos", nargs="+", help="photo files (any size; the face is found and aligned)")
    inv.add_argument("--out", required=True, help="output folder (one sub-folder per photo)")
    inv.add_argument("--weights", default=None,
                     help="pipeline folder or Hub repo id (default: $GOAE_WEIGHTS); 'random' = full-size "
                          "architecture on seeded random weights, for trying the tool without weights")
    inv.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    inv.add_argument("--views", type=_parse_views, default=None,
                     help="extra views, 'yaw:pitch' in degrees, comma separated (e.g. --views=-30:0,30:0,0:15)")
    inv.add_argument("--video", action="store_true", help="write a turntable MP4")
    inv.add_argument("--frames", type=int, default=120, help="turntable frame count")
    inv.add_argument("--fps", type=int, default=30, help="turntable frames per second")
    inv.add_argument("--mesh", action="store_true", help="write mesh.ply and mesh.glb")
    inv.add_argument("--mesh-resolution", type=int, default=256, help="marching-cubes grid size")
    inv.add_argument("--mesh-level", type=_parse_level, default="auto",
                     help="density iso-level of the mesh; 'auto' (default) = EG3D's 10 where the density reaches "
                          "it, else the densest 10%% of the grid (random weights)")
    inv.add_argument("--edit", type=_parse_edits, default=None, help="semantic edits, e.g. age=2,glass=1")
    inv.add_argument("--directions", default=None,
                     help="folder of edit direction files (.npy/.safetensors; default $GOAE_DIRECTIONS)")
    inv.add_argument("--face-index", type=int, default=None, help="which face when several (default: largest)")
    inv.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    inv.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16", "fp16"),
                     help="fp32 (default: the parity path) or the fast path: auto = bf16 where the device has "
                          "it, bf16, fp16 (CUDA)")
    inv.add_argument("--overwrite", action="store_true", help="replace existing result folders")
    return p


def _write_png(path: Path, image_chw: torch.Tensor) -> None:
    from PIL import Image
    from goae.export import to_uint8
    Image.fromarray(to_uint8(image_chw[None])[0]).save(path)


def invert_one(pipe, photo: Path, out_root: Path, args, directions) -> Path:
    """Align, invert and export one photo into out_root/<stem>/ atomically. Returns the folder."""
    from safetensors.torch import save_file
    from goae import export
    from goae.align import align_face
    from goae.camera import camera_label, yaw_pitch_from_label
    from goae.edit import combine

    t0 = time.perf_counter()
    face = align_face(photo, face_index=args.face_index)
    final_dir = out_root / photo.stem
    with atomic_dir(final_dir, overwrite=args.overwrite) as tmp:
        files: dict[str, str] = {}
        face.image.save(tmp / "aligned.png")
        files["aligned"] = "aligned.png"
        result = pipe(face.image, face.camera)
        _write_png(tmp / "reconstruction.png", result.image[0])
        files["reconstruction"] = "reconstruction.png"
        export.save_depth(result.image_depth[0], tmp / "depth16.png", tmp / "depth_preview.png")
        files["depth16"], files["depth_preview"] = "depth16.png", "depth_preview.png"
        save_file({"ws": result.ws[0].cpu().contiguous(), "camera": result.camera[0].cpu().contiguous()},
                  str(tmp / "ws.safetensors"))
        files["ws"] = "ws.safetensors"
        for yaw, pitch in args.views or []:
            cam = camera_label(yaw=torch.tensor([yaw]).deg2rad(), pitch=torch.tensor([pitch]).deg2rad())
            name = f"view_yaw{yaw:+g}_pitch{pitch:+g}.png"
            _write_png(tmp / name, pipe.render_view(result, cam)["image"][0])
            files.setdefault("views", []).append(name)
        if args.video:
            cams = export.orbit_cameras(args.frames)
            frames = export.render_views(pipe, result, cams)
            export.write_video(frames, tmp / "turntable.mp4", fps=args.fps)
            files["video"] = "turntable.mp4"
        mesh_error = None
        if args.mesh:
            try:
                v, f, col = export.extract_mesh(pipe.generator, result.planes[:1], resolution=args.mesh_resolution,
                                                    level=args.mesh_level)
            except export.ExportError as e:  # e.g. no surface at the density level (random weights)
                mesh_error = str(e)
                tqdm.write(f"{photo}: warning: no mesh: {e}", file=sys.stderr)
            else:
                export.save_ply(tmp / "mesh.ply", v, f, col)
                export.save_glb(tmp / "mesh.glb", v, f, col)
                files["mesh_ply"], files["mesh_glb"] = "mesh.ply", "mesh.glb"
        if args.edit:
            offset = combine(directions, args.edit)
            edited = pipe.edit(result, offset)
            name = "edit_" + "_".join(f"{k}{v:+g}" for k, v in args.edit.items()) + ".png"
            _write_png(tmp / name, edited.image[0])
            files["edit"] = name
        yaw, pitch = yaw_pitch_from_label(result.camera[:1])
        meta = {
            "photo": str(photo), "files": files, "face_index": face.face_index, "faces_found": len(face.faces),
            "face_box": [float(x) for x in face.box], "camera": [float(x) for x in face.camera],
            "camera_yaw_deg": float(torch.rad2deg(yaw)[0]), "camera_pitch_deg": float(torch.rad2deg(pitch)[0]),
            "weights": pipe.weights_label, "edits": args.edit or {}, "seconds": round(time.perf_counter() - t0, 3),
        }
        if mesh_error:
            meta["mesh_error"] = mesh_error
        (tmp / "result.json").write_text(json.dumps(meta, indent=1))
    return final_dir


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from goae.align import AlignError
    from goae.pipeline import load_pipeline

    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("GOAE_TUNE_ALLOCATOR", "1") != "0":
        tune_cpu_allocator()  # keep render buffers mapped between calls: 10-15% faster on a CPU
    try:
        pipe = load_pipeline(args.weights, seed=args.seed, device=device)
        if args.precision != "fp32":
            pipe.enable_fast_path(args.precision)
    except Exception as e:  # weights missing / unreadable: one clear line, no traceback
        print(f"goae: error: {e}", file=sys.stderr)
        return 2
    if pipe.weights_label.startswith("random"):
        print("goae: NOTE: running on RANDOM weights (no trained checkpoint): outputs are not faces.",
              file=sys.stderr)
    directions = {}
    if args.edit:
        from goae.edit import DirectionError, load_directions
        folder = args.directions or os.environ.get("GOAE_DIRECTIONS")
        if not folder:
            print("goae: error: --edit needs edit directions: pass --directions FOLDER or set $GOAE_DIRECTIONS "
                  "(the official ones are age.npy, anger.npy, glass.npy from the GOAE repository)", file=sys.stderr)
            return 2
        try:
            directions = load_directions(folder, num_ws=pipe.generator.num_ws, w_dim=pipe.generator.w_dim)
        except (DirectionError, OSError) as e:
            print(f"goae: error: {e}", file=sys.stderr)
            return 2
        args.edit = {EDIT_ALIASES.get(k, k): v for k, v in args.edit.items()}
        unknown = sorted(set(args.edit) - set(directions))
        if unknown:
            print(f"goae: error: unknown edit(s) {unknown}; available: {sorted(directions)}", file=sys.stderr)
            return 2
    failures = 0
    for photo in tqdm([Path(p) for p in args.photos], desc="photos", unit="photo", file=sys.stderr):
        try:
            folder = invert_one(pipe, photo, out_root, args, directions)
            tqdm.write(f"{photo}: ok -> {folder}", file=sys.stderr)
        except (AlignError, FileExistsError, OSError, ValueError) as e:  # ValueError covers goae's input errors
            failures += 1
            tqdm.write(f"{photo}: error: {e}", file=sys.stderr)
    print(f"{len(args.photos) - failures} succeeded, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
