"""GOAE web demo (Gradio Blocks; also the Hugging Face Space entry point, `app_file: app.py`).

    python app.py [--weights REPO_OR_DIR | random | random-small] [--directions DIR]
                  [--host 127.0.0.1] [--port 7860] [--share]

photo -> aligned crop + estimated camera -> one inversion -> views from the cached tri-planes (yaw/pitch
sliders), turntable video, depth map, mesh (.glb/.ply), semantic edits, a download for every output.

Settings come from the command line or the environment (a Space has only the environment):
  GOAE_WEIGHTS     pipeline folder or Hub repo id; 'random' / 'random-small' for seeded random weights.
                   Unset or not loadable (e.g. offline): the app runs on random weights with a banner.
  GOAE_DIRECTIONS  folder of edit direction files (age.npy, anger.npy, glass.npy, ...); default none.
  GOAE_EXAMPLES    folder of example photos shown under the upload box; default none.

One model, loaded once at start-up, is shared by every visitor; all that belongs to a visitor (the
aligned face, the inversion with its tri-planes, the files written) lives in that browser session's
`gr.State`. Model calls share one queue slot (`concurrency_id`), so two visitors never run the model
at the same time and never see each other's results.
"""
from __future__ import annotations

import argparse
import base64
import functools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch

from goae import export
from goae.align import AlignError, align_face
from goae.camera import CameraError, camera_label_degrees, yaw_pitch_from_label
from goae.edit import DirectionError, EditDirection, directions_for, edit_offset, random_weights
from goae.runtime import setup_runtime

log = logging.getLogger("goae.app")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EDIT_LABELS = {"glass": "glasses"}
MODEL_QUEUE = "model"  # every event that runs the networks shares this one queue slot
FALLBACK_WEIGHTS = "random"  # what the app runs when no weights load: the real architecture, random weights


class AppError(ValueError):
    """A request the app cannot serve in the session's current state (e.g. no inversion yet)."""


# ------------------------------------------------------------------------------------------ model set-up
def load_model(weights: str | None, device, seed: int = 0):
    """(pipeline, banner). Falls back to the full-size random model, with a banner, when no weights load
    (none configured, offline, missing files, a damaged checkpoint with NaN values)."""
    from goae.pipeline import load_pipeline

    reason = "no weights configured (set GOAE_WEIGHTS or --weights)"
    if weights:
        try:
            pipe = load_pipeline(weights, seed=seed, device=device)
            export.check_weights(pipe)
        except Exception as e:  # the demo still starts
            log.warning("could not load weights %r: %s", weights, e)
            reason = f"the weights `{weights}` could not be loaded: {e}"
        else:
            if random_weights(pipe):
                return pipe, f"Running on **random weights** (`{weights}`): results are not faces."
            return pipe, ""
    pipe = load_pipeline(FALLBACK_WEIGHTS, seed=seed, device=device)
    return pipe, f"Running on **random weights** because {reason}. Results are not faces."


# ------------------------------------------------------------------------------------------ session state
@dataclass
class Session:
    """Everything one browser session owns. Lives in gr.State: never shared between visitors."""
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="goae-app-")))
    photo: Any = None            # path or bytes of the current photo
    face: Any = None             # goae.align.AlignedFace
    result: Any = None           # GOAEOutput of the inversion (the cached tri-planes)
    current: Any = None          # GOAEOutput shown: the inversion or its edit
    edits: dict[str, float] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.folder / name


def delete_session(session: Session | None) -> None:
    if isinstance(session, Session):
        shutil.rmtree(session.folder, ignore_errors=True)


def _save_png(image, path: Path) -> str:
    return str(export.save_png(image, path))


def user_errors(fn: Callable) -> Callable:
    """Bad input and state -> gr.Error with its message; anything else -> a short error (details in the log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (AlignError, AppError, CameraError, DirectionError, export.ExportError) as e:
            raise gr.Error(str(e), duration=None, print_exception=False) from None
        except Exception as e:
            log.exception("error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(e).__name__}: {e}). The session still works; "
                           "try again or another photo.", duration=None, print_exception=False) from None
    return wrapper


def photo_input(**kwargs) -> gr.Image:
    """gr.Image whose upload reaches goae.align untouched (path or bytes), so unreadable, corrupt or huge
    files get align's clear messages instead of a failure inside Gradio's own image decoding.

    The preprocess step is replaced on the instance: a gr.Image subclass would do the same, but Gradio
    writes a .pyi stub next to the source file of every component subclass."""
    image = gr.Image(**kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path

    image.preprocess = preprocess
    return image


# ------------------------------------------------------------------------------------------ callbacks
class GOAEApp:
    """The app's callbacks. Each takes the session and returns the new session plus component values."""

    def __init__(self, pipe, directions: dict[str, EditDirection] | None = None, banner: str = "",
                 notes: list[str] | None = None, examples: list[str] | None = None):
        self.pipe = pipe
        self.directions = directions or {}
        self.banner, self.notes, self.examples = banner, notes or [], examples or []
        on_gpu = pipe.device.type == "cuda"
        native = int(pipe.generator.neural_rendering_resolution)
        # The model's own resolution by default; lower ones are an explicit preview choice (fewer rays,
        # the super-resolution still gives 512).
        self.resolutions = sorted({32, 64, native})
        self.default_resolution = native
        self.default_frames = 120 if on_gpu else 24

    # -- helpers
    @staticmethod
    def _session(session: Session | None) -> Session:
        return session if isinstance(session, Session) else Session()

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

    def _render(self, result, cameras: torch.Tensor, resolution) -> dict[str, torch.Tensor]:
        """Cached tri-planes at cameras [V,25] with a chosen neural-rendering resolution (no re-encoding)."""
        # render_view honours the pipeline's fast path (if enabled); a lower resolution is its preview mode.
        return self.pipe.render_view(result, cameras, ws=result.ws[:1], planes=result.planes[:1],
                                     neural_rendering_resolution=self._resolution(resolution), output_type=None)

    @staticmethod
    def _camera_text(face) -> str:
        yaw, pitch = yaw_pitch_from_label(torch.as_tensor(face.camera)[None])
        l, t, r, b = face.box
        return (f"**Estimated camera**: yaw {np.degrees(float(yaw[0])):+.1f}°, pitch {np.degrees(float(pitch[0])):+.1f}° "
                f"(radius 2.7, focal 4.2647)  \n**Face** {face.face_index + 1} of {len(face.faces)} "
                f"(crop box {l:.0f},{t:.0f} – {r:.0f},{b:.0f} px in a {face.source_size[0]}×{face.source_size[1]} photo)")

    @staticmethod
    def _face_choices(face) -> list[tuple[str, int]]:
        largest = max(range(len(face.faces)), key=lambda i: face.faces[i].area)
        return [(f"Face {i + 1}" + (" (largest)" if i == largest else ""), i) for i in range(len(face.faces))]

    # -- events
    @staticmethod
    def clear(session: Session | None) -> Session:
        """New photo: forget the previous one's results (the files go with the old session folder)."""
        delete_session(session)
        return Session()

    @user_errors
    def align(self, photo, session: Session | None, face_index: int | None = None):
        """Find the faces, crop the chosen one (largest by default), estimate its camera."""
        session = self._session(session)
        if photo is None:
            return session, None, "", gr.update(choices=[], value=None, visible=False), None
        face = align_face(photo, face_index=face_index)
        session.photo, session.face, session.result, session.current, session.edits = photo, face, None, None, {}
        aligned = _save_png(face.image, session.path("aligned.png"))
        radio = gr.update(choices=self._face_choices(face), value=face.face_index, visible=len(face.faces) > 1)
        return session, np.asarray(face.image), self._camera_text(face), radio, aligned

    @user_errors
    def choose_face(self, face_index, session: Session | None):
        if not isinstance(session, Session) or session.photo is None:
            raise AppError("Upload a photo first.")
        return self.align(session.photo, session, None if face_index is None else int(face_index))

    @user_errors
    def invert(self, session: Session | None, yaw: float, pitch: float, resolution: int,
               progress=gr.Progress()):
        """One encoder pass + AFA refinement + occlusion-aware mix; the result is cached in the session."""
        if not isinstance(session, Session) or session.face is None:
            raise AppError("Upload a photo with a face first.")
        self._resolution(resolution)  # a bad option fails before the slow part
        progress(0.05, desc="Inverting (encoder, AFA refinement, occlusion-aware mix)")
        t0 = time.perf_counter()
        result = self.pipe(session.face.image, session.face.camera, output_type=None)
        progress(0.8, desc="Rendering")
        # The library's bundle writer (as `goae invert`): reconstruction, depth, W+ code, result.json.
        folder = export.save_inversion(self.pipe, session.face, session.path("inversion"), result=result,
                                       overwrite=True)
        session.result, session.current, session.edits = result, result, {}
        status = f"Inverted in {time.perf_counter() - t0:.1f} s ({self.pipe.device.type})."
        view = self.view(session, yaw, pitch, resolution)
        return (session, export.to_uint8(result.image[:1])[0], str(folder / "reconstruction.png"),
                str(folder / "ws.safetensors"), status, *view[1:])

    @user_errors
    def view(self, session: Session | None, yaw: float, pitch: float, resolution: int):
        """Novel view + its depth from the cached tri-planes (the inversion or its edit)."""
        if not isinstance(session, Session) or session.current is None:
            return session, None, None, None, None, None   # nothing inverted yet: the sliders just move
        cam = camera_label_degrees(export.finite(yaw, "yaw"), export.finite(pitch, "pitch"))
        out = self._render(session.current, cam, resolution)
        image = export.to_uint8(out["image"])[0]
        view_path = _save_png(image, session.path("view.png"))
        depth16, preview = session.path("depth16.png"), session.path("depth_preview.png")
        near, far = self.pipe.generator.ray_range
        export.save_depth(out["image_depth"][0], depth16, preview, near=near, far=far)
        return session, image, view_path, str(preview), str(preview), str(depth16)

    @user_errors
    def video(self, session: Session | None, frames: int, fps: int, resolution: int, progress=gr.Progress()):
        """Turntable (the official orbit) rendered frame by frame from the cached tri-planes, H.264 MP4."""
        session = self._need_result(session)
        frames, fps = export.whole(frames, "video frames", 1, 240), export.finite(fps, "fps", 1, 60)
        self._resolution(resolution)
        cams = export.orbit_cameras(frames)
        progress((0, frames), desc="Rendering turntable frames", unit="frames")

        def batches():
            for i in range(frames):
                yield export.to_uint8(self._render(session.current, cams[i:i + 1], resolution)["image"])
                progress((i + 1, frames), desc="Rendering turntable frames", unit="frames")

        path = export.write_video(batches(), session.path("turntable.mp4"), fps=fps)
        return session, str(path), str(path)

    @user_errors
    def mesh(self, session: Session | None, resolution: int, progress=gr.Progress()):
        """Marching cubes of the cached tri-planes' density -> .glb (shown) and .ply."""
        session = self._need_result(session)
        resolution = export.whole(resolution, "mesh grid resolution", 16, 256)
        progress(0.1, desc=f"Sampling density on a {resolution}³ grid")
        # "auto": EG3D's density level 10, or the densest 10% where the density never reaches it (random weights).
        v, f, c = export.extract_mesh(self.pipe.generator, session.current.planes[:1], resolution=resolution,
                                      level="auto")
        progress(0.9, desc="Writing .glb and .ply")
        glb = export.save_glb(session.path("mesh.glb"), v, f, c)
        ply = export.save_ply(session.path("mesh.ply"), v, f, c)
        return session, str(glb), str(glb), str(ply), f"Mesh: {len(v):,} vertices, {len(f):,} triangles."

    @user_errors
    def edit(self, session: Session | None, yaw: float, pitch: float, resolution: int, *strengths: float,
             progress=gr.Progress()):
        """W+ edit of the inversion (GOAEPipeline.edit); views, video and mesh then follow the edited face."""
        session = self._need_result(session)
        if not self.directions:
            raise AppError("No edit directions loaded (set GOAE_DIRECTIONS or --directions).")
        edits = {name: export.finite(a, f"strength of {name!r}") for name, a in zip(self.directions, strengths)}
        if all(a == 0 for a in edits.values()):
            session.current, session.edits = session.result, {}
        else:
            progress(0.1, desc="Editing")
            session.current = self.pipe.edit(session.result, edit_offset(self.directions, edits), output_type=None)
            session.edits = {k: v for k, v in edits.items() if v}
        image = export.to_uint8(session.current.image[:1])[0]
        path = _save_png(image, session.path(export.edit_file_name(session.edits)))
        return (session, image, path, *self.view(session, yaw, pitch, resolution)[1:])


# ------------------------------------------------------------------------------------------ layout
def build_demo(app: GOAEApp) -> gr.Blocks:
    with gr.Blocks(title="GOAE: 3D GAN inversion", delete_cache=(3600, 3600)) as demo:
        session = gr.State(None, time_to_live=4 * 3600, delete_callback=delete_session)
        gr.Markdown("# GOAE: one portrait photo → 3D head\nUpload a photo (or use the webcam), press **Invert**, "
                    "then turn the head, make a turntable video, a depth map, a mesh, or edit it.")
        if app.banner:
            gr.Markdown(f"⚠️ {app.banner}", elem_id="banner")
        if app.notes:
            with gr.Accordion("Notes on the edit direction files", open=False):
                gr.Markdown("\n".join(f"- {n}" for n in app.notes), elem_id="direction-notes")
        with gr.Row():
            with gr.Column():
                photo = photo_input(label="Photo", type="filepath", image_mode=None, format="png",
                                   sources=["upload", "webcam", "clipboard"], elem_id="photo")
                faces = gr.Radio(label="Several faces found: choose one", choices=[], visible=False, elem_id="faces")
                if app.examples:
                    gr.Examples(examples=[[p] for p in app.examples], inputs=[photo], label="Examples")
                invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                with gr.Accordion("Options", open=False):
                    resolution = gr.Dropdown(app.resolutions, value=app.default_resolution, label="Neural rendering "
                                             "resolution (the model's own by default; lower = faster previews)")
                    frames = gr.Slider(4, 240, value=app.default_frames, step=1, label="Video frames", elem_id="frames")
                    fps = gr.Slider(6, 60, value=24, step=1, label="Video frames per second")
                    mesh_res = gr.Dropdown([64, 96, 128, 192, 256], value=128, label="Mesh grid resolution",
                                           elem_id="mesh-res")
            with gr.Column():
                aligned = gr.Image(label="Aligned crop (512×512)", interactive=False, format="png", elem_id="aligned")
                camera_md = gr.Markdown(elem_id="camera")
                status = gr.Markdown(elem_id="status")
        with gr.Tabs():
            with gr.Tab("View"):
                with gr.Row():
                    recon = gr.Image(label="Reconstruction (photo's camera)", interactive=False, format="png",
                                     elem_id="recon")
                    view = gr.Image(label="Novel view", interactive=False, format="png", elem_id="view")
                with gr.Row():
                    yaw = gr.Slider(-60, 60, value=0, step=1, label="Yaw (degrees)", elem_id="yaw")
                    pitch = gr.Slider(-30, 30, value=0, step=1, label="Pitch (degrees)", elem_id="pitch")
                with gr.Row():
                    dl_aligned = gr.DownloadButton("Aligned crop", visible=False, size="sm")
                    dl_recon = gr.DownloadButton("Reconstruction", visible=False, size="sm")
                    dl_view = gr.DownloadButton("View", visible=False, size="sm", elem_id="dl-view")
                    dl_latent = gr.DownloadButton("W+ code (.safetensors)", visible=False, size="sm")
            with gr.Tab("Video"):
                video_btn = gr.Button("Make turntable video", elem_id="video-btn")
                video = gr.Video(label="Turntable", interactive=False, elem_id="video")
                dl_video = gr.DownloadButton("Video (.mp4)", visible=False, size="sm")
            with gr.Tab("Depth"):
                depth = gr.Image(label="Depth of the current view (near = bright)", interactive=False,
                                 format="png", elem_id="depth")
                with gr.Row():
                    dl_depth_preview = gr.DownloadButton("Depth preview (.png)", visible=False, size="sm")
                    dl_depth16 = gr.DownloadButton("Depth, 16-bit (.png)", visible=False, size="sm")
            with gr.Tab("Mesh"):
                mesh_btn = gr.Button("Extract mesh", elem_id="mesh-btn")
                model3d = gr.Model3D(label="Mesh", elem_id="model3d", clear_color=(0.9, 0.9, 0.9, 1.0))
                mesh_md = gr.Markdown()
                with gr.Row():
                    dl_glb = gr.DownloadButton("Mesh (.glb)", visible=False, size="sm")
                    dl_ply = gr.DownloadButton("Mesh (.ply)", visible=False, size="sm")
            with gr.Tab("Edit"):
                sliders = []
                if app.directions:
                    with gr.Row():
                        for name in app.directions:
                            sliders.append(gr.Slider(-3, 3, value=0, step=0.1, label=EDIT_LABELS.get(name, name),
                                                     elem_id=f"edit-{name}"))
                    edit_btn = gr.Button("Apply edits", elem_id="edit-btn")
                else:
                    gr.Markdown("No edit directions loaded: set `GOAE_DIRECTIONS` (or `--directions`) to a folder "
                                "with `age.npy`, `anger.npy`, `glass.npy`, ...")
                    edit_btn = None
                edited = gr.Image(label="Edited (photo's camera)", interactive=False, format="png", elem_id="edited")
                dl_edit = gr.DownloadButton("Edited image", visible=False, size="sm")

        def show(*paths):  # download buttons appear once their file exists
            return [gr.update(value=p, visible=p is not None) for p in paths]

        view_outputs = [view, dl_view, depth, dl_depth_preview, dl_depth16]
        cleared = [aligned, camera_md, faces, dl_aligned, recon, view, video, depth, model3d,
                   dl_recon, dl_view, dl_latent, dl_video, dl_depth_preview, dl_depth16, dl_glb, dl_ply]

        def clear(s):
            hidden = gr.update(choices=[], value=None, visible=False)
            return (app.clear(s), None, "", hidden, *show(None), None, None, None, None, None, *show(*[None] * 8))

        def align(p, s):
            s, image, text, radio, path = app.align(p, s)
            return s, image, text, radio, *show(path)

        def choose(i, s):
            s, image, text, radio, path = app.choose_face(i, s)
            return s, image, text, radio, *show(path)

        def invert(s, y, p, r, progress=gr.Progress()):
            s, rec, rec_path, latent, msg, image, view_path, dep, prev, d16 = app.invert(s, y, p, r, progress=progress)
            return (s, rec, *show(rec_path, latent), msg, image, *show(view_path), dep, *show(prev, d16))

        def render(s, y, p, r):
            s, image, view_path, dep, prev, d16 = app.view(s, y, p, r)
            return s, image, *show(view_path), dep, *show(prev, d16)

        def make_video(s, n, f, r, progress=gr.Progress()):
            s, v, path = app.video(s, n, f, r, progress=progress)
            return s, v, *show(path)

        def make_mesh(s, r, progress=gr.Progress()):
            s, glb, glb_path, ply, msg = app.mesh(s, r, progress=progress)
            return s, glb, *show(glb_path, ply), msg

        photo.change(clear, [session], [session, *cleared], queue=False).then(
            align, [photo, session], [session, aligned, camera_md, faces, dl_aligned])
        faces.input(choose, [faces, session], [session, aligned, camera_md, faces, dl_aligned])
        model = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        invert_btn.click(invert, [session, yaw, pitch, resolution],
                         [session, recon, dl_recon, dl_latent, status, *view_outputs], **model)
        for slider in (yaw, pitch):
            slider.change(render, [session, yaw, pitch, resolution], [session, *view_outputs],
                          trigger_mode="always_last", show_progress="minimal", **model)
        video_btn.click(make_video, [session, frames, fps, resolution], [session, video, dl_video], **model)
        mesh_btn.click(make_mesh, [session, mesh_res], [session, model3d, dl_glb, dl_ply, mesh_md], **model)
        if edit_btn is not None:
            def do_edit(s, y, p, r, *a, progress=gr.Progress()):
                s, image, path, v_image, view_path, dep, prev, d16 = app.edit(s, y, p, r, *a, progress=progress)
                return (s, image, *show(path), v_image, *show(view_path), dep, *show(prev, d16))
            edit_btn.click(do_edit, [session, yaw, pitch, resolution, *sliders],
                           [session, edited, dl_edit, *view_outputs], **model)
    demo.queue(default_concurrency_limit=1)
    return demo


# ------------------------------------------------------------------------------------------ entry points
def list_examples(folder: str | None) -> list[str]:
    if not folder or not Path(folder).is_dir():
        return []
    return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def ensure_landmarker() -> None:
    """mediapipe's face_landmarker.task is not in the wheel: fetch it once (a Space has no set-up step)."""
    from goae.landmarker import LandmarkerModelMissing, download_landmarker, find_landmarker
    try:
        find_landmarker()
    except LandmarkerModelMissing:
        try:
            download_landmarker()
        except Exception as e:  # offline: photos will then fail with the landmarker's own instructions
            log.warning("face landmarker model missing and could not be downloaded: %s", e)


def create_app(weights: str | None = None, directions: str | None = None, examples: str | None = None,
               device: str | None = None, fast: bool | None = None) -> GOAEApp:
    """Load the model (once) and the edit directions; arguments default to the GOAE_* environment.
    `fast` (GOAE_FAST=1): the pipeline's fast path (bf16 where the device has it) instead of fp32."""
    weights = weights or os.environ.get("GOAE_WEIGHTS")
    directions = directions or os.environ.get("GOAE_DIRECTIONS")
    examples = examples or os.environ.get("GOAE_EXAMPLES")
    fast = os.environ.get("GOAE_FAST", "0").lower() in ("1", "true", "yes") if fast is None else fast
    device = setup_runtime(device or "auto")  # the device, TF32 off, the CPU allocator ($GOAE_TUNE_ALLOCATOR)
    ensure_landmarker()
    pipe, banner = load_model(weights, device)
    if fast:
        pipe.enable_fast_path("auto")
        log.info("goae app: fast path %s", pipe.fast_path)
    dirs, notes = directions_for(pipe, directions)
    log.info("goae app: weights %s on %s, %d edit directions", pipe.weights_label, device, len(dirs))
    return GOAEApp(pipe, dirs, banner, notes, list_examples(examples))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOAE web demo")
    p.add_argument("--weights", help="pipeline folder or Hub repo id, or random / random-small ($GOAE_WEIGHTS)")
    p.add_argument("--directions", help="folder of edit direction files ($GOAE_DIRECTIONS)")
    p.add_argument("--examples", help="folder of example photos ($GOAE_EXAMPLES)")
    p.add_argument("--host", default=None, help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also make a temporary public gradio.live link")
    p.add_argument("--fast", action="store_true", default=None,
                   help="fast path: bf16 autocast where the CPU/GPU has it ($GOAE_FAST=1); default fp32")
    return p.parse_args(argv)


def launch(demo: gr.Blocks, app: GOAEApp, host: str | None = None, port: int | None = None, share: bool = False):
    allowed = sorted({str(Path(p).parent) for p in app.examples})
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size="30mb",
                       allowed_paths=allowed, show_error=False, footer_links=["gradio"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _args = parse_args()
    goae_app = create_app(_args.weights, _args.directions, _args.examples, fast=_args.fast)
    demo = build_demo(goae_app)
    launch(demo, goae_app, _args.host, _args.port, _args.share)
else:  # imported (Hugging Face Spaces, `gradio app.py`): build from the environment
    goae_app = create_app()
    demo = build_demo(goae_app)
