"""One inversion's take-home folder, written atomically, and the safe names of what goes in it.

`save_inversion` writes everything for one aligned face into one folder (listed in `result.json` with the
camera): aligned.png, reconstruction.png, depth16.png + depth_preview.png, ws.safetensors, one
view_yaw<Y>_pitch<P>.png per view, turntable.mp4, mesh.ply + mesh.glb, edit_<name><strength>.png.
Everything is written into a hidden temporary folder beside the final one and renamed into place when
complete (`goae.io.atomic_dir`), so a failure or Ctrl-C leaves nothing half-written.

Names. `safe_name` makes any text one harmless file or folder name: never empty, '.', '..', hidden, a
path, or over 100 bytes. `output_name` / `output_folder` (kept for library callers) add -2, -3, ... for
names already taken in one list, so a name depends on the photo's position; `goae invert` and `goae eval`
name their folders with goae.cli.input_folders instead, stable per input. `overwrite=True` replaces only
folders that goae wrote (they hold a result.json) or empty ones, never unrelated folders.
"""
from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from safetensors.torch import save as st_save_bytes

from goae.camera import yaw_pitch_from_label
from goae.edit import EditDirection, edit_offset, resolve_names
from goae.export.depth import save_depth
from goae.export.errors import ExportError, finite, whole
from goae.weights.checks import nonfinite_names
from goae.export.mesh import extract_mesh
from goae.export.mesh_files import save_glb, save_ply
from goae.export.video import write_video
from goae.export.views import iter_views, save_png
from goae.io import atomic_dir, atomic_write_bytes

MAX_NAME_BYTES = 100
RESULT_FILE = "result.json"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


@dataclass(frozen=True)
class ExportOptions:
    """What `save_inversion` writes beyond the basics. Every number is checked (finite, in range)."""
    views: Sequence[tuple[float, float]] = ()   # extra views, (yaw, pitch) in degrees
    video_frames: int = 0                       # turntable frames; 0 = no video
    fps: float = 30
    mesh_resolution: int = 0                    # marching-cubes grid; 0 = no mesh
    mesh_level: float | str = "auto"            # see goae.export.mesh.resolve_mesh_level
    edits: Mapping[str, float] = field(default_factory=dict)  # direction name -> strength

    def __post_init__(self):
        views = []
        for yaw, pitch in self.views:
            v = (finite(yaw, "view yaw", -180, 180) + 0.0, finite(pitch, "view pitch", -90, 90) + 0.0)  # no -0
            if v not in views:
                views.append(v)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("views", tuple(views))
        set_("video_frames", whole(self.video_frames, "video frames", 0, 10000))
        set_("fps", finite(self.fps, "fps", 1e-3, 1000))
        set_("mesh_resolution", whole(self.mesh_resolution, "mesh resolution", 0, 1024))
        if self.mesh_resolution == 1:
            raise ExportError("mesh resolution must be >= 2 (or 0 for no mesh)")
        if self.mesh_level != "auto":
            set_("mesh_level", finite(self.mesh_level, "mesh level"))
        set_("edits", {str(k): finite(v, f"edit strength of {k!r}") for k, v in self.edits.items()})


# ----------------------------------------------------------------------------------------------- names
def safe_name(text: str, fallback: str = "photo") -> str:
    """`text` as one harmless file or folder name: no separators or control characters, not hidden,
    not '.' / '..', at most MAX_NAME_BYTES of UTF-8; `fallback` when nothing is left."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", str(text))).strip(" .")
    name = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore").strip(" .")
    return name or fallback


def output_name(photo: str | os.PathLike, taken: set[str]) -> str:
    """Folder name for `photo`'s results: its safe file stem, made unique among `taken` (case-insensitive
    names; `taken` is updated) by adding -2, -3, ..."""
    stem = Path(os.fspath(photo)).name
    stem = stem[:-len(Path(stem).suffix)] if Path(stem).suffix else stem
    base = safe_name(stem)
    name, n = base, 1
    while name.casefold() in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name.casefold())
    return name


def output_folder(out_root: str | os.PathLike, photo: str | os.PathLike, taken: set[str]) -> Path:
    """out_root / output_name(photo): always a direct child of out_root, never out_root itself."""
    out_root = Path(out_root)
    folder = out_root / output_name(photo, taken)
    if folder.parent != out_root or folder.name in ("", ".", ".."):  # cannot happen: belt and braces
        raise ExportError(f"unsafe output folder {folder} for {photo}")
    return folder


def view_file_name(yaw: float, pitch: float) -> str:
    return f"view_yaw{yaw:+g}_pitch{pitch:+g}.png"


def edit_file_name(edits: Mapping[str, float]) -> str:
    """'edit_age+2_glass-1.png' for the non-zero strengths; 'edit_none.png' when there are none."""
    parts = [f"{safe_name(k, 'edit')}{float(v):+g}" for k, v in edits.items() if v]
    return safe_name("edit_" + "_".join(parts)) + ".png" if parts else "edit_none.png"


# ----------------------------------------------------------------------------------------------- files
def save_latent(path: str | os.PathLike, result, index: int = 0) -> Path:
    """The W+ code and camera of one inversion as safetensors ('ws' [num_ws, w_dim], 'camera' [25]), atomically.
    Written through goae.io so that a full disk raises OSError (safetensors' own writer raises its own type)."""
    tensors = {"ws": result.ws[index].detach().cpu().contiguous(),
               "camera": result.camera[index].detach().cpu().float().contiguous()}
    return atomic_write_bytes(path, st_save_bytes(tensors, metadata={"format": "goae-inversion"}))


def check_finite(result) -> None:
    """ExportError when an inversion holds NaN or inf (damaged weights), instead of black pictures."""
    bad = nonfinite_names((name, getattr(result, name, None)) for name in ("ws", "planes", "image", "image_depth"))
    if bad:
        raise ExportError(f"the inversion's {bad[0]} contains NaN or inf: the weights are probably damaged")


def check_weights(pipe) -> None:
    """ExportError naming the first tensors with NaN or inf in the pipeline's networks (a damaged checkpoint
    would otherwise fail deep inside the renderer on every photo)."""
    bad = nonfinite_names((f"{comp}.{name}", t) for comp in ("generator", "encoder", "afa")
                          if isinstance(getattr(pipe, comp, None), torch.nn.Module)
                          for name, t in getattr(pipe, comp).state_dict().items())
    if bad:
        raise ExportError(f"the weights contain NaN or inf ({len(bad)} tensors, e.g. {', '.join(bad[:3])}): "
                          "the checkpoint is damaged; convert or download it again")


def _replaceable(folder: Path, overwrite: bool) -> None:
    """--overwrite replaces earlier results (a folder with result.json) or empty folders, nothing else."""
    if overwrite and folder.is_dir() and not folder.is_symlink():
        if not (folder / RESULT_FILE).is_file() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not a goae result folder (no {RESULT_FILE}); "
                                  "not replacing it")


def result_complete(folder: str | os.PathLike, source: str | os.PathLike | None = None) -> bool:
    """True when `folder` holds a finished goae result: a readable result.json (written last, atomically) whose
    files all exist, made from `source` (the path it records as "photo" or "video", compared as resolved
    paths; None = any). `goae invert --resume` skips inputs whose folder is complete."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return False
    if source is not None:
        made_from = meta.get("photo", meta.get("video"))
        if not isinstance(made_from, str) or Path(made_from).resolve() != Path(source).resolve():
            return False
    names = [f for v in meta["files"].values() for f in (v if isinstance(v, list) else [v])]
    return all(isinstance(f, str) and (folder / f).is_file() for f in names)


def save_inversion(pipe, face, folder: str | os.PathLike, options: ExportOptions = ExportOptions(), *,
                   directions: Mapping[str, EditDirection] | None = None, result=None, overwrite: bool = False,
                   source: str | None = None, warn: Callable[[str], None] | None = None) -> Path:
    """Invert `face` (a goae.align.AlignedFace; unless `result` is given) and write its folder (module
    docstring). An existing folder raises FileExistsError before any work, unless `overwrite`. A mesh that
    cannot be made (no surface) is reported through `warn` and in result.json; any other error leaves
    nothing behind. Returns the folder."""
    t0 = time.perf_counter()
    folder = Path(folder)
    edits = resolve_names(options.edits, directions or {}) if options.edits else {}
    offset = edit_offset(directions, edits) if edits else None  # unknown names fail before any work
    _replaceable(folder, overwrite)
    try:
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            save_png(face.image, tmp / "aligned.png")
            result = pipe(face.image, face.camera, output_type=None) if result is None else result
            check_finite(result)
            files, mesh_error = _write_outputs(pipe, result, options, tmp, edits, offset, warn)
            domain = pipe.domain
            yaw, pitch = yaw_pitch_from_label(result.camera[:1].cpu(), lookat=domain.label_lookat)
            meta = {"photo": source, "files": {"aligned": "aligned.png", **files}, "domain": domain.name,
                    "face_index": face.face_index, "faces_found": len(face.faces),
                    "face_box": [float(x) for x in face.box],
                    "camera": [float(x) for x in face.camera],
                    "camera_estimated": bool(getattr(face, "camera_estimated", True)),
                    "camera_yaw_deg": float(torch.rad2deg(yaw)[0]),
                    "camera_pitch_deg": float(torch.rad2deg(pitch)[0]), "weights": getattr(pipe, "weights_label", None),
                    "edits": edits, "seconds": round(time.perf_counter() - t0, 3)}
            if getattr(face, "detector", None):  # a cat: how its crop was found, and the face itself
                meta["detector"] = face.detector
                meta["cat_face_box"] = None if face.face_box is None else [float(x) for x in face.face_box]
            if mesh_error:
                meta["mesh_error"] = mesh_error
            atomic_write_bytes(tmp / RESULT_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    except OSError as e:  # e.g. a full disk: say which result it was (writers often give no file name)
        if e.errno is None or e.filename:
            raise
        raise OSError(e.errno, e.strerror, str(folder)) from None
    return folder


def _write_outputs(pipe, result, options: ExportOptions, tmp: Path, edits, offset, warn) -> tuple[dict, str | None]:
    """Everything after the inversion, into `tmp`. -> (files by kind, mesh error or None)."""
    files: dict[str, str | list[str]] = {"reconstruction": "reconstruction.png", "depth16": "depth16.png",
                                         "depth_preview": "depth_preview.png", "ws": "ws.safetensors"}
    save_png(result.image[:1], tmp / "reconstruction.png")
    save_depth(result.image_depth[0], tmp / "depth16.png", tmp / "depth_preview.png", near=pipe.generator.ray_range[0],
               far=pipe.generator.ray_range[1])
    save_latent(tmp / "ws.safetensors", result)
    for yaw, pitch in options.views:
        name = view_file_name(yaw, pitch)
        save_png(pipe.render_view(result, pipe.view_camera(yaw, pitch), output_type=None)["image"][:1], tmp / name)
        files.setdefault("views", []).append(name)
    if options.video_frames:
        write_video(iter_views(pipe, result, pipe.orbit_cameras(options.video_frames)), tmp / "turntable.mp4",
                    fps=options.fps)
        files["video"] = "turntable.mp4"
    mesh_error = _save_mesh(pipe, result, options, tmp, files, warn) if options.mesh_resolution else None
    if offset is not None:
        files["edit"] = edit_file_name(edits)
        save_png(pipe.edit(result, offset, output_type=None).image[:1], tmp / files["edit"])
    return files, mesh_error


def _save_mesh(pipe, result, options: ExportOptions, tmp: Path, files: dict, warn) -> str | None:
    try:
        v, f, col = extract_mesh(pipe.generator, result.planes[:1], resolution=options.mesh_resolution,
                                 level=options.mesh_level)
    except ExportError as e:  # e.g. no surface at the density level asked for
        if warn is not None:
            warn(f"warning: no mesh: {e}")
        return str(e)
    save_ply(tmp / "mesh.ply", v, f, col)
    save_glb(tmp / "mesh.glb", v, f, col)
    files["mesh_ply"], files["mesh_glb"] = "mesh.ply", "mesh.glb"
    return None
