"""Invert a whole clip: track the face, invert the frames in batches, write the 3-D videos; resumable.

`invert_video(pipe, "clip.mp4", "out/clip")` writes one folder (atomically, like goae.export.save_inversion):

  reconstruction.mp4   every frame's inversion rendered at its own (smoothed) camera
  view_orbit.mp4       the clip re-rendered from another camera: an orbit while it plays (one turn every
  or view_yaw<Y>_pitch<P>.mp4   `orbit_seconds`), or a fixed yaw/pitch in degrees
  side_by_side.mp4     optional: aligned input | reconstruction | view
  result.json          the settings, the audio and one entry per frame: time, status ("ok" / "no_face"),
                       face box (source px), camera label and its yaw/pitch, notes

Every video has the clip's frame count and timing (each frame at its source time stamp, so a variable frame
rate is kept; unusable time stamps are replaced and counted: goae.video.media) and, when the clip has audio,
its audio (copied, or re-encoded to AAC where MP4 cannot hold the codec). The orbit follows the clip's time.
A frame with no face gets a note and holds the last good inversion (its reconstruction, view and input
crop); frames before the first face hold the first one. A clip with no face at all fails with NoFaceError.

Resume. Every inverted frame is cached as soon as it is done, one file per frame written atomically
(`.<folder>.goae-frames/frame_000123.npz` beside the folder: the two rendered frames plus the camera and box
they were made with). A killed run, started again with the same settings, re-tracks the clip (detection is
cheap and deterministic) and inverts only the frames the cache does not hold; the cache records the
settings that change the pictures (source file, weights, precision, smoothing, face, view) and is discarded
when they differ. A damaged entry (unreadable, or arrays of another shape or type: checked from the file's
headers before anything is read) is inverted again and reported once. The cache is removed once the folder
is complete (keep_cache=True keeps it).
"""
from __future__ import annotations

import errno
import io
import json
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from goae.align import NoFaceError
from goae.domains import DOMAINS
from goae.export.bundle import RESULT_FILE, check_finite
from goae.export.errors import finite, whole
from goae.export.views import to_uint8
from goae.io import atomic_dir, atomic_write_bytes, check_output_dir, one_line
from goae.request import parse_face_index, parse_view
from goae.video.filters import SmoothingOptions
from goae.video.media import VideoEncoder, VideoError, add_audio, decode_frames, probe
from goae.video.track import OK, FaceTracker, TrackedFrame

CACHE_FORMAT = 2           # 2: the orbit follows the clip time, bounded steps
MAX_ORBIT_STEPS = 3600        # orbit cameras computed per turn (0.1 degree of phase): bounded whatever the fps
MAX_CACHED_SIDE = 4096        # a cache entry's images are refused (before reading) above this size


@dataclass(frozen=True)
class VideoOptions:
    """What `invert_video` writes and how. Numbers are checked (finite, in range)."""
    batch_size: int = 4                                # frames per inversion call
    face_index: int | None = None                      # face on the first frame with faces; None = largest
    view: tuple[float, float] | None = None            # fixed (yaw, pitch) in degrees; None = orbit
    orbit_seconds: float = 4.0                         # one orbit turn per this many seconds of clip
    side_by_side: bool = False
    audio: bool = True
    smoothing: SmoothingOptions | None = field(default_factory=SmoothingOptions)   # None = off
    max_frames: int | None = None                      # only the first frames (trying settings)
    crf: int = 18

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("batch_size", whole(self.batch_size, "batch size", 1, 256))
        set_("face_index", parse_face_index(self.face_index))   # the request's rules (goae.request)
        if self.view is not None:
            set_("view", parse_view(self.view))
        set_("orbit_seconds", finite(self.orbit_seconds, "orbit seconds", 0.04, 3600))
        if self.max_frames is not None:
            set_("max_frames", whole(self.max_frames, "max frames", 1, 10_000_000))
        set_("crf", whole(self.crf, "crf", 0, 51))

    @property
    def view_file(self) -> str:
        if self.view is None:
            return "view_orbit.mp4"
        return f"view_yaw{self.view[0]:+g}_pitch{self.view[1]:+g}.mp4"


@dataclass
class VideoProgress:
    """Reported after every frame written: frames done of `total` (None when the clip does not say), how many
    were inverted in this run and how many came from the cache, inverted frames per second, ETA in seconds."""
    done: int
    total: int | None
    inverted: int
    cached: int
    fps: float | None
    eta_s: float | None


# ------------------------------------------------------------------------------------------------ cache
def _weights_checksum(pipe) -> str:
    """A cheap fingerprint of the weights (sums of every 8th tensor), so a cache never outlives them."""
    total, tensors = 0.0, []
    for comp in ("generator", "encoder", "afa"):
        module = getattr(pipe, comp, None)
        if isinstance(module, torch.nn.Module):
            tensors += sorted(module.state_dict().items())
    with torch.no_grad():
        for i, (_, t) in enumerate(tensors):
            if i % 8 == 0 and t.is_floating_point():
                total += float(t.double().sum())
    return f"{len(tensors)}:{total:.10e}"


def _fingerprint(pipe, source: Path, options: VideoOptions, fps: float) -> dict:
    st = source.stat()
    fast = getattr(pipe, "fast_path", None)
    return {"format": CACHE_FORMAT, "source": str(source.resolve()), "source_bytes": st.st_size,
            "source_mtime_ns": st.st_mtime_ns, "weights": getattr(pipe, "weights_label", None),
            "weights_checksum": _weights_checksum(pipe), "precision": fast.precision if fast else "fp32",
            "device": str(pipe.device), "face_index": options.face_index, "view": options.view,
            "orbit_frames": _orbit_frames(options, fps) if options.view is None else None,
            "smoothing": options.smoothing.as_dict() if options.smoothing else None}


def _orbit_frames(options: VideoOptions, fps: float) -> int:
    """Cameras per orbit turn: one per frame at the clip's rate, at most MAX_ORBIT_STEPS."""
    return max(1, min(MAX_ORBIT_STEPS, int(round(options.orbit_seconds * fps))))


class FrameCache:
    """One atomic .npz per inverted frame (see module docstring). Only files it names are ever deleted."""

    def __init__(self, folder: Path, fingerprint: dict, warn: Callable[[str], None] | None = None,
                 image_size: tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.image_size = image_size      # (H, W) of the rendered frames when the pipeline says; else the first seen
        self.damaged = 0
        self._warn = warn
        meta = self.folder / "cache.json"
        if self.folder.is_dir():
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError):
                old = None
            if old != fingerprint:
                if old is not None and warn is not None:
                    warn("the frame cache was made with other settings or weights; starting again")
                self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(meta, json.dumps(fingerprint, indent=1).encode())

    def _path(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.npz"

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("frame_*.npz"))

    def get(self, frame: TrackedFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (reconstruction, view) of this frame made with its camera and box; None when there is
        none, or when the entry is damaged (then it is deleted, and the first one is reported)."""
        path = self._path(frame.index)
        if not path.is_file():
            return None
        try:
            z = self._read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            self.damaged += 1
            if self.damaged == 1 and self._warn is not None:
                self._warn(f"warning: a damaged frame-cache entry is inverted again ({path.name}: "
                           f"{one_line(str(e)) or type(e).__name__}); any others are counted in result.json")
            path.unlink(missing_ok=True)
            return None
        same = (np.allclose(z["camera"], frame.face.camera, rtol=0, atol=1e-5)
                and np.allclose(z["box"], frame.face.box, rtol=0, atol=1e-3))
        if not same:
            return None
        self.image_size = self.image_size or z["reconstruction"].shape[:2]
        return z["reconstruction"], z["view"]

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        """The entry's arrays, each checked from its .npy header (shape, type) before its data is read, so a
        damaged or hostile file can neither size an allocation nor hold objects."""
        size = self.image_size
        expect = {"reconstruction": ((np.uint8,), 3), "view": ((np.uint8,), 3),
                  "camera": ((np.float32,), (25,)), "box": ((np.float32, np.float64), (4,))}
        out = {}
        with zipfile.ZipFile(path) as zf:
            for name, (dtypes, shape_rule) in expect.items():
                with zf.open(f"{name}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = header(f)
                    if dtype.type not in dtypes or fortran:
                        raise ValueError(f"{name} is {dtype}, expected {dtypes[0].__name__}")
                    if shape_rule == 3:
                        ok = (len(shape) == 3 and shape[2] == 3 and 0 < shape[0] <= MAX_CACHED_SIDE
                              and 0 < shape[1] <= MAX_CACHED_SIDE and (size is None or tuple(shape[:2]) == tuple(size)))
                    else:
                        ok = tuple(shape) == shape_rule
                    if not ok:
                        frames = f", the frames are {size[0]}x{size[1]}" if size and shape_rule == 3 else ""
                        raise ValueError(f"{name} has shape {tuple(shape)}{frames}")
                    n = int(np.prod(shape)) * dtype.itemsize
                    data = f.read(n)
                    if len(data) != n:
                        raise ValueError(f"{name} is cut short")
                    out[name] = np.frombuffer(data, dtype).reshape(shape)
        if out["reconstruction"].shape != out["view"].shape:
            raise ValueError("its reconstruction and view differ in size")
        return out

    def put(self, frame: TrackedFrame, reconstruction: np.ndarray, view: np.ndarray) -> None:
        self.image_size = self.image_size or reconstruction.shape[:2]
        buf = io.BytesIO()
        np.savez_compressed(buf, reconstruction=reconstruction, view=view,
                            camera=np.asarray(frame.face.camera, np.float32), box=np.asarray(frame.face.box))
        atomic_write_bytes(self._path(frame.index), buf.getvalue())

    def clear(self) -> None:
        if not self.folder.is_dir():
            return
        for p in list(self.folder.glob("frame_*.npz")) + [self.folder / "cache.json"]:
            p.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:     # someone else's files are in it: leave them
            pass


def default_cache_dir(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.goae-frames"


# ------------------------------------------------------------------------------------------------- run
class _Writers:
    """The output videos, written frame by frame in order."""

    def __init__(self, tmp: Path, fps, options: VideoOptions):
        self.names = {"reconstruction": "reconstruction.mp4", "view": options.view_file}
        if options.side_by_side:
            self.names["side_by_side"] = "side_by_side.mp4"
        self.encoders = {k: VideoEncoder(tmp / f".{v}.video.mp4", fps, crf=options.crf) for k, v in self.names.items()}

    def write(self, aligned: np.ndarray, recon: np.ndarray, view: np.ndarray, time: float) -> None:
        self.encoders["reconstruction"].write(recon, time)
        self.encoders["view"].write(view, time)
        if "side_by_side" in self.encoders:
            self.encoders["side_by_side"].write(np.concatenate([aligned, recon, view], axis=1), time)

    def close(self, ok: bool, end: float | None = None) -> None:
        for e in self.encoders.values():
            e.close(ok=ok, end=end)


def _replaceable(folder: Path, overwrite: bool) -> None:
    check_output_dir(folder, overwrite)
    if overwrite and folder.is_dir() and not (folder / RESULT_FILE).is_file() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not a goae result folder (no {RESULT_FILE}); not replacing it")


def invert_video(pipe, source: str | os.PathLike, folder: str | os.PathLike, options: VideoOptions = VideoOptions(),
                 *, overwrite: bool = False, cache_dir: str | os.PathLike | None = None, keep_cache: bool = False,
                 progress: Callable[[VideoProgress], None] | None = None,
                 warn: Callable[[str], None] | None = None, landmarker_model=None) -> Path:
    """Invert every frame of the clip `source` and write `folder` (module docstring). Returns the folder."""
    t_start = time.perf_counter()
    source, folder = Path(source), Path(folder)
    domain = pipe.domain
    if not domain.supports_clips:  # the tracker follows human face landmarks
        which = " and ".join(f"{d.title.lower()}s" for d in DOMAINS.values() if d.supports_clips)
        raise VideoError(f"clips are supported for {which} only; this pipeline inverts "
                         f"{domain.title.lower()}s ({domain.dataset}): invert single frames as photos")
    _replaceable(folder, overwrite)
    info = probe(source)
    fps = info.fps
    total = info.frames if options.max_frames is None else min(info.frames or options.max_frames, options.max_frames)
    tracker = FaceTracker(options.face_index, options.smoothing, landmarker_model=landmarker_model)
    side = getattr(getattr(pipe, "generator", None), "img_resolution", None)
    cache = FrameCache(Path(cache_dir) if cache_dir else default_cache_dir(folder),
                       _fingerprint(pipe, source, options, float(fps)), warn,
                       image_size=(side, side) if isinstance(side, int) else None)
    if options.view is None:   # the orbit's phase follows the clip's time (variable frame rates too)
        steps = _orbit_frames(options, float(fps))
        orbit = pipe.orbit_cameras(steps)
        view_camera = lambda t: orbit[int(round(t / options.orbit_seconds * steps)) % steps]  # noqa: E731
    else:
        fixed = pipe.view_camera(*options.view)[0]
        view_camera = lambda t: fixed  # noqa: E731
    state = {"inverted": 0, "cached": 0, "done": 0, "retimed": 0, "end": None, "t0": time.perf_counter()}
    records: list[dict] = []

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        writers = _Writers(tmp, fps, options)
        ok = False
        try:
            _run(pipe, source, options, tracker, cache, writers, view_camera, records, state, total, progress)
            ok = True
            declared = info.frames if options.max_frames is None else None
            if declared and len(records) < declared - max(2, declared // 20) and warn is not None:
                warn(f"warning: only {len(records)} of the {info.frames} frames the file declares could be decoded "
                     "(a truncated or damaged clip?)")
            if state["retimed"] and warn is not None:
                warn(f"warning: {state['retimed']} frame(s) had unusable time stamps (missing, repeated, going "
                     "back or out of range) and were placed 1/fps after the frame before (result.json: "
                     "frames_retimed)")
        except BaseException:
            if not len(cache):      # nothing to resume from: leave no empty cache behind
                cache.clear()
            raise
        finally:
            writers.close(ok, end=state["end"])
        files = {}
        audio = None
        for key, name in writers.names.items():
            video_only = writers.encoders[key].path
            status = _audio(video_only, source, tmp / name, warn) if options.audio and info.audio_codec else None
            if status is None:
                os.replace(video_only, tmp / name)
            else:
                video_only.unlink()
                audio = status
            files[key] = name
        n_ok = sum(r["status"] == OK for r in records)
        fast = getattr(pipe, "fast_path", None)
        meta = {"video": str(source), "files": files, "fps": float(fps), "fps_fraction": str(fps),
                "frame_count": len(records), "duration_seconds": round(state["end"], 6),
                "declared_frame_count": info.frames, "timing": "source time stamps", "frames_retimed": state["retimed"],
                "frames_with_face": n_ok, "frames_without_face": len(records) - n_ok,
                "source_size": [info.width, info.height], "audio": audio if audio else (
                    None if not info.audio_codec else "not copied"),
                "source_audio_codec": info.audio_codec,
                "view": "orbit" if options.view is None else {"yaw_deg": options.view[0], "pitch_deg": options.view[1]},
                "orbit_seconds": options.orbit_seconds if options.view is None else None,
                "smoothing": ({"filter": "one-euro", **options.smoothing.as_dict()} if options.smoothing else None),
                "face_index": options.face_index, "batch_size": options.batch_size,
                "weights": getattr(pipe, "weights_label", None), "precision": fast.precision if fast else "fp32",
                "frames_inverted_this_run": state["inverted"], "frames_from_cache": state["cached"],
                "damaged_cache_entries_recomputed": cache.damaged,
                "seconds": round(time.perf_counter() - t_start, 3), "per_frame": records}
        atomic_write_bytes(tmp / RESULT_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    if not keep_cache:
        cache.clear()
    return folder


def _audio(video: Path, source: Path, out: Path, warn) -> str | None:
    """add_audio, or None (the video stays silent, with a warning) when the audio cannot be carried over;
    a full disk is still an error."""
    try:
        return add_audio(video, source, out)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        if warn is not None:
            warn(f"warning: the audio could not be copied ({one_line(str(e))}); the videos are silent")
        return None


def _run(pipe, source, options, tracker, cache, writers, view_camera, records, state, total, progress) -> None:
    pending: list[TrackedFrame] = []     # tracked frames not written yet, in order
    todo: list[TrackedFrame] = []        # the ones among them that need an inversion
    images: dict[int, tuple[np.ndarray, np.ndarray]] = {}   # frame -> (reconstruction, view), until written
    held = {"last": None, "lead": []}    # last written good frame (aligned, recon, view); frames before the first

    def invert(batch: list[TrackedFrame]) -> None:
        if not batch:
            return
        out = pipe([f.face.image for f in batch], np.stack([f.face.camera for f in batch]), output_type=None)
        check_finite(out)
        cams = torch.stack([torch.as_tensor(view_camera(f.time)) for f in batch])
        views = to_uint8(pipe.render_view(out, cams, output_type=None)["image"])
        recons = to_uint8(out.image)
        for f, r, v in zip(batch, recons, views):
            cache.put(f, r, v)
            images[f.index] = (r, v)
        state["inverted"] += len(batch)

    def emit(frame: TrackedFrame) -> None:
        rec = frame.record()
        if frame.status == OK:
            recon, view = images.pop(frame.index)
            trio = (np.asarray(frame.face.image), recon, view)
            for lead, t in held["lead"]:         # frames before the first face hold the first one
                lead["held_frame"] = frame.index
                writers.write(*trio, t)
            held["lead"] = []
            held["last"] = (frame.index, trio)
            writers.write(*trio, frame.time)
        elif held["last"] is None:
            held["lead"].append((rec, frame.time))
            rec["note"] = f"{frame.note}; holding the first frame with a face"
        else:
            rec["held_frame"] = held["last"][0]
            rec["note"] = f"{frame.note}; holding frame {held['last'][0]}"
            writers.write(*held["last"][1], frame.time)
        records.append(rec)
        state["done"] += 1
        if progress is not None:
            elapsed = time.perf_counter() - state["t0"]
            rate = state["inverted"] / elapsed if state["inverted"] and elapsed > 0 else None
            left = None if total is None else max(total - state["done"], 0)
            progress(VideoProgress(state["done"], total, state["inverted"], state["cached"], rate,
                                   None if rate is None or left is None else left / rate))

    def flush() -> None:
        invert(todo)
        todo.clear()
        for f in pending:
            emit(f)
        pending.clear()

    for decoded in decode_frames(source, options.max_frames):
        frame = tracker.update(decoded.image, decoded.time)
        state["end"] = decoded.time + decoded.duration
        state["retimed"] += decoded.retimed
        pending.append(frame)
        if frame.status == OK:
            hit = cache.get(frame)
            if hit is not None:
                images[frame.index] = hit
                state["cached"] += 1
            else:
                todo.append(frame)
        if len(todo) >= options.batch_size or (not todo and len(pending) >= options.batch_size):
            flush()
    flush()
    if held["last"] is None:
        raise NoFaceError(f"No face found in any of the {len(records)} frames of the clip.")
