"""The Gradio app driven in headless Debian chromium (Playwright's Python API, never `playwright install`).

The app runs as a subprocess (`GOAE_WEIGHTS=random-small python app.py`) on a free localhost port, with the
example photos and edit directions of the shared folder. Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
playwright_sync = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("GOAE_CHROMIUM", "/usr/bin/chromium")
# Playwright gives every launch a fresh temporary --user-data-dir of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STEP_TIMEOUT_MS = 120_000  # one model step on the 2-core CI machine, with margin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(examples_dir: Path):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    port = _free_port()
    env = dict(os.environ, GOAE_WEIGHTS="random-small", GOAE_EXAMPLES=str(examples_dir / "wild"),
               GOAE_DIRECTIONS=str(examples_dir / "goae" / "ws_edit"), GRADIO_ANALYTICS_ENABLED="False")
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "app_server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"app did not start; log:\n{(ARTIFACTS / 'app_server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _open(browser, url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = ctx.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#invert")
    return ctx, page


def _upload(page, photo: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(photo))


def _src(page, elem_id: str) -> str:
    """src of the component's image, "" while it shows none (no waiting)."""
    return page.evaluate("id => { const i = document.querySelector(`#${id} img`); return i ? i.src : ''; }", elem_id)


def _wait_new_src(page, elem_id: str, old: str) -> str:
    page.wait_for_function(
        "([id, old]) => { const i = document.querySelector(`#${id} img`); return i && i.src && i.src !== old; }",
        arg=[elem_id, old])
    return _src(page, elem_id)


def _camera_text(page) -> str:
    page.wait_for_function("() => document.querySelector('#camera').innerText.includes('Estimated camera')")
    return page.locator("#camera").inner_text()


def _wait_rendered(locator, timeout_s: float = 60) -> None:
    """Poll screenshots of an element until it is not one flat colour."""
    import io

    import numpy as np
    from PIL import Image

    deadline = time.time() + timeout_s
    while True:
        pixels = np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("L"), dtype=np.float32)
        if pixels.std() > 5:
            return
        assert time.time() < deadline, "the 3D viewer stayed blank"
        time.sleep(1)


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _invert(page) -> None:
    old = _src(page, "view")
    page.click("#invert")
    _wait_new_src(page, "view", old)
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('Inverted in')")


def test_full_flow(server, browser, examples_dir):
    ctx, page = _open(browser, server)
    assert "random weights" in page.locator("#banner").inner_text()
    _upload(page, examples_dir / "wild" / "obama.jpg")
    page.wait_for_selector("#aligned img")
    assert re.search(r"yaw [+-]\d+\.\d°, pitch [+-]\d+\.\d°", _camera_text(page))
    _invert(page)
    page.wait_for_selector("#recon img", state="visible")
    _shot(page, "app_inverted.png")

    # Yaw slider: a new view from the cached tri-planes.
    before = _src(page, "view")
    page.locator("#yaw input[type=range]").fill("35")
    after = _wait_new_src(page, "view", before)
    assert after != before
    page.locator("button[role=tab]", has_text="Depth").click()
    page.wait_for_selector("#depth img")

    # Turntable video (8 frames to keep the test short).
    page.get_by_text("Options").click()
    frames = page.locator("#frames input[type=number]")
    frames.fill("8")
    frames.press("Enter")
    page.locator("button[role=tab]", has_text="Video").click()
    page.click("#video-btn")
    page.wait_for_selector("#video video")
    _shot(page, "app_video.png")

    # Mesh in the Model3D viewer (a 64^3 grid keeps it quick).
    page.locator("#mesh-res input").click()
    page.get_by_role("option", name="64", exact=True).click()
    page.locator("button[role=tab]", has_text="Mesh").click()
    page.click("#mesh-btn")
    page.wait_for_selector("#model3d canvas")
    page.wait_for_function("() => document.body.innerText.includes('vertices')")
    _wait_rendered(page.locator("#model3d canvas"))  # the WebGL viewer really drew the mesh
    _shot(page, "app_mesh.png")

    # Edit: age +2, applied from the cached inversion.
    page.locator("button[role=tab]", has_text="Edit").click()
    page.locator("#edit-age input[type=range]").fill("2")
    page.click("#edit-btn")
    page.wait_for_selector("#edited img")
    _shot(page, "app_edit.png")
    assert "Traceback" not in page.content()
    ctx.close()


def test_no_face_message_then_recovers(server, browser, examples_dir, tmp_path):
    ctx, page = _open(browser, server)
    _upload(page, examples_dir / "wild" / "coffee.png")
    page.locator(".toast-body", has_text="No face found").wait_for(state="visible")
    _shot(page, "app_no_face.png")
    garbage = tmp_path / "not_a_photo.png"
    garbage.write_bytes(b"not an image at all " * 50)
    _upload(page, garbage)
    page.locator(".toast-body", has_text="is not an image file").wait_for(state="visible")
    assert "Traceback" not in page.content()
    # The same session still works with a good photo.
    _upload(page, examples_dir / "wild" / "astronaut.png")
    page.wait_for_selector("#aligned img")
    _camera_text(page)
    _invert(page)
    ctx.close()


def test_two_sessions_are_separate(server, browser, examples_dir):
    (ctx_a, a), (ctx_b, b) = _open(browser, server), _open(browser, server)
    _upload(a, examples_dir / "wild" / "obama.jpg")
    _upload(b, examples_dir / "wild" / "astronaut.png")
    a.wait_for_selector("#aligned img")
    b.wait_for_selector("#aligned img")
    cam_a, cam_b = _camera_text(a), _camera_text(b)
    assert cam_a != cam_b
    assert "910×1137" in cam_a and "910×1137" not in cam_b   # each page shows its own photo's face
    a.click("#invert")
    b.click("#invert")
    for p in (a, b):
        p.wait_for_function("() => document.querySelector('#status').innerText.includes('Inverted in')")
        p.wait_for_selector("#view img")
    assert _src(a, "aligned") != _src(b, "aligned")
    assert _src(a, "recon") != _src(b, "recon")
    assert _camera_text(a) == cam_a and _camera_text(b) == cam_b  # nothing leaked across sessions
    _shot(a, "app_session_a.png")
    _shot(b, "app_session_b.png")
    ctx_a.close()
    ctx_b.close()
