"""The page: its layout (Blocks) and its wiring. Each event's callback calls one step of the service
(goae.app.service) and shows its named result in the page's components; `user_errors` turns the step's errors
into messages."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from goae.app.api import add_api
from goae.app.components import GOAEBlocks, hide_paths, photo_input, user_errors
from goae.app.results import Aligned
from goae.app.service import AppDomains, GOAEApp
from goae.app.state import SESSION_TTL_S, Session
from goae.edit import how_to_get_directions

EDIT_LABELS = {"glass": "glasses"}
# Queues: the events that make a result (inversions, edits, video, mesh, the stateless API) share one slot; turning
# the head (slider previews, full renders, the settling after a result) has a slot of its own beside it, so a
# slider answers while an inversion runs (on ZeroGPU each call has its own GPU worker). The view events run one
# at a time, in order, only read the session (never an output: a step of the other queue owns it) and show
# nothing once a new result, a full render or the session's end overtook them (goae.app.service).
MODEL_QUEUE = "model"
VIEW_QUEUE = "view"


def build_demo(app: GOAEApp | AppDomains) -> gr.Blocks:
    apps = app if isinstance(app, AppDomains) else AppDomains({app.domain.name: app})
    app = apps.default  # the settings the pipelines share (resolutions, frames, folders, cache)
    has_cat = "cat" in apps.apps

    def takes_options(domain: str) -> bool:  # the photo options (a box, the camera) are offered where they are taken
        return apps.get(domain).domain.accepts_box or apps.get(domain).domain.accepts_camera

    with GOAEBlocks(title="GOAE: 3D GAN inversion", delete_cache=(3600, 3600)) as demo:
        def end_state(s):  # a plain function: Gradio deep-copies the page config (and a bound method's app) per page
            app.end_session(s)
        session = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=end_state)
        what = "a portrait or a cat" if has_cat and len(apps.apps) > 1 else ("a cat" if has_cat else "a portrait")
        gr.Markdown(f"# GOAE: one photo of {what} → 3D head\nUpload a photo (or use the webcam, or click an "
                    "example): the app finds the face and inverts it. Then turn the head, make a turntable video, a "
                    "depth map, a mesh, or edit it.")
        banners = list(dict.fromkeys(a.banner for a in apps.apps.values() if a.banner))
        if banners:
            gr.Markdown("\n\n".join(f"⚠️ {b}" for b in banners), elem_id="banner")
        notes = [n for a in apps.apps.values() for n in a.notes]
        if notes:
            with gr.Accordion("Notes on the edit direction files", open=False):
                gr.Markdown("\n".join(f"- {n}" for n in notes), elem_id="direction-notes")
        example_dirs = sorted({Path(p).parent for p in app.examples})
        with gr.Row():
            with gr.Column():
                subject = gr.Radio(apps.choices, value=app.domain.name, label="What is in the photo",
                                   visible=len(apps.apps) > 1, elem_id="domain")
                photo = photo_input(example_dirs, label="Photo", type="filepath", image_mode=None, format="png",
                                    sources=["upload", "webcam", "clipboard"], elem_id="photo")
                with gr.Accordion("Cat options", open=True, visible=takes_options(app.domain.name),
                                  elem_id="cat-options") as cat_options:
                    gr.Markdown("A cat's camera is **not estimated**: it is the AFHQ frontal camera unless you set "
                                "yaw and pitch here. The cat face is found by a detector; if it misses, give the "
                                "head's box (ears to chin) in pixels of the photo.")
                    cat_box = gr.Textbox("", label="Cat head box: left,top,right,bottom (empty: detect)",
                                         placeholder="e.g. 120,40,330,260", elem_id="cat-box")
                    with gr.Row():
                        cat_yaw = gr.Slider(-60, 60, value=0, step=1, label="Photo's camera yaw (degrees)",
                                            elem_id="cat-yaw")
                        cat_pitch = gr.Slider(-30, 30, value=0, step=1, label="Photo's camera pitch (degrees)",
                                              elem_id="cat-pitch")
                    crop_btn = gr.Button("Crop again with these", size="sm", elem_id="cat-crop")
                faces = gr.Radio(label="Several faces found: choose one", choices=[], visible=False, elem_id="faces")
                if app.examples:
                    gr.Examples(examples=[[p] for p in app.examples], inputs=[photo], label="Examples",
                                elem_id="examples", api_visibility="private")
                invert_btn = gr.Button("Invert", variant="primary", elem_id="invert")
                with gr.Accordion("Options", open=False):
                    resolution = gr.Dropdown(app.resolutions, value=app.default_resolution, label="Neural rendering "
                                             "resolution (the model's own by default; lower = faster)")
                    frames = gr.Slider(4, 240, value=app.default_frames, step=1, label="Video frames", elem_id="frames")
                    fps = gr.Slider(6, 60, value=24, step=1, label="Video frames per second")
                    mesh_res = gr.Dropdown([64, 96, 128, 192, 256], value=app.mesh_resolution,
                                           label="Mesh grid resolution", elem_id="mesh-res")
            with gr.Column():
                aligned = gr.Image(label="Aligned crop (512×512)", interactive=False, format="png", elem_id="aligned")
                camera_md = gr.Markdown(label="Camera and face", elem_id="camera")
                status = gr.Markdown(label="Status", elem_id="status")
        with gr.Tabs():
            with gr.Tab("View"):
                with gr.Row():
                    recon = gr.Image(label="Reconstruction (photo's camera)", interactive=False, format="png",
                                     elem_id="recon")
                    view = gr.Image(label="Novel view (a quick preview while a slider moves)", interactive=False,
                                    format="png", elem_id="view")
                view_info = gr.Markdown(label="What the view shows", elem_id="view-info")
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
                mesh_md = gr.Markdown(label="Mesh size")
                with gr.Row():
                    dl_glb = gr.DownloadButton("Mesh (.glb)", visible=False, size="sm")
                    dl_ply = gr.DownloadButton("Mesh (.ply)", visible=False, size="sm")
            with gr.Tab("Edit"):
                # One group of sliders per domain: a cat is offered only the cat directions, and so on.
                edit_groups, edit_controls = {}, {}
                for dname, dapp in apps.apps.items():
                    prefix = "" if dname == app.domain.name else f"{dname}-"
                    with gr.Group(visible=dname == app.domain.name) as group:
                        sliders = []
                        if dapp.directions:
                            with gr.Row():
                                for name in dapp.directions:
                                    sliders.append(gr.Slider(-3, 3, value=0, step=0.1,
                                                             label=EDIT_LABELS.get(name, name),
                                                             elem_id=f"edit-{prefix}{name}"))
                            edit_controls[dname] = (sliders, gr.Button("Apply edits", elem_id=f"{prefix}edit-btn"))
                        else:
                            gr.Markdown(hide_paths(how_to_get_directions(dname)), elem_id=f"{prefix}no-directions")
                    edit_groups[dname] = group
                edited = gr.Image(label="Edited (photo's camera)", interactive=False, format="png", elem_id="edited")
                dl_edit = gr.DownloadButton("Edited image", visible=False, size="sm")
        # The stateless API (/invert, /render_view, /edit): hidden components, the page's first events.
        # Every event has a chosen name; those that only the page uses are private (not in the API, not MCP tools).
        model = dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
        views = dict(concurrency_id=VIEW_QUEUE, concurrency_limit=1)
        add_api(apps, example_dirs, model)

        def show(*paths):  # download buttons appear once their file exists
            return [gr.update(value=p, visible=p is not None) for p in paths]

        def sid(request: gr.Request | None) -> str | None:
            return getattr(request, "session_hash", None)

        def shown(yaw, pitch, preview=False):  # what the view shows, under it
            what = f"quick preview ({app.preview_resolution}² rays, no super-resolution)" if preview else "full render"
            return f"Yaw {float(yaw):+.0f}°, pitch {float(pitch):+.0f}°: {what}."

        view_outputs = [view, dl_view, depth, dl_depth_preview, dl_depth16, view_info]
        reset = [status, recon, dl_recon, dl_latent, *view_outputs, video, dl_video, model3d, dl_glb, dl_ply,
                 mesh_md, edited, dl_edit]

        def blank():  # what a new photo clears: status, reconstruction, views, video, mesh, edit (in `reset` order)
            return ["", None, *show(None, None), None, *show(None), None, *show(None, None), "", None, *show(None),
                    None, *show(None, None), "", None, *show(None)]

        def faces_shown(out: Aligned):  # the face choice, offered when the photo has several faces
            return gr.update(choices=out.choices or [], value=out.face_index, visible=out.several_faces)

        def aligned_page(out: Aligned):  # in `aligned_out` order
            return out.session, out.image, out.camera_text, faces_shown(out), *show(out.path), *blank()

        def view_page(v, yaw, pitch, preview=False):  # in `view_outputs` order
            return v.image, *show(v.path), v.depth_preview, *show(v.depth_preview, v.depth16), shown(yaw, pitch, preview)

        def replaced(out) -> bool:
            """The step's session ended while it ran (a new photo, whose session the page holds now): nothing of
            it is shown, and the ended session is not written back over the new one."""
            return out is None or (isinstance(out.session, Session) and out.session.ended)

        @user_errors
        def align(photo, session, domain=None, box=None, yaw=None, pitch=None, request: gr.Request = None):
            """Find the faces in a new photo, crop the largest (EG3D's FFHQ crop for portraits, an AFHQ-style
            crop for cats) and set its camera (estimated for portraits; for cats AFHQ frontal or yaw/pitch).
            Starts the session over. Then call /reconstruct.

            Args:
                photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
                domain: what is in the photo: 'human' or 'cat' (a pipeline of that domain must be loaded).
                box: cats only: the head's box 'left,top,right,bottom' in pixels; empty to detect it.
                yaw: cats only: the photo's camera yaw in degrees.
                pitch: cats only: the photo's camera pitch in degrees.
            """
            session = apps.live(session)
            return aligned_page(apps.align(photo, session, domain, sid(request), box, yaw, pitch))

        def recrop_quietly(photo, session, domain=None, box=None, yaw=None, pitch=None, request: gr.Request = None):
            """Another domain chosen with a photo loaded: the photo again with that aligner. A photo the new
            aligner refuses (a portrait when 'Cat face' is chosen) is no error nobody asked for: the camera text
            says so, and the page is cleared."""
            try:
                return align(photo, session, domain, box, yaw, pitch, request)
            except gr.Error as e:
                return None, None, f"**Not cropped as a {domain or app.domain.name}**: {e.message}", \
                    gr.update(choices=[], value=None, visible=False), *show(None), *blank()

        def after_failure():  # a photo that failed: nothing stale stays on the page (its session is gone)
            return None, None, "", gr.update(choices=[], value=None, visible=False), *show(None), *blank()

        def choose_domain(domain):  # the cat options and the edit sliders of the chosen domain
            return [gr.update(visible=takes_options(domain)), *(gr.update(visible=d == domain) for d in edit_groups)]

        @user_errors
        def choose_face(face_index, session):
            """Crop another face of the same photo (faces are numbered left to right, from 0). Then call /reconstruct.

            Args:
                face_index: the face to use (0-based, left to right).
            """
            session = apps.live(session)
            return aligned_page(apps.of(session).choose_face(face_index, session))

        @user_errors
        def reconstruct(session, yaw, pitch, resolution, progress=gr.Progress()):
            """Invert the aligned face (encoder, first render, AFA, occlusion-aware mix, final render) and render
            the view at yaw/pitch. The tri-planes stay with the session for /render, /video, /mesh and /edit_session.

            Args:
                yaw: the view's yaw in degrees (left/right).
                pitch: the view's pitch in degrees (up/down).
                resolution: neural rendering resolution (the model's own by default; lower is faster).
            """
            session = apps.live(session)
            out = apps.of(session).invert(session, yaw, pitch, resolution, progress=progress)
            if replaced(out):
                return (gr.skip(),) * len(inverted_out)
            return (out.session, out.reconstruction, *show(out.reconstruction_path, out.latent_path), out.status,
                    *view_page(out.view, yaw, pitch))

        def reconstruct_if_aligned(session, yaw, pitch, resolution, progress=gr.Progress()):
            """/reconstruct after a photo or face choice; nothing when the photo was cleared."""
            session = apps.live(session)
            if not isinstance(session, Session) or session.face is None:
                return (session, *[gr.skip()] * 10)
            return reconstruct(session, yaw, pitch, resolution, progress)

        @user_errors
        def preview(session, yaw, pitch):
            """A quick preview of the view at yaw/pitch (neural rendering without super-resolution, upsampled)
            and its depth: what the page shows while a slider moves.

            Args:
                yaw: yaw in degrees.
                pitch: pitch in degrees.
            """
            session = apps.live(session)
            out = apps.of(session).preview(session, yaw, pitch)
            if out.image is None:  # nothing inverted yet, a late preview, or overtaken
                return gr.skip(), gr.skip(), gr.skip()
            return out.image, out.depth, shown(yaw, pitch, preview=True)

        @user_errors
        def render(session, yaw, pitch, resolution):
            """The full render of the view at yaw/pitch and its depth (16-bit PNG and preview).

            Args:
                yaw: yaw in degrees.
                pitch: pitch in degrees.
                resolution: neural rendering resolution.
            """
            session = apps.live(session)
            out = apps.of(session).view(session, yaw, pitch, resolution)
            if out.view is not None:
                return view_page(out.view, yaw, pitch)
            if not isinstance(session, Session) or session.current is None:  # nothing inverted yet
                return None, *show(None), None, *show(None, None), ""
            return (gr.skip(),) * len(view_outputs)  # overtaken by a new result or the session's end

        @user_errors
        def settle(session, yaw, pitch, resolution):
            """After a new result: its full render at the sliders' position is the view's last word."""
            session = apps.live(session)
            out = apps.of(session).settle(session, yaw, pitch, resolution)
            if out.view is None:
                return (gr.skip(),) * len(view_outputs)
            return view_page(out.view, yaw, pitch)

        @user_errors
        def make_video(session, frames, fps, resolution, progress=gr.Progress()):
            """Render the turntable video (H.264 MP4) of the session's inversion or edit.

            Args:
                frames: number of frames (1-240).
                fps: frames per second.
                resolution: neural rendering resolution.
            """
            session = apps.live(session)
            out = apps.of(session).video(session, frames, fps, resolution, progress=progress)
            if replaced(out):
                return gr.skip(), gr.skip(), gr.skip()
            return out.session, out.path, *show(out.path)

        @user_errors
        def make_mesh(session, grid, progress=gr.Progress()):
            """Extract the mesh (marching cubes of the density) as .glb and .ply.

            Args:
                grid: the grid resolution (64-256 per side).
            """
            session = apps.live(session)
            out = apps.of(session).mesh(session, grid, progress=progress)
            if replaced(out):
                return (gr.skip(),) * 5
            return out.session, out.glb, *show(out.glb, out.ply), out.text

        for session_step in (align, choose_face, reconstruct, preview, render, make_video, make_mesh):
            session_step._mcp_type = "session"  # Gradio's marker (gr.mcp.tool/resource/prompt): not an MCP tool,
            # as a session step needs the page's state, which an MCP call has not.
        aligned_out = [session, aligned, camera_md, faces, dl_aligned, *reset]
        inverted_out = [session, recon, dl_recon, dl_latent, status, *view_outputs]
        # always_last: a photo changed again while its previous inversion runs is inverted after it (that one, of
        # a replaced session, shows nothing), not dropped.
        then_invert = dict(fn=reconstruct_if_aligned, inputs=[session, yaw, pitch, resolution], outputs=inverted_out,
                           api_visibility="private", trigger_mode="always_last", **model)
        # Every step that shows a new result is followed by its settling, in the view queue (after the view events
        # already there): see GOAEApp.settle.
        settled = dict(fn=settle, inputs=[session, yaw, pitch, resolution], outputs=view_outputs,
                       api_visibility="private", show_progress="hidden", **views)
        align_in = [photo, session, subject, cat_box, cat_yaw, cat_pitch]
        cleared = dict(fn=after_failure, inputs=None, outputs=aligned_out, api_visibility="private")
        aligning = photo.change(align, align_in, aligned_out, api_name="align")
        aligning.success(api_name="reconstruct_after_align", **then_invert).success(
            api_name="settle_after_align", **settled)
        aligning.failure(api_name="clear_after_align", **cleared)
        # Another domain or other cat options: the same photo again, with that aligner.
        subject.change(choose_domain, [subject], [cat_options, *edit_groups.values()], api_name="choose_domain",
                       api_visibility="private")
        subject.input(recrop_quietly, align_in, aligned_out, api_name="crop_for_domain", api_visibility="private",
                      **model).success(api_name="reconstruct_after_domain", **then_invert).success(
            api_name="settle_after_domain", **settled)
        cropping = crop_btn.click(align, align_in, aligned_out, api_name="crop_again", api_visibility="private",
                                  **model)
        cropping.success(api_name="reconstruct_after_crop", **then_invert).success(
            api_name="settle_after_crop", **settled)
        cropping.failure(api_name="clear_after_crop", **cleared)
        faces.input(choose_face, [faces, session], aligned_out, api_name="choose_face").success(
            api_name="reconstruct_after_choice", **then_invert).success(api_name="settle_after_choice", **settled)
        invert_btn.click(reconstruct, [session, yaw, pitch, resolution], inverted_out, api_name="reconstruct",
                         **model).success(api_name="settle_after_reconstruct", **settled)
        # A head that follows the slider: quick previews while it moves, the full render when it is let go; both in
        # the view queue, so a late preview runs after the full render and is dropped there (GOAEApp.preview).
        gr.on([yaw.input, pitch.input], preview, [session, yaw, pitch], [view, depth, view_info],
              api_name="preview", trigger_mode="always_last", show_progress="hidden", **views)
        gr.on([yaw.release, pitch.release], render, [session, yaw, pitch, resolution], view_outputs,
              api_name="render", trigger_mode="always_last", show_progress="minimal", **views)
        video_btn.click(make_video, [session, frames, fps, resolution], [session, video, dl_video], api_name="video",
                        **model)
        mesh_btn.click(make_mesh, [session, mesh_res], [session, model3d, dl_glb, dl_ply, mesh_md], api_name="mesh",
                       **model)

        def edit_for(dname: str):
            @user_errors
            def edit_session(session, yaw, pitch, resolution, *strengths, progress=gr.Progress()):
                """Apply the edit sliders' strengths (W+ directions) to the session's inversion; the view,
                video and mesh then follow the edited face. All strengths 0 goes back to the inversion.

                Args:
                    yaw: yaw in degrees.
                    pitch: pitch in degrees.
                    resolution: neural rendering resolution.
                    strengths: one strength per edit direction, in the order of the sliders.
                """
                session = apps.live(session)
                if isinstance(session, Session) and session.face is not None and session.domain != dname:
                    title = apps.get(session.domain).domain.title
                    raise gr.Error(f"The photo was cropped as a {session.domain}: choose '{title}' above to edit it, "
                                   f"or crop it again as a {apps.get(dname).domain.title.lower()}.")
                out = apps.get(dname).edit(session, yaw, pitch, resolution, *strengths, progress=progress)
                if replaced(out):
                    return (gr.skip(),) * (3 + len(view_outputs))
                return out.session, out.image, *show(out.path), *view_page(out.view, yaw, pitch)
            edit_session._mcp_type = "session"
            return edit_session

        for dname, (sliders, edit_btn) in edit_controls.items():
            edit_btn.click(edit_for(dname), [session, yaw, pitch, resolution, *sliders],
                           [session, edited, dl_edit, *view_outputs],
                           api_name="edit_session" if dname == app.domain.name else f"edit_session_{dname}",
                           **model).success(api_name=f"settle_after_edit_{dname}", **settled)

        def end_session(request: gr.Request):
            """The tab closed: the session's tri-planes and files go now (its state follows within the hour)."""
            app.end_folder(app.folders.session(sid(request)))
        demo.unload(end_session)  # private: an unload event has no API
    demo.queue(default_concurrency_limit=1)
    return demo
