"""The page's own components and its error handling: inputs that check what comes in (a photo's size and where it
is, a face index, JSON with a schema), and `user_errors`, which turns the steps' errors into gr.Error messages
without the server's paths."""
from __future__ import annotations

import base64
import functools
import inspect
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

import gradio as gr

from goae.app import server
from goae.app.service import USER_ERRORS
from goae.request import RequestError, parse_face_index

log = logging.getLogger("goae.app")
ROOT = Path(__file__).resolve().parents[2]  # the project (app.py, examples/)


def _path_roots() -> list[str]:
    from gradio.utils import get_upload_folder
    roots = {tempfile.gettempdir(), str(Path.home()), str(ROOT), os.getcwd(), sys.prefix, str(get_upload_folder())}
    return sorted((r.rstrip("/") for r in roots if r and r != "/"), key=len, reverse=True)


def hide_paths(text: str) -> str:
    """A message without the server's paths: each path under a server folder becomes its file name."""
    pattern = "|".join(re.escape(r) for r in _path_roots())
    return re.sub(rf"(?:{pattern})/[^\s'\"`,;()]*", lambda m: Path(m.group(0)).name or "…", text)


def user_errors(fn: Callable) -> Callable:
    """Bad input and state -> gr.Error with its message; anything else -> a short error (details in the log).
    No message shows a server path."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            e.message = hide_paths(str(e.message))
            raise
        except USER_ERRORS as e:
            raise gr.Error(hide_paths(str(e)), duration=None, print_exception=False) from None
        except Exception as e:
            log.exception("error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(e).__name__}: {hide_paths(str(e))}). The session still "
                           "works; try again or another photo.", duration=None, print_exception=False) from None
    return wrapper




def _too_large(size: int) -> gr.Error:
    return gr.Error(f"The photo is too large ({size / 2**20:.1f} MB): the limit is {server.MAX_UPLOAD_MB} MB.",
                    duration=None, print_exception=False)


def photo_input(allowed: list[Path], **kwargs) -> gr.Image:
    """gr.Image whose photo reaches goae.align untouched (path or bytes), so unreadable, corrupt or huge
    files get align's clear messages instead of a failure inside Gradio's own image decoding. The size
    limit holds for uploads and inline data: URLs alike, and only files Gradio received (its upload
    folder) or the example photos (`allowed`) are read: an API call cannot name another server file.

    The preprocess step is replaced on the instance: a gr.Image subclass would do the same, but Gradio
    writes a .pyi stub next to the source file of every component subclass."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    image = gr.Image(**kwargs)
    limit = server.MAX_UPLOAD_MB * 2**20

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            data = payload.url.split(",", 1)[-1]
            if len(data) * 3 // 4 > limit:
                raise _too_large(len(data) * 3 // 4)
            try:
                return base64.b64decode(data, validate=True)
            except ValueError:
                raise gr.Error("The photo's data: URL is not valid base64.", print_exception=False) from None
        if not payload.path:  # a URL alone: the server fetches nothing on a caller's behalf
            raise gr.Error("The photo came as a URL only: send the file itself (gradio_client: handle_file(path or "
                           "URL) uploads it) or a data: URL.", print_exception=False)
        path = Path(payload.path)
        if not any(is_in_or_equal(path, folder) for folder in [Path(get_upload_folder()), *allowed]):
            raise gr.Error("Send the photo as an upload (gradio_client: handle_file(...)).", print_exception=False)
        if not path.is_file():  # e.g. the upload folder itself: Gradio listed it among this input's files,
            image.temp_files.discard(str(path))  # and would try to delete it as one at shutdown
            raise gr.Error("The photo is not a file: send an image file (gradio_client: handle_file(...)).",
                           print_exception=False)
        if path.stat().st_size > limit:
            raise _too_large(path.stat().st_size)
        return str(path)

    image.preprocess = preprocess
    return image


def json_input(value, example, schema: dict, **kwargs) -> gr.JSON:
    """gr.JSON with a JSON schema (its type in the API page and the MCP tools; Gradio's is "any JSON") and a
    real example (Gradio's is {"foo": "bar"})."""
    component = gr.JSON(value, **kwargs)
    component.example_inputs = component.example_payload = lambda: example
    component.api_info = component.api_info_as_input = lambda: dict(schema)
    return component


def index_input(**kwargs) -> gr.Number:
    """gr.Number for a face index that may be empty: anything else than a whole number gets a clear message
    (Gradio's own conversion fails without one)."""
    number = gr.Number(**kwargs)

    def preprocess(payload):
        try:
            return parse_face_index(payload, what="face_index")
        except RequestError as e:
            raise gr.Error(f"{e} (face_index: 0-based from the left, or empty for the largest face)",
                           print_exception=False) from None

    number.preprocess = preprocess
    number.example_inputs = number.example_payload = lambda: 0
    return number


class GOAEBlocks(gr.Blocks):
    """gr.Blocks whose input errors have a message: a payload Gradio cannot read (a string or a number where a
    file goes, a file that was never uploaded) otherwise fails before any callback, with `error: null` in the API
    (the app runs with show_error=False, so that no internal error shows server paths)."""

    async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
        from gradio.exceptions import ComponentProcessingError, InvalidPathError
        from pydantic import ValidationError
        try:
            return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)
        except (ComponentProcessingError, InvalidPathError, ValidationError) as e:
            raise gr.Error(_bad_input_message(block_fn, inputs, e), print_exception=False) from None


def _bad_input_message(block_fn, inputs: list, error: Exception) -> str:
    """Which parameter of the endpoint was wrong, and how to send it."""
    from gradio.exceptions import InvalidPathError

    names = [p for p in inspect.signature(block_fn.fn).parameters
             if p not in ("progress", "request")][:len(block_fn.inputs)] if block_fn.fn else []
    if isinstance(error, InvalidPathError):
        return ("A file must be sent as an upload (gradio_client: handle_file(...)); files on the server are "
                "not read.")
    index = None
    if (m := re.search(r"at index (\d+)", str(error))) is not None:
        index = int(m.group(1))
    elif getattr(error, "title", None):  # a pydantic error names the component's data model
        index = next((i for i, b in enumerate(block_fn.inputs)
                      if getattr(getattr(b, "data_model", None), "__name__", None) == error.title), None)
    if index is None or index >= len(block_fn.inputs):
        return f"An input of /{block_fn.api_name} could not be read: check the types in the API page."
    name = names[index] if index < len(names) else f"input {index}"
    block, value = block_fn.inputs[index], inputs[index] if index < len(inputs) else None
    wants = ("a file (gradio_client: handle_file(path))" if getattr(block, "data_model", None) is not None
             and "FileData" in str(block.data_model.model_json_schema()) else f"a {block.get_block_name()} value")
    shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
    return hide_paths(f"{name} must be {wants}; got {type(value).__name__} {shown}")
