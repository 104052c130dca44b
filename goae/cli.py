"""`goae invert INPUT... --out DIR` (also `python -m goae`): a thin face over the library.

The one command: `goae invert | download | convert | eval | build-kernels | landmarker`; all but invert
live in their own modules (TOOLS below), which also run as `python -m MODULE`.

Inputs are photos, clips (goae.video: MP4, MOV, WebM, ... by file suffix), folders (searched recursively,
hidden files and --out itself skipped) and globs (`'shots/**/*.jpg'`); only regular files are read (a FIFO
would block the batch forever). Each input gets its own folder, written atomically by
`goae.export.save_inversion` or `goae.video.invert_video`, named by `input_folders`: after the input's path
relative to the folder or glob it came from (`shots/a/1.jpg` -> `a-1`), made safe, and stable when inputs are
added or reordered (module function's docstring), so `--resume` finds it again and every process of a
`torchrun` job names it alike.

One run at a time per --out: a lock (`.goae-invert.lock`, flock) refuses a second one, which would otherwise
report every input as failed in the manifest while the first completes them. Holding it, the run removes the
partial `.<name>.tmp-*` entries that a killed run left in --out. File names are printed with control
characters escaped (a newline in a name cannot forge an "ok ->" line).

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
import errno
import glob
import hashlib
import io
import json
import os
import re
import stat
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

import goae
from goae.export.errors import ExportError, finite, whole
from goae.export.mesh import MAX_MESH_RESOLUTION
from goae.io import NotARegularFile, atomic_write_bytes, check_regular_file, one_line
from goae.request import Request, RequestError, parse_text

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".avif", ".heic", ".heif", ".gif", ".bmp",
                  ".tif", ".tiff", ".mpo")
MANIFEST = "manifest.jsonl"
LOCK_FILE = ".goae-invert.lock"
RESERVED_NAMES = (MANIFEST, LOCK_FILE)   # no input's folder takes these names
_STALE_TMP = re.compile(r"^\..+\.tmp-[a-z0-9_]{8}(\.[^./]+)?$")   # goae.io's temporaries (mkstemp/mkdtemp names)


def shown(text) -> str:
    """`text` for a terminal line: control, format, line-separator and undecodable (surrogate) characters escaped
    (\\n, \\x1b, \\u202e), so a file name cannot start a new line or move the cursor."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


def say(line: str) -> None:
    """One line on stderr (above any progress bar), escaped by `shown`."""
    tqdm.write(shown(line), file=sys.stderr)


def _number(what: str, low=None, high=None, integer: bool = False):
    """An argparse type: a finite number (NaN, inf and text are refused) in [low, high]."""
    def parse(text: str):
        try:
            return (whole if integer else finite)(text, what, low, high)
        except ExportError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _field(name: str, option: str | None = None):
    """An argparse type: one request field from its command-line text (goae.request.parse_text)."""
    def parse(text: str):
        try:
            return parse_text(name, text)
        except RequestError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = option or name
    return parse


def _parse_clip_view(text: str) -> tuple[float, float] | None:
    """--clip-view: 'orbit' (None) or one 'yaw:pitch' in degrees."""
    if text == "orbit":
        return None
    try:
        return parse_text("view", text)
    except RequestError as e:
        raise argparse.ArgumentTypeError(f"{e} (or 'orbit')") from None


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
    for name, (_, about) in TOOLS.items():  # each has its own options: `goae NAME --help`
        sub.add_parser(name, add_help=False, help=f"{about} (goae {name} --help)")
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
    inv.add_argument("--views", type=_field("views", "--views"), default=None,
                     help="extra views, 'yaw:pitch' in degrees, comma separated (e.g. --views=-30:0,30:0,0:15)")
    inv.add_argument("--video", action="store_true", help="write a turntable MP4 (photos)")
    inv.add_argument("--frames", type=_number("--frames", 1, 10000, integer=True), default=120,
                     help="turntable frame count")
    inv.add_argument("--fps", type=_number("--fps", 1, 1000), default=30, help="turntable frames per second")
    inv.add_argument("--mesh", action="store_true", help="write mesh.ply and mesh.glb (photos)")
    inv.add_argument("--mesh-resolution", type=_number("--mesh-resolution", 2, MAX_MESH_RESOLUTION, integer=True), default=256,
                     help="marching-cubes grid size")
    inv.add_argument("--mesh-level", type=_parse_level, default="auto",
                     help="density iso-level of the mesh; 'auto' (default) = EG3D's 10 where the density reaches "
                          "it, else the densest 10%% of the grid (random weights)")
    inv.add_argument("--edit", type=_field("edits", "--edit"), default=None, help="semantic edits, e.g. age=2,glass=1 (photos)")
    inv.add_argument("--directions", default=None,
                     help="folder of edit direction files (.npy/.safetensors; default $GOAE_DIRECTIONS)")
    inv.add_argument("--face-index", type=_field("face_index", "--face-index"), default=None,
                     help="which face when several, left to right (default: largest); for a clip, on its first "
                          "frame with faces")
    cat = inv.add_argument_group("cat photos (a pipeline of the cat domain)")
    cat.add_argument("--box", type=_field("box", "--box"), default=None, metavar="L,T,R,B",
                     help="the cat's head (ears to chin) in source pixels, instead of the cat-face detector; "
                          "applies to every photo given")
    cat.add_argument("--camera", type=_field("camera", "--camera"), default=None, metavar="YAW:PITCH",
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


def _setup(args, device=None):
    """(pipeline, directions, export options) or SetupError."""
    from goae.edit import directions_for, how_to_get_directions, random_weights
    from goae.export import ExportOptions, check_weights
    from goae.pipeline import load_pipeline
    from goae.runtime import setup_runtime

    try:
        device = setup_runtime(device or args.device or "auto")
        pipe = load_pipeline(args.weights, seed=args.seed, device=device)
        check_weights(pipe)
        if args.precision != "fp32":
            pipe.enable_fast_path(args.precision, keep_fp32_weights=False)  # one run, never back to fp32
    except Exception as e:  # weights missing / unreadable, no such device
        raise SetupError(one_line(e)) from None
    domain = pipe.domain
    directions, notes = {}, []
    if args.edit:
        folder = args.directions or os.environ.get("GOAE_DIRECTIONS")
        directions, notes = directions_for(pipe, folder)  # no folder: the weights' own directions/
        if not directions and not notes:
            raise SetupError("--edit needs edit directions: " + how_to_get_directions(domain.name))
    try:  # the whole request, checked once (the box and camera against what the domain accepts)
        request = Request.parse(views=args.views, edits=args.edit, box=args.box, camera=args.camera,
                                face_index=args.face_index, domain=domain,
                                directions=directions, notes=notes)
    except RequestError as e:
        raise SetupError(one_line(e)) from None
    if random_weights(pipe):
        say("goae: NOTE: running on RANDOM weights (no trained checkpoint): outputs are not faces or cats.")
    try:
        options = ExportOptions(views=request.views, video_frames=args.frames if args.video else 0, fps=args.fps,
                                mesh_resolution=args.mesh_resolution if args.mesh else 0, mesh_level=args.mesh_level,
                                edits=request.edits)
    except ExportError as e:
        raise SetupError(one_line(e)) from None
    return pipe, directions, options, request


def invert_one(pipe, photo: Path, folder: Path, options, directions, request: Request = Request(),
               overwrite: bool = False) -> Path:
    """Align one photo with the aligner of the pipeline's domain (the request's face index, and its box and
    camera where the domain takes them), then invert it and write its folder (goae.export.save_inversion)."""
    from goae.export import save_inversion

    face = pipe.domain.align(photo, face_index=request.face_index, **request.align_options())
    warn = lambda msg: say(f"{photo}: {msg}")  # noqa: E731
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

    bar = tqdm(total=None, desc=shown(f"{rank_label}{clip.name}"), unit="frame", file=sys.stderr, leave=False,
               bar_format="{desc}: {n_fmt}/{total_fmt} frames [{elapsed}{postfix}]")

    def progress(p):
        if bar.total is None and p.total:
            bar.total = p.total
        bar.update(p.done - bar.n)
        rate = f"{p.fps:.2f} frames/s" if p.fps else "-- frames/s"
        eta = time.strftime("%H:%M:%S", time.gmtime(p.eta_s)) if p.eta_s is not None else "--"
        bar.set_postfix_str(f"{rate}, ETA {eta}" + (f", {p.cached} cached" if p.cached else ""), refresh=True)

    warn = lambda msg: say(f"{clip}: {msg}")  # noqa: E731
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
    """One input: `path` (None when an argument matched nothing), its kind, the folder or glob root it was found
    under (its own folder for a file given by name), its output folder, or why it failed."""
    index: int
    arg: str
    path: Path | None
    kind: str | None           # "photo" / "video"
    folder: Path | None = None
    error: str | None = None
    root: Path | None = None


def _kind(path: Path) -> str:
    from goae.video import is_video_path
    return "video" if is_video_path(path) else "photo"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _regular(path: Path) -> bool:
    """A regular file, or a link to one (stat never blocks; open() on a FIFO would)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _folder_files(folder: Path, out_root: Path) -> list[Path]:
    """Photos and clips under `folder`, recursively, sorted; hidden entries, --out and anything that is not a
    regular file (FIFOs, sockets, devices named like photos) skipped."""
    from goae.video import is_video_path
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _inside(here / d, out_root))
        for name in sorted(filenames):
            p = here / name
            if (not name.startswith(".") and (p.suffix.lower() in PHOTO_SUFFIXES or is_video_path(p))
                    and _regular(p)):
                found.append(p)
    return found


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard ('shots/**/*.jpg' -> 'shots')."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def expand_inputs(args: Sequence[str], out_root: Path) -> list[Item]:
    """Files as given; folders searched recursively; globs (with * ? [) expanded, recursively with **. Each file
    once (the first time it appears). An argument that gives nothing is kept as a failed input, and so is a
    file given by name that is not a regular file (it is never opened)."""
    out_resolved = out_root.resolve()
    items: list[Item] = []
    seen: set[Path] = set()

    def add(arg: str, path: Path, root: Path, error: str | None = None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(Item(len(items), arg, path, _kind(path), error=error, root=root))

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            files = _folder_files(p, out_resolved)
            if not files:
                items.append(Item(len(items), arg, None, None, error="no photos or clips in this folder"))
            for f in files:
                add(arg, f, p)
        elif not p.exists() and glob.has_magic(arg):
            files = sorted(Path(f) for f in glob.glob(arg, recursive=True)
                           if _regular(Path(f)) and not _inside(Path(f), out_resolved))
            if not files:
                items.append(Item(len(items), arg, None, None, error="no files match this pattern"))
            for f in files:
                add(arg, f, _glob_root(arg))
        elif p.exists() and not _regular(p):
            try:
                check_regular_file(p)
                add(arg, p, p.parent)
            except (NotARegularFile, OSError) as e:
                add(arg, p, p.parent, error=one_line(e))
        else:
            add(arg, p, p.parent)   # a missing file fails later, with its own message
    return items


def _base_name(item: Item) -> str:
    """The input's path relative to its root, without the suffix, as one safe name ('a/1.jpg' -> 'a-1')."""
    from goae.export import safe_name
    try:
        rel = item.path.relative_to(item.root) if item.root is not None else Path(item.path.name)
    except ValueError:
        rel = Path(item.path.name)
    parts = [*rel.parts[:-1], rel.stem if rel.suffix else rel.name]
    return safe_name("-".join(safe_name(x, "") for x in parts if safe_name(x, "")) or "photo")


def _made_from(folder: Path) -> Path | None:
    """The input a goae result folder says it was made from (resolved), or None."""
    try:
        meta = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        src = meta.get("photo", meta.get("video")) if isinstance(meta, dict) else None
        return Path(src).resolve() if isinstance(src, str) else None
    except (OSError, ValueError):
        return None


def input_folders(items: Sequence[Item], out_root: Path) -> None:
    """Set each input's output folder: out_root / its base name (`_base_name`). Names are compared
    case-insensitively. When several inputs share one, the plain name goes to the input whose result it
    already holds (its result.json), else, when it holds none, to the first of them by path; the others get
    the name plus 8 hex digits of a hash of their resolved path. So a name depends on the input and what
    --out holds, never on the input's position: adding inputs does not rename earlier results (`--resume`),
    and a result is never replaced by another input's (`--overwrite`). `manifest.jsonl` and the lock file are
    never input folders. Every process of a torchrun job computes the same names."""
    groups: dict[str, list[tuple[Item, str]]] = {}
    for item in items:
        if item.path is not None and item.error is None:
            base = _base_name(item)
            groups.setdefault(base.casefold(), []).append((item, base))
    reserved = {n.casefold() for n in RESERVED_NAMES}
    used: set[str] = set()
    for key, group in groups.items():
        resolved = {id(it): it.path.resolve() for it, _ in group}
        owner = None
        if key not in reserved:
            holders = {_made_from(out_root / base) for _, base in group}
            owner = next((it for it, _ in group if resolved[id(it)] in holders), None)
            if owner is None and holders == {None}:       # nobody's result there (yet)
                owner = min((it for it, _ in group), key=lambda it: str(resolved[id(it)]))
        for it, base in group:
            if it is owner:
                name = base
            else:
                digest = hashlib.sha256(str(resolved[id(it)]).encode("utf-8", "surrogateescape")).hexdigest()[:8]
                name = f"{base.encode('utf-8')[:90].decode('utf-8', 'ignore')}-{digest}"
            if name.casefold() in used:      # a hash name that meets another base name: refuse, never share
                it.error = f"no unique output folder name for this input ({name!r} is taken)"
                continue
            used.add(name.casefold())
            it.folder = out_root / name
    for item in items:
        if item.folder is not None and (item.folder.parent != out_root or item.folder.name in ("", ".", "..")):
            raise ExportError(f"unsafe output folder {item.folder} for {item.path}")   # cannot happen


# --------------------------------------------------------------------------------------------- --out lock
class OutputLocked(Exception):
    """Another goae run holds the --out folder's lock."""


class OutputLock:
    """An exclusive flock on `--out/.goae-invert.lock`, released when the process ends however it ends
    (SIGKILL too). The file is removed on release; a process that opened it meanwhile sees that the path no
    longer names its file and takes the lock again on a new one."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        """True when held; False when this filesystem cannot lock (then the run goes on unlocked);
        OutputLocked when another run holds it."""
        try:
            import fcntl
        except ImportError:   # not POSIX
            return False
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLocked(f"another goae run ({holder or 'unknown process'}) is writing to "
                                       f"{self.path.parent}; wait for it to finish or choose another --out") from None
                return False
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
                self.fd = fd
                return True
            os.close(fd)          # the holder removed the file after we opened it: lock the new one
        return False

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def remove_stale_temporaries(out_root: Path) -> list[str]:
    """Remove what killed runs left directly in --out: goae.io's `.<name>.tmp-XXXXXXXX[.ext]` files and folders,
    and the same inside the clips' `.<name>.goae-frames` caches. Call only while holding the OutputLock: no
    other goae run writes there then. -> the names removed."""
    import shutil
    removed = []
    places = [out_root] + [d for d in out_root.glob(".*.goae-frames") if d.is_dir() and not d.is_symlink()]
    for place in places:
        for entry in place.iterdir():
            if not _STALE_TMP.match(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(str(entry.relative_to(out_root)))
    return removed


# ---------------------------------------------------------------------------------------------- processes
def world() -> tuple[int, int, int]:
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
# The other subcommands of `goae`: (module whose main(argv, prog) runs it, what it does). Each module also runs
# as `python -m MODULE`; they are imported only when called (a download needs no torch start-up, for instance).
TOOLS = {
    "download": ("goae.weights.download", "fetch and convert the official weights after you accept their licences"),
    "convert": ("goae.weights.convert", "convert official EG3D/GOAE checkpoints into goae folders (no pickle code is run)"),
    "eval": ("goae.eval.cli", "measure inversion quality: MSE, LPIPS, SSIM, identity, FID (the paper's table)"),
    "build-kernels": ("goae.models.kernels", "build the fused CPU render kernel now (set-up, a Space's start)"),
    "landmarker": ("goae.landmarker", "fetch mediapipe's face landmarker model into the cache"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in TOOLS:
        import importlib
        return importlib.import_module(TOOLS[argv[0]][0]).main(argv[1:], prog=f"goae {argv[0]}") or 0
    args = build_parser().parse_args(argv)
    quiet_native_logs(args.verbose)
    with native_log_filter(enabled=not args.verbose):
        return _invert(args)


def _invert(args) -> int:
    from goae.export.bundle import result_complete

    rank, world_size, local_rank = world()
    device = None
    if world_size > 1 and (args.device or "auto") in ("auto", "cuda"):
        import torch
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device != "cpu":  # this process's current device: kernels, caches and cuda:0-less calls land on its GPU
            torch.cuda.set_device(local_rank)
    try:
        pipe, directions, options, request = _setup(args, device)
    except SetupError as e:
        say(f"goae: error: {e}")
        return 2
    out_root = Path(args.out)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        say(f"goae: error: cannot create --out: {one_line(e)}")
        return 2
    try:
        dist = _init_distributed(world_size)
    except Exception as e:
        say(f"goae: error: cannot join the torchrun processes: {one_line(e)}")
        return 2

    lock = OutputLock(out_root)
    problem = None
    if rank == 0:     # one lock per run: torchrun's processes share it through rank 0
        try:
            if lock.acquire():
                removed = remove_stale_temporaries(out_root)
                if removed:
                    say(f"goae: removed {len(removed)} partial result(s) left by a killed run: {', '.join(removed)}")
            else:
                say(f"goae: warning: cannot lock {out_root} (its filesystem has no locks); do not run two goae "
                    "processes on it at once")
        except (OutputLocked, OSError) as e:
            problem = one_line(e) if isinstance(e, OSError) else str(e)
    if dist is not None:
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem is not None:
        say(f"goae: error: {problem}")
        if dist is not None:
            dist.destroy_process_group()
        return 2
    try:
        return _run_inputs(args, pipe, directions, options, request, out_root, dist, rank, world_size, result_complete)
    finally:
        lock.release()


def _run_inputs(args, pipe, directions, options, request, out_root, dist, rank, world, result_complete) -> int:
    items = expand_inputs(args.photos, out_root)
    input_folders(items, out_root)   # over the whole list: the same in every process
    mine = [it for it in items if it.index % world == rank]
    label = f"[rank {rank}] " if world > 1 else ""
    records = []
    for item in tqdm(mine, desc=f"{label}inputs", unit="input", file=sys.stderr, leave=False, disable=len(mine) < 2):
        records.append(_process(item, pipe, options, directions, request, args, label, result_complete, rank))

    records = _gather(dist, records)
    failed = sum(r["status"] == "failed" for r in records)
    skipped = sum(r["status"] == "skipped" for r in records)
    ok = len(records) - failed - skipped
    manifest = out_root / MANIFEST
    if rank == 0:
        lines = "".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n" for r in records)
        try:
            atomic_write_bytes(manifest, lines.encode("utf-8"))
        except OSError as e:
            say(f"goae: error: cannot write {manifest}: {one_line(e)}")
            failed += 1
        say(f"{ok} succeeded, {failed} failed" + (f", {skipped} skipped (already complete)" if skipped else ""))
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


def _process(item: Item, pipe, options, directions, request, args, label: str, result_complete, rank: int) -> dict:
    rec = {"index": item.index, "input": str(item.path) if item.path is not None else item.arg, "kind": item.kind,
           "status": "failed", "output": str(item.folder) if item.folder is not None else None, "rank": rank}
    if item.error is not None:
        rec["error"] = item.error
        say(f"{label}{rec['input']}: error: {item.error}")
        return rec
    t0 = time.perf_counter()
    try:
        if args.resume and result_complete(item.folder, item.path):
            rec["status"] = "skipped"
            say(f"{label}{item.path}: skipped (complete) -> {item.folder}")
            return rec
        if item.kind == "video":
            rec.update(invert_clip(pipe, item.path, item.folder, args, label))
        else:
            invert_one(pipe, item.path, item.folder, options, directions, request, args.overwrite)
        rec["status"] = "ok"
        say(f"{label}{item.path}: ok -> {item.folder}")
    except Exception as e:  # one bad input costs its own result, never the batch (Ctrl-C still stops it)
        rec["error"] = one_line(e)
        say(f"{label}{item.path}: error: {rec['error']}")
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


if __name__ == "__main__":
    sys.exit(main())
