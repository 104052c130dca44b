"""The stateless API (also the MCP tools): /invert, /render_view and /edit, each one photo in, nothing kept per
caller. Their inputs and outputs are hidden components of the page; their names and parameters are public."""
from __future__ import annotations

import gradio as gr

from goae.app.components import index_input, json_input, photo_input, user_errors
from goae.app.service import MAX_API_VIEWS, AppDomains


def _numbers(n: int, what: str) -> dict:
    return {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n, "description": what}


def add_api(apps: AppDomains, example_dirs: list, model_queue: dict) -> None:
    """The hidden components and the three events of the stateless API, inside the page being built (their
    events are the first of the page: the API page and MCP list /invert first, as the one call an agent needs)."""
    app = apps.default
    with gr.Column(visible=False):
        api_photo = photo_input(example_dirs, label="Photo", type="filepath", image_mode=None, format="png")
        api_face = index_input(value=None, precision=0, label="Face index (empty: the largest)")
        api_views = json_input([], [[-30, 0], [30, 0]], {"type": "array", "items": _numbers(2, "[yaw, pitch] in degrees"),
                                                        "maxItems": MAX_API_VIEWS}, label="Views: [[yaw, pitch], ...] in degrees")
        api_video = gr.Checkbox(False, label="Turntable video")
        api_mesh = gr.Checkbox(False, label="Mesh (.glb, .ply)")
        edit_example = {next(iter(app.directions)): 2} if app.directions else {}
        api_edits = json_input({}, edit_example, {"type": "object", "additionalProperties": {"type": "number"},
                                                 "description": "strength by direction name"}, label="Edit strengths by name, e.g. {\"age\": 2}")
        api_domain = gr.Textbox(app.domain.name, label="What is in the photo: 'human' or 'cat'")
        api_domain.example_inputs = api_domain.example_payload = lambda: app.domain.name
        api_box = json_input([], [], _numbers(4, "left, top, right, bottom in pixels; [] to detect"), label="Cat head box [left, top, right, bottom] in pixels ([]: detect)")
        api_cam = json_input([], [], _numbers(2, "yaw, pitch in degrees; [] for AFHQ frontal"), label="Cat photo's camera [yaw, pitch] in degrees ([]: AFHQ frontal)")
        api_aligned = gr.Image(label="Aligned crop", format="png")
        api_camera = gr.JSON(label="Camera")
        api_recon = gr.Image(label="Reconstruction", format="png")
        api_views_out = gr.Gallery(label="Views", format="png")
        api_files = gr.File(label="Files", file_count="multiple")
        api_btn = gr.Button("invert")
        api_yaw = gr.Number(0, label="Yaw in degrees (-180 to 180)")
        api_pitch = gr.Number(0, label="Pitch in degrees (-90 to 90)")
        api_yaw.example_inputs = api_yaw.example_payload = lambda: 30
        api_pitch.example_inputs = api_pitch.example_payload = lambda: 0
        api_view_out = gr.Image(label="View", format="png")
        api_depth_out = gr.Image(label="Depth of the view", type="filepath", format="png")
        api_edited_out = gr.Image(label="Edited (photo's camera)", format="png")
        api_view_btn, api_edit_btn = gr.Button("render_view"), gr.Button("edit")

    @user_errors
    def invert(photo, face_index=None, views=None, video=False, mesh=False, edits=None, domain=None, box=None,
               camera=None, progress=gr.Progress()):
        """Invert one photo (a portrait, or a cat where a cat pipeline is loaded) into a 3D head, in one call
        that keeps nothing (for API clients and MCP).

        Args:
            photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
            face_index: which face, 0-based from the left; empty for the largest.
            views: extra views to render, a list of [yaw, pitch] pairs in degrees, e.g. [[-30, 0], [30, 0]] (at most 16).
            video: also render the turntable video (MP4).
            mesh: also extract the mesh (.glb and .ply, 128 grid).
            edits: edit strengths by direction name, e.g. {"age": 2} (the names under the app's Edit tab).
            domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
            box: cats only: the head's box [left, top, right, bottom] in pixels; [] to detect it.
            camera: cats only: the photo's camera [yaw, pitch] in degrees; [] for the AFHQ frontal one.
        Returns:
            the aligned 512x512 crop; the camera (EG3D label of 25 numbers, yaw and pitch in degrees, face index, box); the reconstruction; the views; every file written (aligned crop, reconstruction, depth, W+ code, views, video, mesh, edits, result.json).
        """
        out = apps.api_invert(photo, face_index, views, video, mesh, edits, domain, box, camera, progress=progress)
        return out.aligned, out.camera, out.reconstruction, out.views, out.files

    @user_errors
    def render_view(photo, yaw=0.0, pitch=0.0, face_index=None, domain=None, box=None, camera=None,
                    progress=gr.Progress()):
        """Render the 3D head of a photo from a new viewpoint (stateless; the photo's inversion is kept for a
        while, so more views of the same photo are quick).

        Args:
            photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
            yaw: the view's yaw in degrees, -180 to 180 (positive turns the head to its left).
            pitch: the view's pitch in degrees, -90 to 90 (positive looks from above).
            face_index: which face, 0-based from the left; empty for the largest.
            domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
            box: cats only: the head's box [left, top, right, bottom] in pixels; [] to detect it.
            camera: cats only: the photo's camera [yaw, pitch] in degrees; [] for the AFHQ frontal one.
        Returns:
            the view (512x512); its depth map (near = bright); the photo's camera (EG3D label, yaw and pitch in degrees, face index, box).
        """
        out = apps.api_view(photo, face_index, yaw, pitch, None, domain, box, camera, progress=progress)
        return out.view, out.depth, out.camera

    @user_errors
    def edit(photo, edits, yaw=0.0, pitch=0.0, face_index=None, domain=None, progress=gr.Progress()):
        """Edit the 3D head of a photo along semantic directions (age, glasses, expression, ...), stateless.

        Args:
            photo: the photo (JPEG, PNG, WebP or BMP, at most 30 MB).
            edits: strengths by direction name, e.g. {"age": 2} (about -3 to 3; the names the app lists under its Edit tab).
            yaw: the edited head's view yaw in degrees, -180 to 180.
            pitch: the edited head's view pitch in degrees, -90 to 90.
            face_index: which face, 0-based from the left; empty for the largest.
            domain: what is in the photo: 'human' or 'cat'; empty for the default (human where loaded).
        Returns:
            the edited face at the photo's camera; the edited head at yaw/pitch; the photo's camera.
        """
        if not edits:
            raise gr.Error("Give at least one edit, e.g. {\"age\": 2}.", print_exception=False)
        out = apps.api_view(photo, face_index, yaw, pitch, edits, domain, progress=progress)
        return out.edited, out.view, out.camera

    api_btn.click(invert, [api_photo, api_face, api_views, api_video, api_mesh, api_edits, api_domain, api_box,
                           api_cam],
                  [api_aligned, api_camera, api_recon, api_views_out, api_files], api_name="invert", **model_queue)
    api_view_btn.click(render_view, [api_photo, api_yaw, api_pitch, api_face, api_domain, api_box, api_cam],
                       [api_view_out, api_depth_out, api_camera], api_name="render_view", **model_queue)
    api_edit_btn.click(edit, [api_photo, api_edits, api_yaw, api_pitch, api_face, api_domain],
                       [api_edited_out, api_view_out, api_camera], api_name="edit", **model_queue)
