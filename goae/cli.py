"""`goae invert INPUT... --out DIR` (also `python -m goae`): a thin face over the library.

Inputs are photos, clips (goae.video: MP4, MOV, WebM, ... by file suffix), folders (searched recursively,
hidden files and --out itself skipped) and globs (`'shots/**/*.jpg'`). Each input gets its own folder, written
atomically by `goae.export.save_inversion` or `goae.video.invert_video` and named by
`goae.export.output_folder` over the whole input list (never outside --out or --out itself; `face.avif` and
`face.webp` get `face` and `face-2`), so every process of a `torchrun` job names it alike.

Under torchrun (RANK / WORLD_SIZE set) each process takes every WORLD_SIZE-th input and the processes meet
once at the end (gloo, on any device) to merge their records. Every run writes `--out/manifest.jsonl`: one
line per input, in input order, with its status (ok / skipped / failed), folder and error. `--resume` skips
inputs whose folder is complete (goae.export.bundle.result_complete); a clip also resumes from its per-frame
cache.

An input that fails for any reason (no face, unreadable file, damaged weights, full disk) prints one line and
the batch goes on; the exit code is 1 if any input failed, 2 for bad arguments or set-up (weights, device,
directions). `--json` prints a summary on stdout (nothing else goes there). mediapipe's native log lines
(absl/glog, TFLite) are dropped from stderr unless --verbose.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

import goae
from goae.export.errors import ExportError, finite, whole

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".avif", ".heic", ".heif", ".gif", ".bmp",
                  ".tif", ".tiff", ".mpo")
MANIFEST = "manifest.jsonl"


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


def _parse_clip_view(text: str) -> tuple[float, float] | None:
    """--clip-view: 'orbit' (None) or one 'yaw:pitch' in degrees."""
    if text == "orbit":
        return None
    views = _parse_views(text)
    if len(views) != 1:
        raise argparse.ArgumentTypeError(f"--clip-view expects 'orbit' or one yaw:pitch, got {text!r}")
    return views[0]


def _parse_camera(text: str) -> tuple[float, float]:
    """--camera: one 'yaw:pitch' in degrees."""
    views = _parse_views(text)
    if len(views) != 1:
        raise argparse.ArgumentTypeError(f"--camera expects one yaw:pitch in degrees, got {text!r}")
    return views[0]


def _parse_box(text: str) -> tuple[float, float, float, float]:
    """--box 'left,top,right,bottom' in source pixels."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box expects left,top,right,bottom in pixels, got {text!r}")
    return tuple(_number("--box coordinate")(p) for p in parts)


def _parse_level(text: str) -> float | str:
    """--mesh-level: a finite number or 'auto'."""
    if text == "auto":
        return text
    try:
        return finite(text, "--mesh-level")
    except ExportError:
        raise argparse.ArgumentTypeError(f"--mesh-level expects a finite number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="goae", description="GOAE 3D GAN inversion of portrait photos and clips.")
    p.add_argument("--version", action="version", version=f"goae {goae.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("download", add_help=False, help="fetch and convert the official weights after you accept their "
                   "licences (goae download --help)")
    inv = sub.add_parser("invert", help="invert photos and clips into EG3D and export views, videos, depth, mesh, "
                                        "edits")
    inv.add_argument("photos", nargs="+", metavar="INPUT",
                     help="photos, clips (MP4, MOV, WebM, ...), folders (searched recursively) or globs "
                          "(quote them: 'shots/**/*.jpg')")
    inv.add_argument("--out", required=True, help="output folder (one sub-folder per input, and manifest.jsonl)")
    inv.add_argument("--weights", default=None,
                     help="pipeline folder or Hub repo id (default: $GOAE_WEIGHTS); its domain (human portraits "
                          "or cats) picks the aligner. 'random' / 'random-cat' = the full-size human / cat "
                          "architecture on seeded random weights, for trying the tool without weights "
                          "('random-small', 'random-small-cat': small ones)")
    inv.add_argument("--seed", type=_number("--seed", 0, 2**63 - 1, integer=True), default=0,
                     help="seed of --weights random")
    inv.add_argument("--views", type=_parse_views, default=None,
                     help="extra views, 'yaw:pitch' in degrees, comma separated (e.g. --views=-30:0,30:0,0:15)")
    inv.add_argument("--video", action="store_true", help="write a turntable MP4 (photos)")
    inv.add_argument("--frames", type=_number("--frames", 1, 10000, integer=True), default=120,
                     help="turntable frame count")
    inv.add_argument("--fps", type=_number("--fps", 1, 1000), default=30, help="turntable frames per second")
    inv.add_argument("--mesh", action="store_true", help="write mesh.ply and mesh.glb (photos)")
    inv.add_argument("--mesh-resolution", type=_number("--mesh-resolution", 2, 1024, integer=True), default=256,
                     help="marching-cubes grid size")
    inv.add_argument("--mesh-level", type=_parse_level, default="auto",
                     help="density iso-level of the mesh; 'auto' (default) = EG3D's 10 where the density reaches "
                          "it, else the densest 10%% of the grid (random weights)")
    inv.add_argument("--edit", type=_parse_edits, default=None, help="semantic edits, e.g. age=2,glass=1 (photos)")
    inv.add_argument("--directions", default=None,
                     help="folder of edit direction files (.npy/.safetensors; default $GOAE_DIRECTIONS)")
    inv.add_argument("--face-index", type=_number("--face-index", 0, 10000, integer=True), default=None,
                     help="which face when several, left to right (default: largest); for a clip, on its first "
                          "frame with faces")
    cat = inv.add_argument_group("cat photos (a pipeline of the cat domain)")
    cat.add_argument("--box", type=_parse_box, default=None, metavar="L,T,R,B",
                     help="the cat's head (ears to chin) in source pixels, instead of the cat-face detector; "
                          "applies to every photo given")
    cat.add_argument("--camera", type=_parse_camera, default=None, metavar="YAW:PITCH",
                     help="the photo's camera in degrees from frontal: a cat's camera is not estimated, it is the "
                          "AFHQ frontal one (0:0) unless set here")
    inv.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    inv.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16", "fp16"),
                     help="fp32 (default: the parity path) or the fast path: auto = bf16 where the device has "
                          "it, bf16, fp16 (CUDA)")
    inv.add_argument("--overwrite", action="store_true",
                     help="replace existing result folders (folders with a result.json, or empty ones)")
    inv.add_argument("--resume", action="store_true",
                     help="skip inputs whose result folder is complete (an unfinished clip always continues from its "
                          "per-frame cache)")
    inv.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    inv.add_argument("--verbose", action="store_true", help="keep mediapipe/TFLite's native log lines")
    clip = inv.add_argument_group("clips")
    clip.add_argument("--clip-view", type=_parse_clip_view, default=None, metavar="orbit|YAW:PITCH",
                      help="camera of the re-rendered clip: 'orbit' (default) or a fixed yaw:pitch in degrees")
    clip.add_argument("--orbit-seconds", type=_number("--orbit-seconds", 0.04, 3600), default=4.0,
                      help="seconds per orbit turn (default 4)")
    clip.add_argument("--side-by-side", action="store_true", help="also write input | reconstruction | view")
    clip.add_argument("--batch-size", type=_number("--batch-size", 1, 256, integer=True), default=4,
                      help="frames per inversion call (default 4)")
    clip.add_argument("--no-smooth", action="store_true",
                      help="no temporal smoothing of the crop and camera (One-Euro filter, on by default)")
    clip.add_argument("--no-audio", action="store_true", help="do not copy the clip's audio")
    clip.add_argument("--max-frames", type=_number("--max-frames", 1, 10_000_000, integer=True), default=None,
                      help="only the first N frames of each clip")
    clip.add_argument("--keep-cache", action="store_true", help="keep the per-frame cache after a clip is done")
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


def _setup(args, device=None):
    """(pipeline, directions, export options) or SetupError."""
    from goae.edit import directions_for, random_weights, resolve_names
    from goae.export import ExportOptions, check_weights
    from goae.pipeline import load_pipeline
    from goae.runtime import setup_runtime

    try:
        device = setup_runtime(device or args.device or "auto")
        pipe = load_pipeline(args.weights, seed=args.seed, device=device)
        check_weights(pipe)
        if args.precision != "fp32":
            pipe.enable_fast_path(args.precision)
    except Exception as e:  # weights missing / unreadable, no such device
        raise SetupError(one_line(e)) from None
    domain = pipe.domain
    if args.box is not None and args.face_index is not None:
        raise SetupError("--box and --face-index exclude each other: the box is the cat's head")
    if domain.camera_estimated and (args.box is not None or args.camera is not None):
        raise SetupError(f"--box and --camera are for cat photos; these weights invert {domain.title.lower()}s, whose "
                         "crop and camera come from the face landmarks")
    if random_weights(pipe):
        print("goae: NOTE: running on RANDOM weights (no trained checkpoint): outputs are not faces or cats.",
              file=sys.stderr)
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


def invert_one(pipe, photo: Path, folder: Path, options, directions, face_index=None, overwrite=False,
               box=None, camera=None) -> Path:
    """Align one photo with the aligner of the pipeline's domain (for cats: `box`, `camera` (yaw, pitch)), then
    invert it and write its folder (goae.export.save_inversion)."""
    from goae.export import save_inversion

    yaw, pitch = camera if camera is not None else (None, None)
    face = pipe.domain.align(photo, face_index=face_index, box=box, yaw=yaw, pitch=pitch)
    warn = lambda msg: tqdm.write(f"{photo}: {msg}", file=sys.stderr)  # noqa: E731
    return save_inversion(pipe, face, folder, options, directions=directions, overwrite=overwrite,
                          source=str(photo), warn=warn)


def video_options(args):
    from goae.video import SmoothingOptions, VideoOptions
    return VideoOptions(batch_size=args.batch_size, face_index=args.face_index, view=args.clip_view,
                        orbit_seconds=args.orbit_seconds, side_by_side=args.side_by_side, audio=not args.no_audio,
                        smoothing=None if args.no_smooth else SmoothingOptions(), max_frames=args.max_frames)


def invert_clip(pipe, clip: Path, folder: Path, args, rank_label: str = "") -> dict:
    """Invert one clip (goae.video.invert_video) with a progress bar (frames/s, ETA). -> extra manifest fields."""
    from goae.video import invert_video

    bar = tqdm(total=None, desc=f"{rank_label}{clip.name}", unit="frame", file=sys.stderr, leave=False,
               bar_format="{desc}: {n_fmt}/{total_fmt} frames [{elapsed}{postfix}]")

    def progress(p):
        if bar.total is None and p.total:
            bar.total = p.total
        bar.update(p.done - bar.n)
        rate = f"{p.fps:.2f} frames/s" if p.fps else "-- frames/s"
        eta = time.strftime("%H:%M:%S", time.gmtime(p.eta_s)) if p.eta_s is not None else "--"
        bar.set_postfix_str(f"{rate}, ETA {eta}" + (f", {p.cached} cached" if p.cached else ""), refresh=True)

    warn = lambda msg: tqdm.write(f"{clip}: {msg}", file=sys.stderr)  # noqa: E731
    try:
        invert_video(pipe, clip, folder, video_options(args), overwrite=args.overwrite, keep_cache=args.keep_cache,
                     progress=progress, warn=warn)
    finally:
        bar.close()
    meta = json.loads((folder / "result.json").read_text())
    return {"frames": meta["frame_count"], "frames_with_face": meta["frames_with_face"],
            "frames_from_cache": meta["frames_from_cache"]}


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class Item:
    """One input: `path` (None when an argument matched nothing), its kind, its folder, or why it failed."""
    index: int
    arg: str
    path: Path | None
    kind: str | None           # "photo" / "video"
    folder: Path | None = None
    error: str | None = None


def _kind(path: Path) -> str:
    from goae.video import is_video_path
    return "video" if is_video_path(path) else "photo"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _folder_files(folder: Path, out_root: Path) -> list[Path]:
    """Photos and clips under `folder`, recursively, sorted; hidden entries and --out skipped."""
    from goae.video import is_video_path
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _inside(here / d, out_root))
        for name in sorted(filenames):
            p = here / name
            if not name.startswith(".") and (p.suffix.lower() in PHOTO_SUFFIXES or is_video_path(p)):
                found.append(p)
    return found


def expand_inputs(args: Sequence[str], out_root: Path) -> list[Item]:
    """Files as given; folders searched recursively; globs (with * ? [) expanded, recursively with **. Each file
    once (the first time it appears). An argument that gives nothing is kept as a failed input."""
    out_resolved = out_root.resolve()
    items: list[Item] = []
    seen: set[Path] = set()

    def add(arg: str, path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(Item(len(items), arg, path, _kind(path)))

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            files = _folder_files(p, out_resolved)
            if not files:
                items.append(Item(len(items), arg, None, None, error="no photos or clips in this folder"))
            for f in files:
                add(arg, f)
        elif not p.exists() and glob.has_magic(arg):
            files = sorted(Path(f) for f in glob.glob(arg, recursive=True)
                           if Path(f).is_file() and not _inside(Path(f), out_resolved))
            if not files:
                items.append(Item(len(items), arg, None, None, error="no files match this pattern"))
            for f in files:
                add(arg, f)
        else:
            add(arg, p)   # a missing file fails later, with its own message
    return items


# ---------------------------------------------------------------------------------------------- processes
def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process without it)."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        return 0, 1, 0


def _init_distributed(world: int):
    """gloo process group (any device: it only carries the records); None for one process."""
    if world <= 1:
        return None
    import datetime

    import torch.distributed as dist
    timeout = float(os.environ.get("GOAE_DIST_TIMEOUT_S", 7 * 24 * 3600))  # ranks finish at different times
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    return dist


def _gather(dist, records: list[dict]) -> list[dict]:
    if dist is None:
        return records
    everything: list = [None] * dist.get_world_size()
    dist.all_gather_object(everything, records)
    return sorted((r for part in everything for r in part), key=lambda r: r["index"])


# --------------------------------------------------------------------------------------------- log noise
_NATIVE_NOISE = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |INFO: Created TensorFlow Lite"
    r"|WARNING: Logging before InitGoogle\(\)|WARNING: All log messages before absl::InitializeLog\(\))")


def quiet_native_logs(verbose: bool = False) -> None:
    """Before mediapipe is imported: GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL (older mediapipe releases read
    them), unless the user set them; --verbose asks for everything."""
    level = ("0", "0") if verbose else ("2", "3")
    os.environ.setdefault("GLOG_minloglevel", level[0])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", level[1])


@contextlib.contextmanager
def native_log_filter(enabled: bool = True) -> Iterator[None]:
    """Drop mediapipe's native info/warning lines from stderr. Recent mediapipe logs through absl, which reads
    neither variable, straight to file descriptor 2: fd 2 becomes a pipe whose lines are forwarded unless they
    are such a line (absl/glog I/W prefix, TFLite's delegate note), and Python's own sys.stderr writes to the
    real stderr directly (progress bars stay live). Only when sys.stderr is the process's fd 2."""
    try:
        usable = enabled and sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        usable = False
    if not usable:
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    old = sys.stderr
    # Buffered, flushed at each newline (and by tqdm's own flushes): a line goes out in one write, so the pump's
    # forwarded lines cannot land inside it (print writes the text and its newline separately).
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb"), encoding=old.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True)

    def pump() -> None:
        with os.fdopen(r, "rb", buffering=0) as src:
            pending = b""
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines
                               if not _NATIVE_NOISE.match(line.decode("utf-8", "replace")))
                if out:
                    os.write(real, out)
            if pending and not _NATIVE_NOISE.match(pending.decode("utf-8", "replace")):
                os.write(real, pending)

    thread = threading.Thread(target=pump, name="goae-native-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            mine, sys.stderr = sys.stderr, old
            os.dup2(real, 2)            # the pipe's last writer closes: the pump sees the end
            thread.join(timeout=5)
            mine.close()
            os.close(real)


# ------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["download"]:  # the official weights in one command (goae.download has its own options)
        from goae.download import main as download_main
        return download_main(argv[1:], prog="goae download")
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    with native_log_filter(enabled=not args.verbose):
        return _invert(args)


def _invert(args) -> int:
    from goae.export import output_folder
    from goae.export.bundle import result_complete

    rank, world, local_rank = _world()
    device = None
    if world > 1 and (args.device or "auto") in ("auto", "cuda"):
        import torch
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        pipe, directions, options = _setup(args, device)
    except SetupError as e:
        print(f"goae: error: {e}", file=sys.stderr)
        return 2
    out_root = Path(args.out)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"goae: error: cannot create --out: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        dist = _init_distributed(world)
    except Exception as e:
        print(f"goae: error: cannot join the torchrun processes: {one_line(e)}", file=sys.stderr)
        return 2

    items = expand_inputs(args.photos, out_root)
    taken: set[str] = set()
    for item in items:   # names over the whole list, in order: the same in every process
        if item.path is not None:
            item.folder = output_folder(out_root, item.path, taken)
    mine = [it for it in items if it.index % world == rank]
    label = f"[rank {rank}] " if world > 1 else ""
    records = []
    for item in tqdm(mine, desc=f"{label}inputs", unit="input", file=sys.stderr, leave=False, disable=len(mine) < 2):
        records.append(_process(item, pipe, options, directions, args, label, result_complete))

    records = _gather(dist, records)
    failed = sum(r["status"] == "failed" for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    ok = len(records) - failed - skipped
    manifest = out_root / MANIFEST
    if rank == 0:
        from goae.io import atomic_write_bytes
        lines = "".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in records)
        try:
            atomic_write_bytes(manifest, lines.encode("utf-8"))
        except OSError as e:
            print(f"goae: error: cannot write {manifest}: {one_line(e)}", file=sys.stderr)
            failed += 1
        print(f"{ok} succeeded, {failed} failed" + (f", {skipped} skipped (already complete)" if skipped else ""),
              file=sys.stderr)
        if args.json:
            summary = {"goae": goae.__version__, "out": str(out_root), "manifest": str(manifest),
                       "processes": world, "inputs": len(records), "succeeded": ok, "failed": failed,
                       "skipped": skipped, "results": [{k: v for k, v in r.items() if k != "index"}
                                                       for r in records]}
            sys.stdout.write(json.dumps(summary, indent=1) + "\n")
            sys.stdout.flush()
    if dist is not None:
        dist.destroy_process_group()
    return 1 if failed else 0


def _process(item: Item, pipe, options, directions, args, label: str, result_complete) -> dict:
    rank = _world()[0]
    rec = {"index": item.index, "input": str(item.path) if item.path is not None else item.arg, "kind": item.kind,
           "status": "failed", "output": str(item.folder) if item.folder is not None else None, "rank": rank}
    if item.path is None:
        rec["error"] = item.error
        tqdm.write(f"{item.arg}: error: {item.error}", file=sys.stderr)
        return rec
    t0 = time.perf_counter()
    try:
        if args.resume and result_complete(item.folder, item.path):
            rec["status"] = "skipped"
            tqdm.write(f"{label}{item.path}: skipped (complete) -> {item.folder}", file=sys.stderr)
            return rec
        if item.kind == "video":
            rec.update(invert_clip(pipe, item.path, item.folder, args, label))
        else:
            invert_one(pipe, item.path, item.folder, options, directions, args.face_index, args.overwrite,
                       box=args.box, camera=args.camera)
        rec["status"] = "ok"
        tqdm.write(f"{label}{item.path}: ok -> {item.folder}", file=sys.stderr)
    except Exception as e:  # one bad input costs its own result, never the batch (Ctrl-C still stops it)
        rec["error"] = one_line(e)
        tqdm.write(f"{label}{item.path}: error: {rec['error']}", file=sys.stderr)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


if __name__ == "__main__":
    sys.exit(main())
