"""The app's steps, without Gradio: align a photo, choose a face, invert, view, preview, edit, video, mesh, and the
stateless API calls. Each step takes the browser session's `Session` (goae.app.state) and plain values and
returns a named result; bad input or state raises one of USER_ERRORS with a readable message (the UI shows it).

`GOAEApp` serves one pipeline (one domain: its aligner, cameras and edit directions); `AppDomains` holds one per
domain and sends each photo, and every later step of its session, to the pipeline of the domain it was aligned for.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from goae import export
from goae.align import AlignError
from goae.align.errors import NoFaceError
from goae.app.model import ModelSteps, Progress
from goae.app.results import (Aligned, ApiInversion, ApiView, Edited, Inverted, Mesh, Preview, Shown,
                              Video)
from goae.app.state import AppError, Folders, InversionCache, Session
from goae.camera import CameraError, yaw_pitch_from_label
from goae.domains import DEFAULT_DOMAIN, DomainError
from goae.edit import DirectionError, EditDirection, edit_offset, how_to_get_directions
from goae.io import atomic_write_bytes
from goae.request import Request, RequestError, check_angles, parse_box, parse_edits, parse_face_index
from goae.runtime import release_cpu_memory

# The errors a step raises for bad input or state: their message is for the visitor (anything else is a bug).
USER_ERRORS = (AlignError, AppError, CameraError, DirectionError, DomainError, export.ExportError, RequestError)
MAX_API_VIEWS = 16
# A view event's last check and its taking the page (Session.show), and a step's putting a new result in the
# session, happen one at a time: the check of a view cannot pass between a result's commit and its show().
_SHOWING = threading.RLock()


def no_progress(*args, **kwargs) -> None:
    pass


def releases_memory(fn: Callable) -> Callable:
    """After each call, the C heap's free memory goes back to the system: a model step frees hundreds of MB
    of tensors, which otherwise stay with the process, scattered over the request threads' arenas."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_cpu_memory()
    return wrapper


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------------ one pipeline
class GOAEApp:
    """The steps of one pipeline (one domain). Session steps take the session and return a named result with
    the session in it; the model work runs in `self.model` (pure steps, through ZeroGPU where the app runs on it)."""

    def __init__(self, pipe, directions: dict[str, EditDirection] | None = None, banner: str = "",
                 notes: list[str] | None = None, examples: list[str] | None = None,
                 cache_bytes: int = 512 * 2**20, folders: Folders | None = None,
                 cache: InversionCache | None = None):
        self.pipe = pipe
        self.domain = pipe.domain  # the aligner, cameras and edit directions of this pipeline
        self.directions = directions or {}
        self.banner, self.notes, self.examples = banner, notes or [], examples or []
        self.cache = cache or InversionCache(cache_bytes)
        self.folders = folders or Folders()
        self.model = ModelSteps(pipe, self.directions)
        native = int(pipe.generator.neural_rendering_resolution)
        # The model's own resolution by default; lower ones are an explicit preview choice (fewer rays,
        # the super-resolution still gives 512). Slider drags preview at half of it without super-resolution.
        self.resolutions = sorted({32, 64, native})
        self.default_resolution = native
        self.preview_resolution = self.model.preview_resolution
        self.default_frames = 120 if torch.cuda.is_available() else 24
        self.mesh_resolution = 128

    # -- sessions
    def new_session(self, session_id: str | None = None) -> Session:
        return self.folders.track(Session(folder=self.folders.session(session_id)))

    def end_session(self, session: Session | None) -> None:
        """A session ended (closed tab, expired state) or starts over with a new photo: its tri-plane caches
        and files go, and its steps still running show nothing (`Session.ended`)."""
        if isinstance(session, Session) and not session.ended:  # once: its folder may be a new photo's now
            session.ended = True
            self._remove(session.folder, session)

    def live(self, session):
        """The session the page's tab has now: `session`, or, if it ended because a new photo replaced it (and a
        step that ran meanwhile wrote it back into the page's state), the new photo's Session in its folder."""
        if isinstance(session, Session) and session.ended:
            return self.folders.current(session.folder) or session
        return session

    def end_folder(self, folder: Path) -> None:
        """A closed tab's session folder (the unload event knows only its id): whichever Session uses it ends."""
        self._remove(folder)

    def _remove(self, folder: Path, session: Session | None = None) -> None:
        self.folders.end(folder, session)
        self.cache.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _need_result(session: Session | None) -> Session:
        if not isinstance(session, Session) or session.current is None:
            raise AppError("Run the inversion first: upload a photo, then press 'Invert'.")
        return session

    def _resolution(self, resolution) -> int | None:
        """The neural rendering resolution chosen in the options (None = the model's own)."""
        if resolution is None or export.finite(resolution, "neural rendering resolution") not in self.resolutions:
            raise AppError(f"neural rendering resolution must be one of {self.resolutions}, got {resolution!r}")
        return None if int(resolution) == self.default_resolution else int(resolution)

    # -- what the page and the API say about a face
    def _yaw_pitch(self, face) -> tuple[float, float]:
        yaw, pitch = yaw_pitch_from_label(torch.as_tensor(face.camera)[None], lookat=self.domain.label_lookat)
        # + 0.0: no "-0.0°" on the page
        return round(float(np.degrees(float(yaw[0]))), 6) + 0.0, round(float(np.degrees(float(pitch[0]))), 6) + 0.0

    def _camera_text(self, face) -> str:
        yaw, pitch = self._yaw_pitch(face)
        l, t, r, b = face.box
        what = "Estimated camera" if self.domain.camera_estimated else \
            "Camera (not estimated for cats: AFHQ frontal unless set under Cat options)"
        noun = self.domain.face_noun
        if face.face_index is None:  # a face from a box the user gave, or a photo taken as the crop
            how = {"user box": "the box you gave", "as given": "the whole photo (already a 512×512 crop)"}
            which = f"**{noun}** from {how.get(getattr(face, 'detector', ''), 'the photo')}"
        else:
            which = f"**{noun}** {face.face_index + 1} of {len(face.faces)}"
        return (f"**{what}**: yaw {yaw:+.1f}°, pitch {pitch:+.1f}° (radius 2.7, focal 4.2647)  \n"
                f"{which} (crop box {l:.0f},{t:.0f} – {r:.0f},{b:.0f} px in a "
                f"{face.source_size[0]}×{face.source_size[1]} photo)")

    def _camera_json(self, face) -> dict:
        yaw, pitch = self._yaw_pitch(face)
        return {"label": [float(x) for x in face.camera], "yaw_deg": yaw, "pitch_deg": pitch,
                "camera_estimated": self.domain.camera_estimated, "domain": self.domain.name,
                "face_index": face.face_index, "faces_found": face.faces_found or len(face.faces),
                "face_box": [float(x) for x in face.box], "photo_size": list(face.source_size)}

    @staticmethod
    def _face_choices(face) -> list[tuple[str, int]]:
        def area(f):  # a human Face, or a cat's (l, t, r, b) box
            if hasattr(f, "area"):
                return f.area
            l, t, r, b = f
            return (r - l) * (b - t)
        if not face.faces:
            return []
        largest = max(range(len(face.faces)), key=lambda i: area(face.faces[i]))
        return [(f"Face {i + 1}" + (" (largest)" if i == largest else ""), i) for i in range(len(face.faces))]

    # -- session steps
    @releases_memory
    def align(self, photo, session: Session | None, face_index: int | None = None, session_id: str | None = None,
              box=None, yaw=None, pitch=None) -> Aligned:
        """Find the faces, crop the chosen one (largest by default), estimate its camera (for cats: a box given
        or detected, the camera set or AFHQ frontal: only where the domain takes them). A new photo starts the
        session over; a photo that fails leaves nothing behind."""
        options = {"box": box, "yaw": yaw, "pitch": pitch} if face_index is None else \
            (session.align_options if isinstance(session, Session) else {})
        if face_index is None:  # a new photo: the previous one's results and files go
            folder = session.folder if isinstance(session, Session) else self.folders.session(session_id)
            self.end_session(session)
            session = self.folders.track(Session(folder=folder))
        if photo is None:
            return Aligned(session)
        try:
            if isinstance(photo, bytes):  # an inline data: URL: kept as a file, for choosing another face
                photo = str(atomic_write_bytes(session.path("photo"), photo))
            face = self.domain.align(photo, face_index=face_index, **options)
            session.photo, session.face, session.edits = str(photo), face, {}
            session.domain, session.align_options = self.domain.name, options
            session.inversion = session.current = None
            aligned = str(export.save_png(face.image, session.path("aligned.png")))
        except Exception:
            if face_index is None:
                self.end_session(session)
            raise
        return Aligned(session, np.asarray(face.image), self._camera_text(face), self._face_choices(face),
                       face.face_index, face.face_index is not None and len(face.faces) > 1, aligned)

    def choose_face(self, face_index, session: Session | None) -> Aligned:
        if not isinstance(session, Session) or session.photo is None:
            raise AppError("Upload a photo first.")
        if face_index is None:
            raise AppError("Choose a face.")
        return self.align(session.photo, session, parse_face_index(face_index))

    @releases_memory
    def invert(self, session: Session | None, yaw: float, pitch: float, resolution: int,
               progress: Progress = no_progress) -> Inverted | None:
        """One encoder pass + AFA refinement + occlusion-aware mix; the tri-planes go to the session's cache.
        None when the session ended while it ran (a new photo, a closed tab): nothing is kept or shown."""
        if not isinstance(session, Session) or session.face is None:
            raise AppError("Upload a photo with a face first.")
        resolution, (yaw, pitch) = self._resolution(resolution), check_angles(yaw, pitch, what="")  # before the slow part
        if session.ended:  # replaced by a new photo before this step started
            return None
        if (reused := self._reuse_inversion(session, yaw, pitch, resolution)) is not None:
            return reused
        t0 = time.perf_counter()
        out = self.model.invert(session.face, session.path(), yaw, pitch, resolution, progress)
        with _SHOWING:
            if session.ended:  # a new photo replaced this one meanwhile (its own inversion follows)
                return None
            edit = session.current if session.current != session.inversion else None
            session.inversion = session.current = self.cache.put(session.cache_keys[0], out.entry)
            session.edits = {}
            session.show(yaw, pitch)
        self.cache.forget(edit)  # the previous inversion's edit; after show(): a view that reads it is stale then
        return Inverted(session, out.reconstruction, str(out.bundle / "reconstruction.png"),
                        str(out.bundle / "ws.safetensors"), f"Inverted in {time.perf_counter() - t0:.1f} s ({out.device}).",
                        out.view)

    def _reuse_inversion(self, session: Session, yaw: float, pitch: float, resolution) -> Inverted | None:
        """The same photo, face and options were already inverted in this session (a new photo, face or crop
        clears `inversion`): back to that inversion (without its edit) and its view, without inverting again."""
        try:
            entry = self.cache.get(session.inversion) if session.inversion else None
        except AppError:  # no longer kept: invert again
            return None
        if entry is None:
            return None
        edit = session.current if session.current != session.inversion else None
        session.current, session.edits = session.inversion, {}
        view = self.model.view(entry, yaw, pitch, resolution, session.path())
        with _SHOWING:
            session.show(yaw, pitch)
        self.cache.forget(edit)
        rec = session.path("inversion/reconstruction.png")
        return Inverted(session, _read_rgb(rec), str(rec), str(session.path("inversion/ws.safetensors")),
                        "Already inverted (the same photo, face and crop): shown again, not re-run.", view)

    # -- the view events: a preview while a slider moves, the full render when it is let go, and the settling
    # after a new result. They run one at a time, in order, in a queue of their own beside the model steps, and
    # only read the session: one that a new result, a full render or the session's end overtook shows nothing
    # (view None, image None), and writes under the session's views/ folder.
    @releases_memory
    def view(self, session: Session | None, yaw: float, pitch: float, resolution: int) -> Shown:
        """Novel view + its depth from the cached tri-planes (the inversion or its edit). view None: nothing
        inverted yet (the sliders just move), or overtaken."""
        if not isinstance(session, Session) or session.current is None:
            return Shown(session)
        resolution, (yaw, pitch) = self._resolution(resolution), check_angles(yaw, pitch, what="")
        return self._render(session, yaw, pitch, resolution, counted=True)

    @releases_memory
    def preview(self, session: Session | None, yaw: float, pitch: float) -> Preview:
        """The fast preview while a slider moves; nothing before an inversion, nor when overtaken."""
        if not isinstance(session, Session) or session.current is None or session.ended:
            return Preview(session)
        yaw, pitch = check_angles(yaw, pitch, what="")
        if session.shown == (session.current, yaw, pitch):
            # A late preview (the page sends the last one held back while the previous ran) of the position
            # whose full render is already shown: it would cover the full render with the blurry preview.
            return Preview(session)
        moment = session.moment()
        entry = self._entry(session, moment)
        if entry is None:
            return Preview(session)
        image, depth = self.model.preview(entry, yaw, pitch)
        with _SHOWING:
            if not session.still(moment):
                return Preview(session)
            session.views += 1
        return Preview(session, image, depth)

    @releases_memory
    def settle(self, session: Session | None, yaw: float, pitch: float, resolution: int) -> Shown:
        """After a new result (an inversion or edit, whose step shows its own view): its full render at the
        sliders' position is the page's last view. The two queues' outputs reach the page in either order, so a
        view shown since the last settling may have landed after the result's; and the sliders may have moved
        while the result was made. Then it is rendered again; else nothing (view None)."""
        if not isinstance(session, Session) or session.current is None or session.ended:
            return Shown(session)
        resolution, (yaw, pitch) = self._resolution(resolution), check_angles(yaw, pitch, what="")
        if session.views == session.settled and session.shown == (session.current, yaw, pitch):
            return Shown(session)
        session.settled = session.views
        return self._render(session, yaw, pitch, resolution)

    def _entry(self, session: Session, moment: tuple) -> dict | None:
        """The tri-planes of what the session shows; None when it was replaced or ended meanwhile."""
        try:
            return self.cache.get(session.current)
        except AppError:
            if session.still(moment):
                raise
            return None

    def _render(self, session: Session, yaw: float, pitch: float, resolution, counted: bool = False) -> Shown:
        """The full render for a view event (`counted`: the slider's, not the settling's)."""
        moment = session.moment()
        entry = self._entry(session, moment)
        if entry is None:
            return Shown(session)
        try:
            view = self.model.view(entry, yaw, pitch, resolution, session.views_folder())
        except Exception:
            if session.still(moment):
                raise
            view = None  # e.g. its folder went with the session: it would not be shown anyway
        with _SHOWING:
            if session.still(moment):
                session.show(yaw, pitch)
                session.views += counted
                return Shown(session, view)
        if session.ended:  # its folder went (or a new photo's session has it): leave nothing there
            shutil.rmtree(session.folder / "views", ignore_errors=True)
            with contextlib.suppress(OSError):
                session.folder.rmdir()  # made again by this view alone
        return Shown(session)

    @releases_memory
    def video(self, session: Session | None, frames: int, fps: int, resolution: int,
              progress: Progress = no_progress) -> Video:
        """Turntable (the official orbit) rendered frame by frame from the cached tri-planes, H.264 MP4."""
        session = self._need_result(session)
        frames, fps = export.whole(frames, "video frames", 1, 240), export.finite(fps, "fps", 1, 60)
        resolution = self._resolution(resolution)
        return Video(session, self.model.video(self.cache.get(session.current), frames, fps, resolution,
                                               session.path("turntable.mp4"), progress))

    @releases_memory
    def mesh(self, session: Session | None, resolution: int, progress: Progress = no_progress) -> Mesh:
        """Marching cubes of the cached tri-planes' density -> .glb (shown) and .ply."""
        session = self._need_result(session)
        resolution = export.whole(resolution, "mesh grid resolution", 16, 256)
        progress(0.1, desc=f"Sampling density on a {resolution}³ grid, marching cubes")
        out = self.model.mesh(self.cache.get(session.current), resolution, session.path())
        return Mesh(session, out.glb, out.ply, f"Mesh: {out.vertices:,} vertices, {out.faces:,} triangles.")

    @releases_memory
    def edit(self, session: Session | None, yaw: float, pitch: float, resolution: int, *strengths: float,
             progress: Progress = no_progress) -> Edited | None:
        """W+ edit of the inversion (GOAEPipeline.edit); views, video and mesh then follow the edited face.
        None when the session ended while it ran."""
        session = self._need_result(session)
        if not self.directions:
            raise AppError(how_to_get_directions(self.domain.name))
        edits = parse_edits(dict(zip(self.directions, strengths)))
        resolution, (yaw, pitch) = self._resolution(resolution), check_angles(yaw, pitch, what="")
        session.edits = {k: v for k, v in edits.items() if v}
        if not session.edits:  # all zero: back to the inversion itself
            edit = session.current if session.current != session.inversion else None
            session.current = session.inversion
            view = self.model.view(self.cache.get(session.inversion), yaw, pitch, resolution, session.path())
            with _SHOWING:
                session.show(yaw, pitch)
            self.cache.forget(edit)
            path = session.path("inversion/reconstruction.png")
            return Edited(session, _read_rgb(path), str(path), view)
        progress(0.1, desc="Editing")
        out = self.model.edit(self.cache.get(session.inversion), edit_offset(self.directions, edits), yaw, pitch,
                              resolution, session.path(), export.edit_file_name(session.edits))
        with _SHOWING:
            if session.ended:
                return None
            session.current = self.cache.put(session.cache_keys[1], out.entry)
            session.show(yaw, pitch)
        return Edited(session, out.image, out.path, out.view)

    # -- stateless API calls
    def _request(self, **fields) -> Request:
        """The call's options checked at once (goae.request), against this domain and its directions."""
        return Request.parse(**fields, domain=self.domain, directions=self.directions, notes=self.notes,
                             max_views=MAX_API_VIEWS)

    @releases_memory
    def api_view(self, photo, face_index=None, yaw=0.0, pitch=0.0, edits=None, box=None, camera=None,
                 progress: Progress = no_progress) -> ApiView:
        """Stateless: the photo's head at yaw/pitch, edited by `edits` ({name: strength}) if given. The inversion
        of the same photo, face and options is kept in the app's tri-plane cache, so later calls only render."""
        if photo is None:
            raise AppError("Send a photo.")
        req = self._request(face_index=face_index, edits=edits, box=box, camera=camera)
        yaw, pitch = check_angles(yaw, pitch, what="")
        face = self.domain.align(photo, face_index=req.face_index, **req.align_options())
        data = photo if isinstance(photo, bytes) else Path(photo).read_bytes()
        key = repr((self.domain.name, face.face_index, req.align_options()))
        cached = self.folders.api_cache(hashlib.sha256(data + key.encode()).hexdigest()[:32])
        try:
            entry = self.cache.get(str(cached))
        except AppError:
            entry = self.cache.get(self.cache.put(cached, self.model.entry(face, progress)))
        folder = self.folders.api_call()
        if any(req.edits.values()):
            offset = edit_offset(self.directions, {k: v for k, v in req.edits.items() if v})
            out = self.model.edit(entry, offset, yaw, pitch, None, folder, export.edit_file_name(req.edits))
            view, edited = out.view, out.image
        else:
            view, edited = self.model.view(entry, yaw, pitch, None, folder), None
        return ApiView(view.image, view.depth_preview, edited, self._camera_json(face))

    @releases_memory
    def api_invert(self, photo, face_index=None, views=None, video: bool = False, mesh: bool = False,
                   edits=None, box=None, camera=None, progress: Progress = no_progress) -> ApiInversion:
        """The stateless endpoint: one photo in; crop, camera, reconstruction, views and files out. `box`
        ([l, t, r, b]) and `camera` ([yaw, pitch] degrees) where the domain takes them (cats)."""
        if photo is None:
            raise AppError("Send a photo.")
        req = self._request(face_index=face_index, views=views, edits=edits, box=box, camera=camera)
        options = export.ExportOptions(views=list(req.views), video_frames=self.default_frames if video else 0, fps=24,
                                       mesh_resolution=self.mesh_resolution if mesh else 0, edits=dict(req.edits))
        face = self.domain.align(photo, face_index=req.face_index, **req.align_options())
        folder = self.folders.api_call()
        try:
            reconstruction = self.model.api(face, folder, options, progress)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        views_out = [(str(folder / export.view_file_name(y, p)), f"yaw {y:+g}°, pitch {p:+g}°") for y, p in req.views]
        files = sorted(str(p) for p in folder.iterdir() if p.is_file())
        return ApiInversion(np.asarray(face.image), self._camera_json(face), reconstruction, views_out, files)


# ------------------------------------------------------------------------------------------ the domains
class AppDomains:
    """The app's pipelines, one per domain (goae.domains: human portraits, cats), sharing the session folders
    and the tri-plane cache. A session belongs to the domain its photo was aligned for; every later step
    (views, video, mesh, edits) goes to that pipeline."""

    def __init__(self, apps: dict[str, GOAEApp]):
        if not apps:
            raise AppError("no pipeline loaded")
        self.apps = apps
        self.default = apps.get(DEFAULT_DOMAIN) or next(iter(apps.values()))

    def get(self, domain: str | None) -> GOAEApp:
        name = domain or self.default.domain.name
        if name not in self.apps:
            raise AppError(f"no {name!r} pipeline is loaded here; this app inverts: "
                           f"{', '.join(a.domain.title.lower() + 's' for a in self.apps.values())}")
        return self.apps[name]

    def live(self, session):
        return self.default.live(session)  # the pipelines share the folders

    def of(self, session) -> GOAEApp:
        """The app of the session's domain (the default one before any photo)."""
        return self.get(session.domain) if isinstance(session, Session) and session.domain in self.apps else self.default

    @property
    def choices(self) -> list[tuple[str, str]]:
        return [(a.domain.title, name) for name, a in self.apps.items()]

    def align(self, photo, session, domain: str | None = None, session_id: str | None = None, box=None,
              yaw=None, pitch=None) -> Aligned:
        """A new photo (or a new domain for it) with the chosen domain's aligner; the box and camera only where
        that domain takes them. A photo without a face says which other loaded domain might fit it."""
        app = self.get(domain)
        options = {}
        if app.domain.accepts_box:
            options["box"] = parse_box(box)
        if app.domain.accepts_camera:  # the sliders' values; their ranges are the aligner's to check
            options["yaw"], options["pitch"] = check_angles(yaw or 0, pitch or 0, what="camera")
        try:
            return app.align(photo, session, session_id=session_id, **options)
        except NoFaceError as e:
            hints = [f"If it is a {d.name}, choose '{d.title}' above." for d in (a.domain for a in self.apps.values())
                     if d is not app.domain and not re.search(rf"\b{d.name}\b", str(e))]
            if hints:
                raise type(e)(" ".join([str(e), *hints])) from None
            raise

    def api_view(self, photo, face_index=None, yaw=0.0, pitch=0.0, edits=None, domain=None, box=None, camera=None,
                 progress: Progress = no_progress) -> ApiView:
        return self.get(domain or None).api_view(photo, face_index, yaw, pitch, edits, box, camera, progress=progress)

    def api_invert(self, photo, face_index=None, views=None, video=False, mesh=False, edits=None, domain=None,
                   box=None, camera=None, progress: Progress = no_progress) -> ApiInversion:
        return self.get(domain or None).api_invert(photo, face_index, views, video, mesh, edits, box, camera,
                                                   progress=progress)
