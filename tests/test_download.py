"""`python -m goae.download`: against a real local HTTP server (http.server in a thread, with Range and
If-Range support written here) serving official-format files under the official names: the tiny
official-format EG3D pickle from ../shared, encoder/AFA .pt state dicts made like test_convert's, and the
official edit directions (../shared/examples/goae/ws_edit, whose sha256 goae knows).
Slow, redirecting and disk-filling cases are at the end."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

from goae import paths
from goae.weights import download as dl
from goae.weights import errors, fetch, sources
from goae.weights.sources import AFA_FILE, EG3D_FILE, ENCODER_FILE, SUMS_NAME

# The encoder/AFA sizes of test_convert.py that fit the tiny pickle's generator.
TINY_ENCODER = dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                    pretrained_window_sizes=(3, 3, 3, 2), w_dim=512)
TINY_AFA = dict(stage_channels=(16, 32, 64), feature_channels=32)


# ----------------------------------------------------------------------------- the server


class FileServer:
    """Serves {name: bytes} at /<name>, SHA256SUMS if given, honours Range / If-Range (ETag = sha256),
    can drop the connection part-way through a file once, and records every request."""

    def __init__(self, files: dict[str, bytes], sums: bool = True):
        self.files = dict(files)
        self.sums = sums
        self.drop_once: dict[str, int] = {}  # name -> bytes sent before the connection is dropped
        self.drop_skip: dict[str, int] = {}  # name -> requests served whole before the drop
        self.html: set[str] = set()  # names answered as text/html (a quota / login page)
        self.requests: list[tuple[str, str | None, str | None]] = []  # (path, Range, If-Range)
        self.routes: dict[str, callable] = {}  # extra paths (the Drive simulation, slow answers, redirects)
        self.stopped = threading.Event()  # ends the slow answers
        self.closed = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
                path = urllib.parse.urlsplit(self.path).path
                if path in server.routes:
                    return server.routes[path](self)
                name = urllib.parse.unquote(path.lstrip("/"))
                if name == SUMS_NAME and server.sums:
                    body = "".join(f"{hashlib.sha256(server.good[n]).hexdigest()}  {n}\n" for n in server.good).encode()
                    return server.send(self, body, "text/plain")
                if name not in server.files:
                    return self.send_error(404)
                server.send(self, server.files[name], "text/html" if name in server.html else "application/octet-stream",
                            name=name)

        self.good = dict(files)  # what SHA256SUMS describes (the official bytes)
        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hangs up early is expected here
                if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def send(self, h, data: bytes, ctype: str, name: str | None = None) -> None:
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range") or "")
        if m and h.headers.get("If-Range") in (None, etag):
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
            h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("ETag", etag)
        h.end_headers()
        cut = None
        if name in self.drop_once:
            if self.drop_skip.get(name, 0) > 0:
                self.drop_skip[name] -= 1
            else:
                cut = self.drop_once.pop(name)
        if cut is not None:  # send part of the body, then drop the connection (HTTP/1.0: it closes)
            h.wfile.write(data[start:cut])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data[start:])

    def file_requests(self, name: str):
        return [r for r in self.requests if r[0] == f"/{name}"]

    def close(self) -> None:  # a test may stop it early; the fixture's teardown then finds it closed
        self.stopped.set()
        if not self.closed:
            self.closed = True
            self.httpd.shutdown()
            self.httpd.server_close()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def official(parity_dir) -> dict[str, bytes]:
    """The three files in official format, as bytes (the pickle is read from ../shared, never copied)."""
    from goae.models.afa import AFA
    from goae.models.encoder import GOAEncoder

    torch.manual_seed(0)
    out = {EG3D_FILE: (parity_dir / "eg3d" / "g_tiny_official_format.pkl").read_bytes()}
    for name, module in ((ENCODER_FILE, GOAEncoder(**TINY_ENCODER)), (AFA_FILE, AFA(**TINY_AFA))):
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)  # what the GOAE release holds: a flat state dict
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def directions(examples_dir) -> dict[str, bytes]:
    """The official edit direction files as the GOAE repository holds them, under their mirror names."""
    return {f"{paths.DIRECTIONS_DIR}/{name}": (examples_dir / "goae" / "ws_edit" / name).read_bytes()
            for name in sources.DIRECTION_SHA256}


@pytest.fixture
def server(official, directions):
    s = FileServer({**official, **directions})
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """GOAE_HOME in tmp; no mirror from the environment; stdin is not a terminal; tiny configs for conversion."""
    from goae.weights import convert

    monkeypatch.setenv("GOAE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    real = convert.convert_goae
    monkeypatch.setattr(convert, "convert_goae", lambda *a, **k: real(*a, **{**k, "encoder_config": TINY_ENCODER,
                                                                           "afa_config": TINY_AFA}))
    return tmp_path / "home"


@pytest.fixture
def run(capsys, request):
    """main(argv) -> (exit code, stdout, stderr); the transcript goes into the test report (pytest -rA)."""
    def _run(*argv) -> tuple[int, str, str]:
        code = dl.main(list(argv))
        out, err = capsys.readouterr()
        request.node.add_report_section("call", "transcript",
                                        f"$ python -m goae.download {' '.join(argv)}\n[exit {code}]\n[stdout]\n{out}[stderr]\n{err}")
        return code, out, err
    return _run


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".part"))


# ----------------------------------------------------------------------------- cases


def test_shared_helpers(tmp_path):
    # One sha256 and one "error as one line" for the downloader, the converter, the landmarker and the CLI.
    from goae import cli, landmarker
    from goae.io import one_line, sha256_file
    from goae.paths import cache_root
    from goae.weights import convert

    data = bytes(range(256)) * 9000  # spans several chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == sha256_file(tmp_path / "f", chunk=7) == hashlib.sha256(data).hexdigest()
    assert cli.one_line is one_line and convert.sha256_file is sha256_file and landmarker.sha256_file is sha256_file
    assert dl.sha256_file is sha256_file and landmarker.cache_root is cache_root
    assert one_line(FileNotFoundError(2, "No such file or directory", "a.pt")) == "No such file or directory: a.pt"
    assert one_line(ValueError("bad\n   input")) == "bad input"
    assert one_line(errors.DownloadError("goae's own\nerror")) == "goae's own error"  # its text, as the CLI shows it
    assert one_line(RuntimeError("deep")) == "RuntimeError: deep"  # a bug keeps its type
    assert one_line(TimeoutError()) == "TimeoutError" and one_line("a\tb\n") == "a b"


def test_full_download_and_conversion(home, server, official, directions, run, monkeypatch):
    from safetensors.torch import load_file

    from goae.edit import directions_for, load_direction
    from goae.pipeline import GOAEPipeline

    assert paths.default_weights_folder() is None
    monkeypatch.setenv(sources.MIRROR_ENV, server.url + "/")  # the environment variable, trailing slash and all
    code, out, err = run("--accept-licences", "--retries", "0")
    assert code == 0, err
    folder = home / "weights" / "goae-ffhq"
    assert paths.default_weights_folder() == folder
    assert out.splitlines()[0] == f"goae weights ready: {folder}"
    assert "NVIDIA Source Code License" in err and "no LICENSE file" in err
    # Every file fetched once, whole, under its official name; SHA256SUMS checked and recorded.
    assert sorted(r[0] for r in server.requests) == sorted(["/" + SUMS_NAME, *(f"/{n}" for n in official),
                                                           *(f"/{n}" for n in directions)])
    downloads = home / "downloads"
    sums = dl.read_sums(downloads / SUMS_NAME)
    assert sums == {n: hashlib.sha256(b).hexdigest() for n, b in official.items()}
    for name, data in official.items():
        assert (downloads / name).read_bytes() == data
        assert sums[name] in (folder / "README.md").read_text()  # provenance in the model card
    assert leftovers(home) == [] and not list(downloads.glob("*.json"))
    # The folder loads, and holds exactly the downloaded weights.
    pipe = GOAEPipeline.from_pretrained(folder)
    enc = torch.load(io.BytesIO(official[ENCODER_FILE]), weights_only=True)
    sd = pipe.encoder.state_dict()
    assert sd.keys() == enc.keys() and all(torch.equal(sd[k], enc[k]) for k in enc)
    afa = load_file(folder / "afa" / "diffusion_pytorch_model.safetensors")
    ref = torch.load(io.BytesIO(official[AFA_FILE]), weights_only=True)
    assert all(torch.equal(afa[k], ref[k]) for k in ref)
    # The official edit directions: all five verified in downloads/ws_edit, the human ones in the pipeline
    # (which the library then loads by itself), their source and sha256 in the model card.
    for name, data in directions.items():
        assert (downloads / name).read_bytes() == data
    dirs, notes = directions_for(pipe, None)
    assert sorted(dirs) == ["age", "anger", "glass"] and notes == []
    for name, d in dirs.items():
        assert torch.equal(d.tensor, load_direction(downloads / "ws_edit" / f"{name}.npy").tensor)
    card = (folder / "README.md").read_text()
    assert sources.DIRECTIONS_PAGE in card and sources.DIRECTION_SHA256["glass.npy"] in card
    assert "cat_black, cat_smalleyes (for the cat model) are kept in" in err
    # A second run does nothing (no request at all).
    n = len(server.requests)
    code, out, err = run("--accept-licences")
    assert code == 0 and "already converted" in err and len(server.requests) == n


def test_interrupted_then_resumed(home, server, official, run):
    server.drop_once[ENCODER_FILE] = half = len(official[ENCODER_FILE]) // 2
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
    assert code == 1
    line = error_line(err)
    assert "stopped at" in line and "run the command again to resume" in line
    downloads = home / "downloads"
    part = downloads / (ENCODER_FILE + ".part")
    assert part.read_bytes() == official[ENCODER_FILE][:half]
    assert not (downloads / ENCODER_FILE).exists() and not (home / "weights").exists()
    assert (downloads / EG3D_FILE).read_bytes() == official[EG3D_FILE]  # the file before it is done
    # Second run: EG3D is not fetched again, the encoder resumes at `half` (If-Range with its ETag).
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
    assert code == 0, err
    assert "resuming at" in err
    enc_requests = server.file_requests(ENCODER_FILE)
    assert [r[1] for r in enc_requests] == [None, f"bytes={half}-"]
    assert enc_requests[1][2] == f'"{hashlib.sha256(official[ENCODER_FILE]).hexdigest()}"'
    assert len(server.file_requests(EG3D_FILE)) == 1
    assert (downloads / ENCODER_FILE).read_bytes() == official[ENCODER_FILE]
    assert dl.read_sums(downloads / SUMS_NAME)[ENCODER_FILE] == hashlib.sha256(official[ENCODER_FILE]).hexdigest()
    assert leftovers(home) == [] and paths.default_weights_folder() == home / "weights" / "goae-ffhq"


def test_drop_is_retried_within_one_run(server, official, tmp_path):
    # With retries (the default), one run survives a dropped connection by resuming itself.
    server.drop_once[AFA_FILE] = 1000
    logs = []
    part = fetch.download_file(f"{server.url}/{AFA_FILE}", tmp_path / AFA_FILE, retries=1, log=logs.append)
    assert part.read_bytes() == official[AFA_FILE]
    assert [r[1] for r in server.file_requests(AFA_FILE)] == [None, "bytes=1000-"]
    assert any("retrying (1/1)" in line for line in logs) and any("resuming at" in line for line in logs)


def test_resume_restarts_when_the_file_changed(server, official, tmp_path):
    # A .part of an older version: If-Range does not match, the server sends the whole new file.
    url = f"{server.url}/{AFA_FILE}"
    part = tmp_path / (AFA_FILE + ".part")
    part.write_bytes(b"x" * 500)
    (tmp_path / (AFA_FILE + ".part.json")).write_text(json.dumps({"source": url, "etag": '"old"'}))
    assert fetch.download_file(url, tmp_path / AFA_FILE, retries=0, log=lambda m: None).read_bytes() == official[AFA_FILE]
    # A .part longer than the file: 416, then a fresh download.
    part.write_bytes(official[AFA_FILE] + b"extra")
    (tmp_path / (AFA_FILE + ".part.json")).write_text(json.dumps({"source": url}))
    assert fetch.download_file(url, tmp_path / AFA_FILE, retries=0, log=lambda m: None).read_bytes() == official[AFA_FILE]


def _corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:]


@pytest.mark.parametrize("how", ["checksum", "not_a_checkpoint", "web_page"])
def test_corrupted_file(home, server, official, run, how):
    if how == "checksum":  # flipped bytes inside a tensor: only the mirror's SHA256SUMS can tell
        server.files[AFA_FILE] = _corrupt(official[AFA_FILE])
    elif how == "not_a_checkpoint":  # no digests to compare: the converter's safe loader refuses the bytes
        server.sums = False
        server.files[AFA_FILE] = b"\x00garbage" * 1000
    else:  # a 200 answer that is a quota/login page
        server.sums = False
        server.html.add(AFA_FILE)
        server.files[AFA_FILE] = b"<html><body>Quota exceeded</body></html>"
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
    assert code == 1 and out == ""
    line = error_line(err)
    expected = {"checksum": "has sha256", "not_a_checkpoint": "is not a usable GOAE AFA module",
                "web_page": "answered with a web page"}[how]
    assert expected in line and AFA_FILE in line, line
    downloads = home / "downloads"
    # The bad bytes are gone (not kept as good, not kept to resume from); nothing was converted.
    assert not (downloads / AFA_FILE).exists() and not (downloads / (AFA_FILE + ".part")).exists()
    assert AFA_FILE not in dl.read_sums(downloads / SUMS_NAME)
    assert not (home / "weights").exists() and leftovers(home) == []
    assert paths.default_weights_folder() is None
    if how == "checksum":  # the mirror is fixed: the next run fetches only the AFA file and converts
        server.files[AFA_FILE] = official[AFA_FILE]
        n = len(server.requests)
        code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
        assert code == 0, err
        dirs = [f"/{paths.DIRECTIONS_DIR}/{name}" for name in sources.DIRECTION_SHA256]  # not reached by the first run
        assert [r[0] for r in server.requests[n:]] == ["/" + SUMS_NAME, "/" + AFA_FILE, *dirs]
        assert paths.default_weights_folder() is not None


def test_file_the_converter_refuses_is_moved_aside(home, official, run):
    # Readable, so it passes the per-file check, but not the encoder (the AFA weights under its name): the
    # converter's error names the file (CheckpointError.path), and only that file is moved aside and forgotten.
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    for name, data in official.items():
        (downloads / name).write_bytes(official[AFA_FILE] if name == ENCODER_FILE else data)
    code, out, err = run("--mirror", "http://127.0.0.1:9/never-used", "--no-directions")
    assert code == 1
    line = error_line(err)
    assert "conversion failed, nothing was written" in line and "does not match the model" in line, line
    assert sorted(p.name for p in downloads.glob("*.rejected")) == [ENCODER_FILE + ".rejected"]
    assert (downloads / EG3D_FILE).is_file() and (downloads / AFA_FILE).is_file()
    assert sorted(dl.read_sums(downloads / SUMS_NAME)) == sorted([EG3D_FILE, AFA_FILE])
    assert not (home / "weights" / "goae-ffhq").exists() and leftovers(home) == []


def test_bad_file_put_there_by_hand(home, official, run):
    # Offline: the files are in the downloads folder already, one of them damaged (a truncated copy).
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    for name, data in official.items():
        (downloads / name).write_bytes(data if name != EG3D_FILE else data[: len(data) // 3])
    code, out, err = run("--mirror", "http://127.0.0.1:9/never-used")  # no licence needed: no download
    assert code == 1
    line = error_line(err)
    assert "is not a usable EG3D generator" in line and "moved aside" in line and "download ffhqrebalanced512-128.pkl by hand" in line
    assert (downloads / (EG3D_FILE + ".rejected")).is_file() and not (downloads / EG3D_FILE).exists()
    assert not (home / "weights").exists()
    # The good copy put in place by hand: verified and converted without any network access.
    (downloads / EG3D_FILE).write_bytes(official[EG3D_FILE])
    code, out, err = run("--mirror", "http://127.0.0.1:9/never-used")
    assert code == 0, err
    assert paths.default_weights_folder() == home / "weights" / "goae-ffhq"
    # Without --accept-licences nothing is fetched: the edit directions are left out, and the line says how to add them.
    assert "official edit directions were not fetched (their terms were not accepted)" in err
    assert not (home / "weights" / "goae-ffhq" / "directions").exists()


def test_licence_not_accepted(home, server, run):
    code, out, err = run("--mirror", server.url)
    assert code == 2 and out == ""
    line = error_line(err)
    assert "not accepted" in line and "--accept-licences" in line and "nothing was downloaded" in line
    assert "NVIDIA Source Code License" in err and "https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt" in err
    assert "https://github.com/jiangyzy/GOAE" in err and "no LICENSE file" in err
    assert server.requests == [] and not home.exists()
    # Interactive: 'no' refuses; EOF refuses.
    for answer in (lambda q: "no", functools.partial(_raise, EOFError)):
        with pytest.raises(errors.LicenceNotAcceptedError, match="nothing was downloaded"):
            dl.download_weights(mirror=server.url, interactive=True, prompt=answer, log=lambda m: None)
    assert server.requests == [] and not home.exists()


def _raise(exc, *args):
    raise exc


def test_interactive_yes_downloads(home, server, official):
    asked = []
    dl.download_weights(mirror=server.url, interactive=True, prompt=lambda q: asked.append(q) or "yes",
                        retries=0, log=lambda m: None)
    assert len(asked) == 1 and "accept" in asked[0]
    assert paths.default_weights_folder() is not None


def test_server_down(home, run):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run("--accept-licences", "--mirror", f"http://127.0.0.1:{port}", "--retries", "0")
    assert code == 1 and out == ""
    line = error_line(err)
    assert line.startswith("python -m goae.download: error: cannot reach 127.0.0.1:") and "connection refused" in line
    assert not (home / "weights").exists()
    assert [p.name for p in (home / "downloads").iterdir()] in ([], [".lock"])
    # A mirror without the file: HTTP 404, named.
    srv = FileServer({}, sums=False)
    try:
        code, out, err = run("--accept-licences", "--mirror", srv.url, "--retries", "0")
    finally:
        srv.close()
    assert code == 1 and f"{srv.url}/{EG3D_FILE}: HTTP 404" in error_line(err)


def test_usage_errors(home, run, tmp_path):
    other = tmp_path / "not-a-pipeline"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, out, err = run("--accept-licences", "--out", str(other))
    assert code == 1 and "refusing to replace" in error_line(err) and (other / "notes.txt").exists()
    code, out, err = run("--accept-licences", "--mirror", "ftp://example.org/w")
    assert code == 1 and "http(s) URL" in error_line(err)
    code, out, err = run("--retries", "-1")
    assert code == 2


# ----------------------------------------------------------------------------- Google Drive (simulated)
#
# The real GOAE files sit in a Google Drive folder. These pages follow the formats goae parses (the
# folder page's `_DRIVE_ivd` data; the 'cannot scan for viruses' form with its hidden fields); they are
# a simulation, not a recording of Google's pages, so they test goae's flow rather than Google's format.


def _js_escape(text: str) -> str:
    return "".join(c if c.isalnum() or c in " _.-:" else f"\\x{ord(c):02x}" for c in text)


def _drive(server: FileServer, official: dict[str, bytes], monkeypatch, listing: bool = True) -> None:
    ids = {ENCODER_FILE: "1EncoderFileIdAAAA", AFA_FILE: "1AfaFileIdBBBBBBBB"}
    entries = [[fid, ["folder"], name, "application/octet-stream"] for name, fid in ids.items()]
    data = _js_escape(json.dumps([entries]))
    page = (f"<html><head><title>GOAE - Google Drive</title></head><body><script>window['_DRIVE_ivd'] = '{data}';"
            f"</script></body></html>") if listing else "<html><body>Sign in</body></html>"

    def folder(h):
        server.send(h, page.encode(), "text/html")

    def uc(h):  # the large-file warning page, whose form leads to the file
        fid = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)["id"][0]
        form = (f'<form id="download-form" action="/usercontent" method="get"><input type="submit" value="Download anyway">'
                f'<input type="hidden" name="id" value="{fid}"><input type="hidden" name="export" value="download">'
                f'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-123"></form>')
        server.send(h, f"<html><body><p class='uc-warning-caption'>Google Drive can't scan this file</p>{form}</body></html>".encode(),
                    "text/html")

    def usercontent(h):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)
        if q.get("confirm") != ["t"] or q.get("uuid") != ["u-123"]:
            return h.send_error(403)
        name = {v: k for k, v in ids.items()}[q["id"][0]]
        server.send(h, official[name], "application/octet-stream", name=name)

    server.routes.update({"/drive/folders/F": folder, "/embedded": folder, "/uc": uc, "/usercontent": usercontent})
    monkeypatch.setattr(sources, "GOAE_DRIVE_FOLDER_ID", "F")
    monkeypatch.setattr(sources, "DRIVE_FOLDER_PAGE", server.url + "/drive/folders/{id}")
    monkeypatch.setattr(sources, "DRIVE_EMBEDDED_FOLDER", server.url + "/embedded?id={id}")
    monkeypatch.setattr(sources, "DRIVE_FILE_URL", server.url + "/uc?export=download&id={id}")
    monkeypatch.setattr(sources, "NGC_FILE_URL", server.url + "/{name}")


def test_official_hosts_simulated(home, server, official, run, monkeypatch):
    _drive(server, official, monkeypatch)
    # Drive drops too: the retry resolves a fresh URL and resumes (the first request of the file is
    # goae's probe that the confirmation led to the file).
    server.drop_once[ENCODER_FILE], server.drop_skip[ENCODER_FILE] = 4096, 1
    code, out, err = run("--accept-licences", "--retries", "1")
    assert code == 0, err
    downloads = home / "downloads"
    assert all((downloads / n).read_bytes() == b for n, b in official.items())
    assert [r[1] for r in server.requests if r[0].startswith("/usercontent") and "1Encoder" in r[0]] == [None, None, None, "bytes=4096-"]


def test_drive_listing_unreadable(home, server, official, run, monkeypatch):
    _drive(server, official, monkeypatch, listing=False)
    code, out, err = run("--accept-licences", "--retries", "0")
    assert code == 1
    line = error_line(err)
    assert "Google Drive: could not find encoder_FFHQ.pt" in line
    assert f"put it at {home / 'downloads' / ENCODER_FILE}" in line and "--accept-licences` again" in line
    assert (home / "downloads" / EG3D_FILE).is_file()  # what could be fetched is kept


def test_non_interactive_session_refuses(tmp_path):
    # A real non-interactive process (stdin is not a terminal), through `python -m goae.download`.
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GOAE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(root),
           sources.MIRROR_ENV: "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "goae.download"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert "error: the licences of the weights were not accepted" in r.stderr and "--accept-licences" in r.stderr
    assert not (tmp_path / "home").exists()


# ----------------------------------------------------------------------------- the edit directions


def test_directions_added_to_an_existing_pipeline(home, server, official, directions, run):
    # A folder converted without them (--no-directions, or before goae fetched them): the next run adds them,
    # fetching only the direction files; a damaged one is a warning, and the run after the fix adds it.
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0", "--no-directions")
    assert code == 0, err
    folder = home / "weights" / "goae-ffhq"
    assert not (folder / "directions").exists() and not any(r[0].startswith("/ws_edit/") for r in server.requests)
    glass = f"{paths.DIRECTIONS_DIR}/glass.npy"
    server.files[glass] = _corrupt(directions[glass])
    n = len(server.requests)
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
    assert code == 0, err
    assert sorted(r[0] for r in server.requests[n:]) == sorted(f"/{name}" for name in directions)  # no weights again
    assert "1 official edit direction(s) left out: glass.npy" in err and "has sha256" in err
    assert sorted(p.name for p in (folder / "directions").iterdir()) == ["age.safetensors", "anger.safetensors"]
    assert not (home / "downloads" / glass).exists() and leftovers(home) == []
    server.files[glass] = directions[glass]
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0")
    assert code == 0, err
    assert sorted(p.stem for p in (folder / "directions").iterdir()) == ["age", "anger", "glass"]
    n = len(server.requests)
    code, out, err = run("--accept-licences", "--mirror", server.url)
    assert code == 0 and "already converted" in err and len(server.requests) == n


def test_directions_from_the_official_repository_by_default(home, server, directions, monkeypatch, tmp_path):
    # Without a mirror the files come from the GOAE repository's raw URLs at the pinned commit.
    assert sources.DIRECTIONS_URL.format(commit=sources.GOAE_COMMIT, name="age.npy") == (
        "https://raw.githubusercontent.com/jiangyzy/GOAE/ba7ef3d652aef73e7995d29a0261e5d08df406e2/example/ws_edit/age.npy")
    monkeypatch.setattr(sources, "DIRECTIONS_URL", server.url + "/ws_edit/{name}?commit={commit}")
    got = dl._get_directions(sources.DIRECTION_FILES, sources.DIRECTION_FILES, True, tmp_path, None,
                             dict(retries=0, timeout=10, min_rate=fetch.MIN_RATE, log=lambda m: None))
    assert sorted(got) == sorted(directions) and all((tmp_path / n).read_bytes() == b for n, b in directions.items())
    assert {urllib.parse.urlsplit(r[0]).query for r in server.requests} == {f"commit={sources.GOAE_COMMIT}"}


# ----------------------------------------------------------------------------- slow servers


def _trickle(server: FileServer, path: str, data: bytes, every: float, headers_too: bool = False) -> None:
    """A route that sends `data` one byte every `every` seconds (the headers too, with headers_too)."""
    def route(h):
        head = (f"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n"
                f"ETag: \"{hashlib.sha256(data).hexdigest()}\"\r\n\r\n").encode()
        if not headers_too:
            h.wfile.write(head)
            h.wfile.flush()
        for b in (head if headers_too else b"") + data:
            if server.stopped.is_set():
                return
            h.wfile.write(bytes([b]))
            h.wfile.flush()
            time.sleep(every)
    server.routes[path] = route


def _finishes(fn, limit: float = 120.0):
    """fn() in a thread; its result, or a failure if it is still running after `limit` seconds (it would hang
    forever without the fix; the expected time is a few seconds)."""
    box = {}

    def target():
        try:
            box["r"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            box["e"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still running after {limit} s"
    if "e" in box:
        raise box["e"]
    return box["r"]


def test_trickling_server_stops_and_resumes(home, server, official, run):
    # 4 bytes/s with --timeout 2: before, the transfer went on for as long as the server liked.
    _trickle(server, "/" + AFA_FILE, official[AFA_FILE], every=0.25)
    code, out, err = _finishes(lambda: run("--accept-licences", "--mirror", server.url, "--retries", "0",
                                           "--timeout", "2"))
    assert code == 1
    line = error_line(err)
    assert f"the download of {AFA_FILE} stopped at" in line and "slower than 1.0 KB/s" in line
    assert "run the command again to resume" in line
    part = home / "downloads" / (AFA_FILE + ".part")
    kept = part.read_bytes()
    assert 0 < len(kept) < 100 and official[AFA_FILE].startswith(kept)  # the progress so far, on disk
    server.stopped.set()
    del server.routes["/" + AFA_FILE]  # the server is healthy again: the next run resumes where it stopped
    code, out, err = run("--accept-licences", "--mirror", server.url, "--retries", "0", "--timeout", "2")
    assert code == 0, err
    assert server.file_requests(AFA_FILE)[-1][1] == f"bytes={len(kept)}-"
    assert (home / "downloads" / AFA_FILE).read_bytes() == official[AFA_FILE]


def test_trickled_headers_time_out(server, official, tmp_path):
    _trickle(server, "/slow", official[AFA_FILE], every=0.25, headers_too=True)
    try:
        with pytest.raises(errors.DownloadError, match=r"timed out \(no answer within 1 s\)") as e:
            _finishes(lambda: fetch.download_file(f"{server.url}/slow", tmp_path / AFA_FILE, retries=0, timeout=1,
                                                  log=lambda m: None))
        assert e.value.transient and e.value.status is None  # what the retry loop decides by
        assert not (tmp_path / (AFA_FILE + ".part")).exists()
    finally:
        server.close()  # the trickling answer stops now, not at the end of the session


# ----------------------------------------------------------------------------- redirects


def test_redirect_policy(server, official, tmp_path):
    other = FileServer({AFA_FILE: official[AFA_FILE]})
    try:
        def redirect(to):
            def route(h):
                h.send_response(302)
                h.send_header("Location", to)
                h.send_header("Content-Length", "0")
                h.end_headers()
            return route
        server.routes.update({"/same": redirect(f"/{AFA_FILE}"), "/port": redirect(f"{other.url}/{AFA_FILE}"),
                              "/ftp": redirect(f"ftp://127.0.0.1/{AFA_FILE}"), "/file": redirect("file:///etc/passwd")})
        got = fetch.download_file(f"{server.url}/same", tmp_path / "a", retries=0, log=lambda m: None)
        assert got.read_bytes() == official[AFA_FILE]  # the same origin: followed
        for path, target in (("/port", f"{other.url}/{AFA_FILE}"), ("/ftp", f"ftp://127.0.0.1/{AFA_FILE}"),
                             ("/file", "file:///etc/passwd")):
            with pytest.raises(errors.DownloadError) as e:
                fetch.download_file(f"{server.url}{path}", tmp_path / "b", retries=2, log=lambda m: None)
            assert str(e.value) == (f"{server.url}{path} redirects to {target}: not followed (goae follows a redirect "
                                    "only to the same scheme, host and port, or to an https URL); check the URL or the mirror")
            assert not (tmp_path / "b.part").exists()
        assert other.requests == [] and server.requests.count(("/port", None, None)) == 1  # refused, not retried
    finally:
        other.close()
    # The rule itself: https anywhere (NGC's signed storage URLs, drive.usercontent.google.com); else one origin.
    ok = fetch.redirect_allowed
    assert ok("https://drive.google.com/uc?id=1", "https://drive.usercontent.google.com/download?id=1")
    assert ok("http://mirror.example/a", "https://cdn.example:8443/a") and ok("http://h:80/a", "http://H/b")
    assert not ok("https://mirror.example/a", "http://mirror.example/a")  # no downgrade
    assert not ok("http://h:8000/a", "http://h:8001/a") and not ok("http://h/a", "http://other/a")
    assert not ok("https://h/a", "ftp://h/a") and not ok("http://h/a", "file:///etc/passwd")


# ----------------------------------------------------------------------------- a full disk


def test_file_size_limit_removes_the_part(server, official, tmp_path):
    # A real write failure: a child process whose file-size limit (RLIMIT_FSIZE) is 256 KB gets EFBIG while
    # writing the 1.3 MB file, as a full disk gives ENOSPC. The .part is removed, the error says so.
    import subprocess

    script = f"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG from write() instead of the signal
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
from goae.weights import errors, fetch
try:
    fetch.download_file({server.url + '/' + AFA_FILE!r}, {str(tmp_path / AFA_FILE)!r}, retries=2, log=lambda m: None)
except errors.DownloadError as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)}, cwd=tmp_path)
    kind, message = json.loads(r.stdout.strip().splitlines()[-1])
    assert kind == "DownloadError" and f"cannot write {AFA_FILE} in {tmp_path}: File too large" in message
    assert "the partial download (256.0 KB) was removed so that it does not keep the disk full" in message
    assert "(the file is 1.3 MB)" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert len(server.file_requests(AFA_FILE)) == 1  # not retried: the disk does not empty itself


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KB file system (tmpfs), where this process may mount one (root on Linux)."""
    import os
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (test_file_size_limit_removes_the_part covers the write failure)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk(server, official, small_disk):
    # The size is declared: refused before a byte is written.
    with pytest.raises(errors.DownloadError, match=rf"{AFA_FILE} needs 1.3 MB more, but {small_disk} has .* free; nothing was written"):
        fetch.download_file(f"{server.url}/{AFA_FILE}", small_disk / AFA_FILE, retries=0, log=lambda m: None)
    assert list(small_disk.iterdir()) == []

    def undeclared(h):  # no Content-Length (HTTP/1.0, the end of the body is the end of the connection)
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        h.wfile.write(official[AFA_FILE])
    server.routes["/undeclared"] = undeclared
    with pytest.raises(errors.DownloadError, match=r"No space left on device; the partial download \(.*\) was removed"):
        fetch.download_file(f"{server.url}/undeclared", small_disk / AFA_FILE, retries=0, log=lambda m: None)
    assert list(small_disk.iterdir()) == []
