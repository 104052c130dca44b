"""Where the app runs (ZeroGPU, a GPU Space, a CPU) and what it lets in, on the small random model.

Needs nothing from ../shared: the app is built as on a fresh clone (GOAE_EXAMPLES unset, so the project's
examples/ are used). The page's tests import app.py as a Space does.
"""
from __future__ import annotations

import base64
import os
import pickle
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from appserver import build_apps, import_app
from goae.app import components, gpu, server
from goae.app.server import QuickHead, RequestSizeLimit
from goae.app.service import MAX_API_VIEWS, USER_ERRORS, GOAEApp
from goae.domains import HUMAN
from goae.request import parse_views

ROOT = Path(__file__).resolve().parents[1]


def no_progress(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def apps():
    return build_apps()


@pytest.fixture(scope="module")
def goae_app(apps):
    return apps.default


@pytest.fixture(scope="module")
def app_module():
    """app.py imported as a Space imports it: the page (`demo`) built from the environment."""
    return import_app({"GOAE_WEIGHTS": "random-small", "GOAE_EXAMPLES": None, "GOAE_DIRECTIONS": None,
                       "SPACES_ZERO_GPU": None})


# ------------------------------------------------------------------------------------------ examples
def test_examples_ship_with_the_project(goae_app):
    """With GOAE_EXAMPLES unset the app shows examples/ (no ../shared needed), each listed in SOURCES.md."""
    names = [Path(p).name for p in goae_app.examples]
    assert names == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert all(Path(p).parent == ROOT / "examples" for p in goae_app.examples)
    sources = (ROOT / "examples" / "SOURCES.md").read_text()
    for name in names:
        assert f"`{name}`" in sources
    assert "public domain" in sources.lower() and "CC0" in sources


def test_example_photos_behave_as_described(goae_app):
    session = goae_app.align(ROOT / "examples" / "astronaut.png", None).session
    assert len(session.face.faces) == 1
    with pytest.raises(USER_ERRORS, match="No face found"):
        goae_app.align(ROOT / "examples" / "coffee.png", None)


def test_the_cat_example_is_a_cat(apps):
    session = apps.align(ROOT / "examples" / "chelsea.png", None, "cat").session
    assert session.domain == "cat" and session.face.detector == "cascade" and len(session.face.faces) == 1
    with pytest.raises(USER_ERRORS, match="No cat face found.*closer, frontal photo"):
        apps.align(ROOT / "examples" / "coffee.png", None, "cat")


# ------------------------------------------------------------------------------------------ the inversion
def test_the_app_inverts_through_the_pipeline_and_reports_its_stages(goae_app, tmp_path):
    """The app's inversion is one pipe() call (no copy of the method): the same tensors as pipe(), and the
    page's progress bar hears every stage of the method in order, then the app's own file step."""
    face = goae_app.align(ROOT / "examples" / "astronaut.png", None).session.face
    stages = []
    out = goae_app.model.invert(face, tmp_path, 0.0, 0.0, None, lambda fraction, desc=None: stages.append((fraction, desc)))
    ref = goae_app.pipe(face.image, face.camera, output_type=None).to_cache()
    for name, value in ref.items():
        assert torch.equal(out.entry[name], value), name
    descriptions = [d for _, d in stages]
    for word in ("Encoding", "first reconstruction", "AFA", "occlusion-aware", "Final render", "Writing"):
        assert any(word in d for d in descriptions), (word, descriptions)
    assert [f for f, _ in stages] == sorted(f for f, _ in stages)


# ------------------------------------------------------------------------------------------ ZeroGPU
def test_gpu_decorator_is_the_function_itself_without_zerogpu(monkeypatch):
    def f(x):
        return x + 1

    monkeypatch.setattr(gpu, "spaces", None)        # `spaces` not installed
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert not gpu.on_zero_gpu() and gpu.gpu(10)(f) is f
    fake = types.SimpleNamespace(GPU=lambda **k: pytest.fail("spaces.GPU used outside ZeroGPU"))
    monkeypatch.setattr(gpu, "spaces", fake)         # installed, but not a ZeroGPU Space
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not gpu.on_zero_gpu() and gpu.gpu(10)(f) is f


def test_real_spaces_decorator_is_a_no_op_outside_zerogpu(monkeypatch):
    spaces = pytest.importorskip("spaces")
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def f(x):
        return 2 * x

    assert spaces.GPU(duration=10)(f) is f and spaces.GPU(f)(3) == 6


def test_device_is_chosen_per_call(monkeypatch):
    moved = []
    pipe = types.SimpleNamespace(device=torch.device("cpu"), to=lambda d: moved.append(d))
    assert gpu.call_device(pipe).type == "cpu" and moved == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # inside a ZeroGPU call, or a GPU Space
    assert gpu.call_device(pipe).type == "cuda" and moved == [torch.device("cuda")]


class ForkingSpaces:
    """The `spaces` package as the app meets it on ZeroGPU: a decorated call runs in a forked worker process
    (which has the GPU); its arguments and its result are pickled across, and nothing it changes in its
    own memory comes back."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def GPU(self, duration=None):
        def decorate(task):
            def run(*args, **kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                self.calls.append((task.__name__, float(seconds)))
                payload = pickle.dumps((args, kwargs))
                read, write = os.pipe()
                pid = os.fork()
                if pid == 0:  # the worker
                    os.close(read)
                    try:
                        torch.set_num_threads(1)
                        a, k = pickle.loads(payload)
                        result = ("ok", task(*a, **k))
                    except BaseException as e:  # noqa: BLE001 (sent back like ZeroGPU does)
                        result = ("error", e)
                    with os.fdopen(write, "wb") as f:
                        pickle.dump(result, f)
                    os._exit(0)
                os.close(write)
                with os.fdopen(read, "rb") as f:
                    status, value = pickle.load(f)
                os.waitpid(pid, 0)
                if status == "error":
                    raise value
                return value
            return run
        return decorate


def test_every_model_step_works_through_zerogpu(goae_app, monkeypatch):
    """All model work goes through `gpu` as pure functions: the same results when each call runs in a
    forked worker, the session's state kept in the main process as CPU tensors."""
    from goae.edit import EditDirection

    g = goae_app.pipe.generator
    directions = {"age": EditDirection("age", torch.randn(g.num_ws, g.w_dim, generator=torch.Generator().manual_seed(1)))}
    local = GOAEApp(goae_app.pipe, directions, folders=goae_app.folders)
    fake = ForkingSpaces()
    monkeypatch.setattr(gpu, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    zero = GOAEApp(goae_app.pipe, directions, folders=goae_app.folders)
    photo = ROOT / "examples" / "astronaut.png"
    results = {}
    for name, a in (("zero", zero), ("local", local)):
        s = a.align(photo, None).session
        inv = a.invert(s, 20, 0, 64, progress=no_progress)
        s = inv.session
        entry = a.cache.get(s.inversion)
        assert all(t.device.type == "cpu" for t in entry.values())
        assert a.cache.get(s.inversion)["planes"].shape[-1] == 256
        results[name] = dict(
            recon=inv.reconstruction, view=inv.view.image, preview=a.preview(s, -20, 5).image,
            render=a.view(s, -20, 5, 64).view.image,
            video=Path(a.video(s, 3, 12, 64, progress=no_progress).path).stat().st_size > 0,
            mesh=a.mesh(s, 32, progress=no_progress).text.startswith("Mesh:"),
            edit=a.edit(s, 0, 0, 64, 2.0, progress=no_progress).image,
            api=[Path(f).name for f in a.api_invert(photo, None, [[30, 0]], False, False, {}, progress=no_progress).files])
        assert s.edits == {"age": 2.0} and s.current != s.inversion
        a.end_session(s)
    called = [name for name, _ in fake.calls]
    # The turntable's frames are rendered in the GPU call and encoded outside it (off the GPU's time).
    assert called == ["invert", "preview", "view", "video_frames", "mesh", "edit", "api"]
    assert all(0 < seconds <= gpu.GPU_SECONDS_MAX for _, seconds in fake.calls)
    z, l = results["zero"], results["local"]
    for key in ("recon", "view", "preview", "render", "edit"):
        assert z[key].shape == l[key].shape and np.abs(z[key].astype(int) - l[key].astype(int)).max() <= 2, key
    assert z["video"] and z["mesh"] and z["api"] == l["api"]


def test_durations_grow_with_the_work(goae_app, monkeypatch):
    fake = ForkingSpaces()
    seen = {}

    def record(duration=None):
        def decorate(task):
            seen[task.__name__] = duration
            return task
        return decorate

    fake.GPU = record
    monkeypatch.setattr(gpu, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    pipe = types.SimpleNamespace(generator=types.SimpleNamespace(neural_rendering_resolution=128, ray_range=(2.25, 3.3)),
                                 domain=HUMAN)
    GOAEApp(pipe, folders=goae_app.folders)
    video, mesh, api = seen["video_frames"], seen["mesh"], seen["api"]
    assert video(None, 24, None, None) < video(None, 120, None, None) <= gpu.GPU_SECONDS_MAX
    assert mesh(None, 64, None) < mesh(None, 256, None)
    from goae.export import ExportOptions
    assert api(None, None, ExportOptions()) < api(None, None, ExportOptions(views=[(30, 0)] * 8, video_frames=48,
                                                                           mesh_resolution=128))
    # Sized from GPU work plus a worker's set-up, not from CPU times: an inversion asks for seconds, not minutes.
    s = gpu.GPU_SECONDS
    assert seen["invert"] == seen["entry"] == gpu.GPU_SETUP_SECONDS + s["invert"] <= 10
    assert seen["preview"] < seen["view"] < seen["invert"]
    assert video(None, 240, None, None) < 60 and mesh(None, 256, None) < 10

    # A Space's own measured times override the estimates; a malformed value is one clear error.
    monkeypatch.setenv("GOAE_GPU_SECONDS", '{"invert": 1.5, "video_frame": 0.05}')
    GOAEApp(pipe, folders=goae_app.folders)
    assert seen["invert"] == gpu.GPU_SETUP_SECONDS + 1.5
    assert seen["video_frames"](None, 100, None, None) == gpu.GPU_SETUP_SECONDS + 5
    for bad in ('{"invert": -1}', '{"nope": 1}', '[1]', 'not json', '{"invert": "nan"}'):
        monkeypatch.setenv("GOAE_GPU_SECONDS", bad)
        with pytest.raises(ValueError, match="GOAE_GPU_SECONDS must be"):
            gpu.gpu_seconds()


# ------------------------------------------------------------------------------------------ what comes in, what goes out
def test_messages_never_show_server_paths(goae_app, tmp_path):
    from gradio.utils import get_upload_folder

    upload = Path(get_upload_folder()) / "0123abcd" / "photo.jpg"
    text = f"cannot read {upload}: broken; see {tmp_path / 'x' / 'y.png'} and {ROOT / 'app.py'}"
    hidden = components.hide_paths(text)
    assert "photo.jpg" in hidden and "y.png" in hidden and "app.py" in hidden
    assert str(upload.parent) not in hidden and str(tmp_path) not in hidden and str(ROOT) not in hidden
    align = components.user_errors(goae_app.align)  # as the page calls it
    for bad in (tmp_path / "missing.jpg", tmp_path):
        with pytest.raises(gr.Error) as e:
            align(bad, None)
        assert str(tmp_path) not in e.value.message and "/" not in e.value.message.replace("1/", "")


def test_photo_input_enforces_the_size_limit_and_upload_folder(tmp_path, monkeypatch):
    from gradio.data_classes import FileData
    from gradio.utils import get_upload_folder

    examples = ROOT / "examples"
    image = components.photo_input([examples], type="filepath")
    png = (examples / "astronaut.png").read_bytes()
    inline = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    assert image.preprocess(FileData(path="photo.png", url=inline)) == png
    assert image.preprocess(FileData(path=str(examples / "astronaut.png"))) == str(examples / "astronaut.png")
    with pytest.raises(gr.Error, match="as an upload"):  # an API call naming a server file
        image.preprocess(FileData(path="/etc/hostname"))
    with pytest.raises(gr.Error, match="as an upload"):
        image.preprocess(FileData(path=str(Path(get_upload_folder()) / ".." / "etc" / "passwd")))
    monkeypatch.setattr(server, "MAX_UPLOAD_MB", 1)
    image = components.photo_input([examples], type="filepath")
    big = "A" * (2 * 2**20)
    with pytest.raises(gr.Error, match="too large") as e:
        image.preprocess(FileData(path="photo.png", url=f"data:image/png;base64,{big}"))
    assert "limit is 1 MB" in e.value.message
    with pytest.raises(gr.Error, match="not valid base64"):
        image.preprocess(FileData(path="photo.png", url="data:image/png;base64,@@@@"))
    folder = Path(get_upload_folder()) / f"goae-test-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        huge = folder / "huge.png"
        with open(huge, "wb") as f:
            f.truncate(2 * 2**20)
        with pytest.raises(gr.Error, match="too large"):
            image.preprocess(FileData(path=str(huge)))
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def test_request_size_limit_middleware():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def echo(request):
        return PlainTextResponse(str(len(await request.body())))

    web = Starlette(routes=[Route("/", echo, methods=["POST"])],
                    middleware=[Middleware(RequestSizeLimit, max_bytes=1000)])
    client = TestClient(web)
    assert client.post("/", content=b"x" * 1000).text == "1000"
    refused = client.post("/", content=b"x" * 1001)
    assert refused.status_code == 413 and "limit" in refused.text

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"x" * 400
    assert client.post("/", content=chunks()).status_code == 413


def test_api_options_are_checked_before_any_work(goae_app, monkeypatch):
    monkeypatch.setattr(goae_app.model, "api", lambda *a, **k: pytest.fail("the model ran"))
    photo = ROOT / "examples" / "astronaut.png"
    for kwargs, message in (({"edits": [1]}, "edits must be strengths"), ({"edits": {"age": 2}}, "unknown edit"),
                            ({"views": "30:0"}, "views must be a list"), ({"face_index": -1}, "face index"),
                            ({"face_index": 3}, "face_index 3 is not valid")):
        with pytest.raises(USER_ERRORS, match=message):
            goae_app.api_invert(photo, progress=no_progress, **kwargs)


def test_api_views_are_checked():
    """The API's views, as the service reads them (goae.request, at most MAX_API_VIEWS)."""
    assert MAX_API_VIEWS == 16
    assert parse_views(None, MAX_API_VIEWS) == [] and \
        parse_views([[30, 0], [-30.5, 10]], MAX_API_VIEWS) == [(30, 0), (-30.5, 10)]
    for bad in ([30, 0], [[1, 2, 3]], "30:0", [[float("nan"), 0]], [[0, 0]] * 17, [[400, 0]]):
        with pytest.raises(USER_ERRORS):
            parse_views(bad, MAX_API_VIEWS)


# ------------------------------------------------------------------------------------------ start-up
def test_page_config_holds_only_data(app_module):
    """Gradio deep-copies the page config on every page load: a bound method in it (a State's delete callback)
    copied the whole app, the pipelines' weights included, per visitor (issue #31: 1-7 s per page)."""
    import copy

    def leaves(o):
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, (list, tuple)):
            for v in o:
                yield from leaves(v)
        elif not isinstance(o, (str, int, float, bool, type(None))):
            yield o

    others = list(leaves(app_module.demo.get_config_file()))
    assert others, "the State's delete callback is expected in the config"
    for leaf in others:  # copied as itself (a plain function), never with an object behind it
        assert copy.deepcopy(leaf) is leaf, leaf


def test_head_of_the_page_answers_at_once():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    rendered = []

    async def page(request):
        rendered.append(request.method)
        return HTMLResponse("<html>the page</html>")

    web = Starlette(routes=[Route("/", page, methods=["GET", "HEAD"]), Route("/x", page, methods=["GET", "HEAD"])],
                    middleware=[Middleware(QuickHead)])
    client = TestClient(web)
    head = client.head("/")
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html") and rendered == []
    assert client.get("/").text == "<html>the page</html>" and rendered == ["GET"]
    assert client.head("/x").status_code == 200 and rendered == ["GET", "HEAD"]  # other paths as before


def _spin(stop):
    while not stop.is_set():
        pass


def _start_while_busy(command: list[str], env: dict, port: int, log_path: Path) -> tuple[bool, int]:
    """Start the app while visitors load its page (two threads polling GET /) -> (still running once it
    answered, pages served)."""
    import subprocess
    import threading
    import time
    import urllib.request

    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        # A group of its own: `gradio app.py` runs the app in a child process, which must go with it.
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    done, served = threading.Event(), []

    def visitor():
        while not done.is_set():
            try:
                urllib.request.urlopen(url, timeout=60).read()
                served.append(1)
            except OSError:
                time.sleep(0.05)

    visitors = [threading.Thread(target=visitor) for _ in range(2)]
    for t in visitors:
        t.start()
    try:
        deadline = time.monotonic() + 540  # 3 busy loops on 2 cores: a start can take minutes
        while proc.poll() is None and len(served) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # Gradio's own check runs right after the server answers: give it time to fail
        return proc.poll() is None, len(served)
    finally:
        done.set()
        for t in visitors:
            t.join()
        import signal
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        deadline = time.monotonic() + 30  # the reload mode's child too
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_servers_on(port)


def _kill_servers_on(port: int) -> None:
    """Any process still serving this test's port (found by the GRADIO_SERVER_PORT in its environment): once,
    under a loaded full run, reload mode's app child outlived its group's kill and stayed behind."""
    import signal

    mark = f"GRADIO_SERVER_PORT={port}".encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass  # gone already, or not ours to read


@pytest.mark.slow
def test_the_app_comes_up_under_load_with_visitors(tmp_path):
    """Three busy-loop processes on the (2-core) CPU and visitors loading the page while the app starts, by
    `python app.py` and by `gradio app.py` (reload mode): it must come up every time (issue #31: 3 of 5 and
    2 of 2 starts died in Gradio's own launch check)."""
    import multiprocessing
    import shutil
    import sys

    from appserver import free_port

    gradio_cli = shutil.which("gradio") or pytest.skip("no `gradio` command")
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(3)]
    for p in spinners:
        p.start()
    try:
        for i, reload_mode in enumerate((False, False, True)):
            port = free_port()
            env = dict(os.environ, GOAE_WEIGHTS="random-small", GRADIO_ANALYTICS_ENABLED="False",
                       GRADIO_SERVER_PORT=str(port), OMP_NUM_THREADS="1")
            command = [gradio_cli, "app.py"] if reload_mode else [sys.executable, "app.py", "--port", str(port)]
            running, served = _start_while_busy(command, env, port, tmp_path / f"start{i}.log")
            assert running and served, (f"start {i} ({' '.join(command)}) failed:\n"
                                        + (tmp_path / f"start{i}.log").read_text()[-3000:])
    finally:
        stop.set()
        for p in spinners:
            p.join(10)


# ------------------------------------------------------------------------------------------ the API
PUBLIC_ENDPOINTS = ["invert", "render_view", "edit", "align", "choose_face", "reconstruct", "preview", "render",
                    "video", "mesh"]


def test_every_endpoint_has_a_chosen_name(app_module):
    """No auto-numbered names (issue #31: `align_1`): an event is public under its chosen name, or private
    (the page's own steps). /invert comes first on the API page and in the MCP tool list."""
    deps = app_module.demo.config["dependencies"]
    public = [d["api_name"] for d in deps if d["api_visibility"] != "private"]
    sessions = [n for n in ("edit_session", "edit_session_cat") if n in public]  # with directions loaded
    assert sorted(public) == sorted(PUBLIC_ENDPOINTS + sessions)
    assert all(d["api_visibility"] in ("public", "private") for d in deps)  # nothing callable yet unlisted
    named = list(app_module.demo.get_api_info()["named_endpoints"])
    assert named[0] == "/invert" and set(named) == {f"/{n}" for n in public}


def test_stateless_view_and_edit_reuse_the_inversion(goae_app, monkeypatch):
    """/render_view and /edit (MCP tools) keep nothing per caller, but the inversion of the same photo, face and
    options stays in the app's tri-plane cache: a second view of it only renders."""
    photo = str(ROOT / "examples" / "astronaut.png")
    first = goae_app.api_view(photo, None, 30, 0, progress=no_progress)
    view = first.view
    assert view.shape == (512, 512, 3) and Path(first.depth).is_file() and first.edited is None
    assert len(first.camera["label"]) == 25
    monkeypatch.setattr(goae_app.model, "entry", lambda *a, **k: pytest.fail("inverted the same photo again"))
    other = goae_app.api_view(photo, 0, -30, 5, progress=no_progress).view   # face 0 is the largest: the same face
    assert np.abs(other.astype(int) - view.astype(int)).mean() > 1
    with pytest.raises(USER_ERRORS, match="unknown edit"):
        goae_app.api_view(photo, None, 0, 0, {"no-such": 1}, progress=no_progress)
    with pytest.raises(USER_ERRORS, match="yaw"):
        goae_app.api_view(photo, None, 400, 0, progress=no_progress)


def test_edit_tab_says_how_to_get_directions(app_module):
    texts = [c["props"].get("value") or "" for c in app_module.demo.config["components"] if c["type"] == "markdown"]
    line = next(t for t in texts if "No edit directions loaded" in t)
    assert "`goae download --accept-licences`" in line and "\n" not in line and str(Path.home()) not in line
