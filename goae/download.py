"""Weights in one command: fetch the official EG3D and GOAE checkpoints and convert them.

    python -m goae.download --accept-licences          # or `goae download ...`

What it does, in order:

1. Licences. The checkpoints are not goae's: NVIDIA's EG3D generator is under the NVIDIA Source Code
   License for EG3D (non-commercial: research or evaluation), and the GOAE encoder/AFA checkpoints are
   the GOAE authors' release, whose repository publishes no LICENSE file. Nothing is fetched until the
   user accepts both, with `--accept-licences` or at an interactive prompt; a non-interactive session
   without the flag is refused.
2. Downloads, into `<cache>/downloads/` ($GOAE_HOME, else $XDG_CACHE_HOME/goae or ~/.cache/goae):
   `ffhqrebalanced512-128.pkl` from NVIDIA NGC, `encoder_FFHQ.pt` and `afa_FFHQ.pt` from the GOAE
   authors' Google Drive folder. A mirror (`--mirror URL` or $GOAE_WEIGHTS_MIRROR) replaces both hosts:
   every file is then `<mirror>/<file name>`, and `<mirror>/SHA256SUMS`, if served, is checked.
   Bytes go to `<name>.part` and an interrupted transfer resumes with an HTTP Range request (If-Range
   guards against a file that changed on the server). A file gets its final name only once it is
   complete, matches every known sha256 and has been read by the converter's safe loaders; bytes that
   fail are discarded, never kept as good. The sha256 of every file is recorded in
   `<cache>/downloads/SHA256SUMS` (`sha256sum -c` format) and in the pipeline's model card.
   Files already in the downloads folder (e.g. fetched by hand from Google Drive) are used as they are,
   after the same checks.
3. Conversion with `goae.convert.convert_goae` into `<cache>/weights/goae-ffhq` (or `--out`), published
   atomically; the command prints the folder. `default_weights_folder()` returns it once it is complete,
   for the app and `goae invert` to use when no weights are configured.
4. The official edit directions (age, anger, glass; cat_black, cat_smalleyes for the cat model), which
   the GOAE authors publish in their git repository (example/ws_edit), come from GitHub at a fixed commit
   (or `<mirror>/ws_edit/`) into `<cache>/downloads/ws_edit/`, checked against their known sha256; the
   human ones go into the pipeline's `directions/` (an existing pipeline folder without them gets them).
   They are an extra: one that cannot be fetched is a warning, and `--no-directions` skips them.

Slow and hostile servers: the answer must come within --timeout seconds and a transfer must bring
--min-rate bytes/s over each --timeout window, or it stops (resumable); redirects are followed within one
origin or to https only; a full disk removes the .part it was filling (see download_file).

Only the standard library is used for HTTP (urllib). Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from goae import __version__
from goae.card import Provenance, current_command, write_model_card
from goae.io import atomic_dir, atomic_write_bytes, one_line, sha256_file
# Where things go lives in goae.paths (the pipeline and the app read it without the downloader); the names
# stay importable from here.
from goae.paths import (DIRECTIONS_DIR, HOME_ENV, PIPELINE_NAME, cache_root, default_weights_folder,  # noqa: F401
                        downloads_folder, weights_folder)

# ----------------------------------------------------------------------------- the official files

EG3D_FILE = "ffhqrebalanced512-128.pkl"
ENCODER_FILE = "encoder_FFHQ.pt"
AFA_FILE = "afa_FFHQ.pt"

# NVIDIA NGC (linked from NVlabs/eg3d docs/models.md): the model page, and the file behind it.
NGC_PAGE = "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d"
NGC_FILE_URL = "https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files/{name}"
# The GOAE README links one Google Drive *folder* holding both checkpoints (no per-file links).
GOAE_DRIVE_FOLDER_ID = "12pTX5TKQcA8ElNW5jDkWURSPUyISggHs"
DRIVE_FOLDER_PAGE = "https://drive.google.com/drive/folders/{id}"
DRIVE_EMBEDDED_FOLDER = "https://drive.google.com/embeddedfolderview?id={id}"
DRIVE_FILE_URL = "https://drive.google.com/uc?export=download&id={id}"

EG3D_LICENCE_NAME = "NVIDIA Source Code License for EG3D (NVIDIA Source Code License-NC)"
EG3D_LICENCE_URL = "https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt"
GOAE_REPO_URL = "https://github.com/jiangyzy/GOAE"

# The official edit directions are in the GOAE git repository (example/ws_edit, what its infer.py --edit
# reads), not in the Drive folder: they come from GitHub's raw file host at a fixed commit, under the
# GOAE authors' terms like the checkpoints. cat_* are for the AFHQ cats model (torch.save zips named .npy).
GOAE_COMMIT = "ba7ef3d652aef73e7995d29a0261e5d08df406e2"
DIRECTIONS_PAGE = f"{GOAE_REPO_URL}/tree/{GOAE_COMMIT}/example/ws_edit"
DIRECTIONS_URL = "https://raw.githubusercontent.com/jiangyzy/GOAE/{commit}/example/ws_edit/{name}"
# The sha256 of the files at that commit (git blobs 79ffb92, 3b81843, 7670b0c, e24dd28, 2cd5c92).
DIRECTION_SHA256 = {
    "age.npy": "480e1067bafe89eb58d09eaddf45a61cbdf834b6dbb1d8e3ac8213be8428ba02",
    "anger.npy": "d3b4ecae2146287e3b63c7f50c976d72eeae62575d26aebbe8d2e717b4f25ca0",
    "glass.npy": "61c0464b735259edfb876df9792ba85d8bf1cb96e8c2f8e57635af24424b79b8",
    "cat_black.npy": "7d01c934fa7ceed89a0ee1f9925114fb3aa29f3fd7f16da64f92696240978416",
    "cat_smalleyes.npy": "569cd7c4cf778dfb07f216d018f6ff4eb11efc4ef03b80dfb48ecb6bb269fa21",
}

# sha256 of the official files. Neither NVIDIA nor the GOAE authors publish digests of the checkpoints, so
# none are built in for them: a checkpoint is checked by size, by the mirror's SHA256SUMS when there is one,
# and by reading it with the converter's safe loaders, and its digest is recorded for later runs to compare.
# The edit directions' digests are known (above).
KNOWN_SHA256: dict[str, str] = {f"{DIRECTIONS_DIR}/{n}": d for n, d in DIRECTION_SHA256.items()}

MIRROR_ENV = "GOAE_WEIGHTS_MIRROR"
SUMS_NAME = "SHA256SUMS"
MAX_FILE_BYTES = 8 << 30  # the released files are a few hundred MB; an endless stream stops here
CHUNK = 1 << 20
# A transfer slower than this (bytes/s, averaged over windows of --timeout seconds) stops like a dropped one:
# its bytes are kept and resume. The socket timeout alone bounds each read, not the transfer.
MIN_RATE = 1024
COMMAND = "python -m goae.download --accept-licences"


@dataclasses.dataclass(frozen=True)
class Licence:
    name: str
    url: str
    terms: str


@dataclasses.dataclass(frozen=True)
class WeightFile:
    name: str
    kind: str  # "eg3d" (network pickle), "pt" (flat torch state dict) or "direction" (an edit direction)
    what: str
    page: str  # where a person downloads it by hand
    licence: Licence


EG3D_LICENCE = Licence(
    EG3D_LICENCE_NAME, EG3D_LICENCE_URL,
    "non-commercial use only (research or evaluation); see the licence for the full terms",
)
GOAE_LICENCE = Licence(
    "the GOAE authors' terms", GOAE_REPO_URL,
    "the authors' repository has no LICENSE file, so no licence is granted beyond what they allow: "
    "use these checkpoints for non-commercial research only and ask the authors before any other use; "
    "they are also derived from EG3D, so NVIDIA's licence above applies too",
)
FILES = (
    WeightFile(EG3D_FILE, "eg3d", "EG3D generator (NVIDIA)", NGC_PAGE, EG3D_LICENCE),
    WeightFile(ENCODER_FILE, "pt", "GOAE encoder (Yuan et al.)", DRIVE_FOLDER_PAGE.format(id=GOAE_DRIVE_FOLDER_ID), GOAE_LICENCE),
    WeightFile(AFA_FILE, "pt", "GOAE AFA module (Yuan et al.)", DRIVE_FOLDER_PAGE.format(id=GOAE_DRIVE_FOLDER_ID), GOAE_LICENCE),
)
DIRECTION_FILES = tuple(WeightFile(f"{DIRECTIONS_DIR}/{n}", "direction", f"GOAE edit direction ({n[:-4]})",
                                   DIRECTIONS_PAGE, GOAE_LICENCE) for n in DIRECTION_SHA256)


# ----------------------------------------------------------------------------- errors


class DownloadError(Exception):
    """Weights could not be fetched or converted; the message says what to do (base class)."""


class LicenceNotAcceptedError(DownloadError):
    """The licences were not accepted; nothing was downloaded."""


class DownloadInterruptedError(DownloadError):
    """A transfer stopped early; the bytes so far are kept in <name>.part and the next run resumes."""


class CorruptDownloadError(DownloadError):
    """A file has wrong bytes (checksum, size or content); it was discarded or moved aside."""


class ManualDownloadRequiredError(DownloadError):
    """The host (Google Drive) would not hand out the file; the message says how to fetch it by hand."""


def licence_text(files: Sequence[WeightFile] = FILES + DIRECTION_FILES) -> str:
    """What the user accepts, one paragraph per licence."""
    lines = ["The weights are not goae's and keep their owners' licences (goae's Apache-2.0 does not cover them):"]
    for lic in dict.fromkeys(f.licence for f in files):
        names = [f.name for f in files if f.licence == lic and f.kind != "direction"]
        stems = [Path(f.name).stem for f in files if f.licence == lic and f.kind == "direction"]
        if stems:
            names.append(f"the edit directions {DIRECTIONS_DIR}/ ({', '.join(stems)}; {DIRECTIONS_PAGE})")
        lines.append(f"  * {', '.join(names)}: {lic.name} <{lic.url}>: {lic.terms}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- small helpers


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def read_sums(path: Path) -> dict[str, str]:
    """A `sha256sum` file -> {file name: hex digest} (unreadable lines are skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return _parse_sums(text)


def _parse_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([0-9a-fA-F]{64})\s+\*?(.+?)\s*", line)
        if m:
            sums[Path(m.group(2)).name] = m.group(1).lower()
    return sums


def _write_sums(path: Path, sums: Mapping[str, str]) -> None:
    atomic_write_bytes(path, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())).encode())


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """One download per cache folder at a time (two writers to one .part file would corrupt it)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; do not run two downloads at once
        yield
        return
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(f"another goae download is using {folder}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- HTTP


# Slow servers. The socket timeout bounds each read only, so a server that sends a byte every few seconds
# would never time out. So the answer (status line and headers, redirects included) must come within
# `timeout` seconds of the request, or a timer shuts the connection down; and a body must bring at least
# `min_rate` bytes/s, measured over windows of `timeout` seconds (_Rate), or it stops like a dropped one.
# (A TLS handshake is bounded per read only: the socket is watched from the end of connect().)
#
# Redirects (_Redirects) are followed only within one origin (scheme, host and port) or to https: TLS
# authenticates the new host, and the bytes are checked after the transfer in any case (sha256 where known,
# the converter's safe readers). The official hosts need https redirects: NGC answers with signed storage
# URLs, Google Drive sends downloads to drive.usercontent.google.com. Anything else (plain http to another
# host or port, https down to http, ftp:, file:) is refused with one error naming both URLs.

_watched = threading.local()  # the connections opened by this thread's current request


def _watch(conn: http.client.HTTPConnection) -> None:
    conns = getattr(_watched, "conns", None)
    if conns is not None:
        conns.append(conn)


class _WatchedHTTP(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        _watch(self)


class _WatchedHTTPS(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        _watch(self)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_WatchedHTTP, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self):
        self.ssl_context = ssl.create_default_context()
        super().__init__(context=self.ssl_context)

    def https_open(self, req):
        return self.do_open(_WatchedHTTPS, req, context=self.ssl_context)


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:
        port = -1
    return scheme, (u.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def redirect_allowed(source: str, target: str) -> bool:
    """goae's redirect policy: the same origin (scheme, host, port), or any https URL."""
    return urllib.parse.urlsplit(target).scheme.lower() == "https" or _origin(source) == _origin(target)


class _Redirects(urllib.request.HTTPRedirectHandler):
    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location is not None:  # checked before urllib's own scheme check, for one message
            target = urllib.parse.urljoin(req.full_url, location)
            if not redirect_allowed(req.full_url, target):
                fp.close()
                raise DownloadError(f"{req.full_url} redirects to {target}: not followed (goae follows a redirect only "
                                    f"to the same scheme, host and port, or to an https URL); check the URL or the mirror")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener() -> urllib.request.OpenerDirector:
    # A cookie jar: Google Drive's confirmation step may hand out a cookie that the next request needs.
    return urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler(), _Redirects(),
                                       urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"User-Agent": f"Mozilla/5.0 (compatible; goae/{__version__}; +{GOAE_REPO_URL})",
            "Accept-Encoding": "identity", **(extra or {})}


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _network_error(url: str, e: BaseException) -> DownloadError:
    """One line that says what failed and where (the server is down, no network, a 404...)."""
    if isinstance(e, urllib.error.HTTPError):
        return DownloadError(f"{url}: HTTP {e.code} {e.reason}")
    reason = getattr(e, "reason", e)
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused (is the server up?)"
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        why = "timed out"
    elif isinstance(reason, socket.gaierror):
        why = f"cannot resolve {_host(url)} (no network?)"
    else:
        why = one_line(getattr(reason, "strerror", None) or reason or type(e).__name__)
    return DownloadError(f"cannot reach {_host(url)} for {url}: {why}")


def _hang_up(conns: list, fired: threading.Event) -> None:
    fired.set()
    for conn in list(conns):
        sock = conn.sock
        if sock is not None:
            try:  # the plain socket's shutdown (on a TLS socket too): the blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _open(opener, url: str, timeout: float, headers: Mapping[str, str] | None = None):
    req = urllib.request.Request(url, headers=_headers(headers))
    conns, fired = [], threading.Event()
    timer = threading.Timer(timeout, _hang_up, (conns, fired))
    timer.daemon = True
    _watched.conns = conns
    timer.start()
    try:
        return opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # Range Not Satisfiable: the caller decides
            return e
        raise _network_error(url, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        if fired.is_set():
            raise DownloadError(f"cannot reach {_host(url)} for {url}: timed out (no answer within {timeout:g} s)") from None
        raise _network_error(url, e) from None
    finally:
        timer.cancel()
        _watched.conns = None


class _TooSlow(Exception):
    pass


class _Rate:
    """Counts the bytes of a transfer; `add` raises _TooSlow when a window of `window` seconds brought
    fewer than `min_rate` bytes/s, and returns True at the end of each window (a moment to flush)."""

    def __init__(self, window: float, min_rate: float):
        self.window, self.min_rate = window, min_rate
        self.start, self.count = time.monotonic(), 0

    def add(self, n: int) -> bool:
        self.count += n
        now = time.monotonic()
        if now - self.start < self.window:
            return False
        rate = self.count / (now - self.start)
        if rate < self.min_rate:
            raise _TooSlow(f"slower than {_size(self.min_rate)}/s for {now - self.start:.0f} s: {rate:.0f} bytes/s")
        self.start, self.count = now, 0
        return True


def _read_body(resp, url: str, limit: int, timeout: float, min_rate: float) -> bytes:
    """Up to `limit` bytes of a small answer (a page, SHA256SUMS), as fast as the server sends them."""
    data, rate = bytearray(), _Rate(timeout, min_rate)
    while len(data) < limit:
        try:
            block = resp.read1(min(CHUNK, limit - len(data)))
        except (OSError, http.client.HTTPException) as e:
            raise _network_error(url, e) from None
        if not block:
            break
        data += block
        try:
            rate.add(len(block))
        except _TooSlow as e:
            raise DownloadError(f"cannot reach {_host(url)} for {url}: timed out ({e})") from None
    return bytes(data)


def _read_text(opener, url: str, timeout: float, limit: int = 4 << 20, min_rate: float = MIN_RATE) -> tuple[str, str]:
    """(content type, text) of a small page."""
    with _open(opener, url, timeout) as resp:
        data = _read_body(resp, url, limit, timeout, min_rate)
        return resp.headers.get_content_type(), data.decode("utf-8", errors="replace")


def _is_html(resp) -> bool:
    return resp.headers.get_content_type() in ("text/html", "application/xhtml+xml")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    return start, (int(m.group(2)) if m.group(2) != "*" else None)


class _Progress:
    def __init__(self, name: str, total: int | None, done: int, log: Callable[[str], None]):
        self.name, self.total, self.done, self.log = name, total, done, log
        self.tty = sys.stderr.isatty() and log is _stderr
        self.last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last > 0.5:
            self.last = now
            of = f" of {_size(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
            print(f"\r  {self.name}: {_size(self.done)}{of}   ", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def download_file(url: str, dest: str | os.PathLike, *, source: str | None = None, timeout: float = 60.0,
                  retries: int = 3, log: Callable[[str], None] = _stderr,
                  resolve: Callable[[], str] | None = None, min_rate: float = MIN_RATE) -> Path:
    """Fetch `url` into `dest` through `dest.part`, resuming a .part left by an earlier run with an HTTP
    Range request. Returns the .part path once complete (the caller verifies it and renames it).

    `source` names what the bytes are (default: url); a .part from another source is not resumed.
    `resolve()` is called before every attempt to get a fresh URL (Google Drive's are one-time).
    Stops early (connection dropped, no answer within `timeout` s, fewer than `min_rate` bytes/s over a
    `timeout` window, 5xx) are retried `retries` times, resuming each time; after that
    DownloadInterruptedError says how much is kept in the .part and that the next run resumes.
    A full disk (or a file-size limit) is not retried: the .part is removed, so that it does not keep the
    disk full, and the error says how much space the file needs; when the server declares the size and
    the disk has too little room, nothing is written at all (an earlier .part is kept to resume from)."""
    dest = Path(dest)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    source = source or url
    last: DownloadError | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 10))
            log(f"  {dest.name}: retrying ({attempt}/{retries})")
        try:
            for _ in range(2):  # False: the .part was discarded (did not fit the file); start again at once
                target = resolve() if resolve else url
                if _fetch_once(target, part, meta_path, source, timeout, log, dest.name, min_rate):
                    return part
            last = DownloadError(f"{url}: the server's byte ranges for {dest.name} do not add up; try again later")
        except DownloadInterruptedError as e:
            last = e
        except DownloadError as e:
            transient = re.search(r"HTTP 5\d\d|timed out|connection refused|reset|cannot reach", str(e))
            if not transient:
                raise
            last = e
    assert last is not None
    raise last


_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full(part: Path, meta_path: Path, name: str, total: int | None, e: OSError) -> DownloadError:
    """Remove the .part (a full disk breaks everything else on the machine, and resuming needs room for
    the rest anyway) and say what the file needs."""
    kept = part.stat().st_size if part.exists() else 0
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)
    need = f" (the file is {_size(total)})" if total else ""
    return DownloadError(f"cannot write {name} in {part.parent}: {e.strerror or e}; the partial download "
                         f"({_size(kept)}) was removed so that it does not keep the disk full: free space{need} "
                         f"or choose another --downloads folder, and run the command again")


def _fetch_once(url: str, part: Path, meta_path: Path, source: str, timeout: float,
                log: Callable[[str], None], name: str, min_rate: float = MIN_RATE) -> bool:
    meta = {}
    if part.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("source") != source:  # bytes of another file / another host: start again
            part.unlink()
            meta = {}
    offset = part.stat().st_size if part.exists() else 0
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = meta.get("etag") if meta.get("etag") and not str(meta["etag"]).startswith("W/") else meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator  # the server sends the whole (new) file if it changed
    opener = _opener()
    resp = _open(opener, url, timeout, headers)
    with resp:
        if resp.status == 416:  # nothing left to send: complete already, or the .part is longer than the file
            _, total = _content_range(resp.headers.get("Content-Range"))
            if offset and total == offset:
                return True
            log(f"  {name}: the partial download does not fit the file on the server; starting again")
            part.unlink(missing_ok=True)
            return False
        if _is_html(resp):
            raise CorruptDownloadError(f"{url} answered with a web page, not the file {name} "
                                       f"(a login, quota or error page?)")
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                log(f"  {name}: the server resumed at the wrong offset; starting again")
                part.unlink(missing_ok=True)
                return False
            log(f"  {name}: resuming at {_size(offset)}" + (f" of {_size(total)}" if total else ""))
            mode = "ab"
        else:  # 200: the whole file (no Range support, or the file changed since the .part was written)
            if offset:
                log(f"  {name}: the server sent the whole file; starting again")
            offset, total, mode = 0, length, "wb"
        if total is not None and total > MAX_FILE_BYTES:
            raise CorruptDownloadError(f"{url} declares {_size(total)}, far more than {name} can be")
        part.parent.mkdir(parents=True, exist_ok=True)
        if total is not None:  # room for the rest, before a byte is written
            free = shutil.disk_usage(part.parent).free + (part.stat().st_size if mode == "wb" and part.exists() else 0)
            if free < total - offset:
                raise DownloadError(f"{name} needs {_size(total - offset)} more, but {part.parent} has {_size(free)} "
                                    f"free; nothing was written: free space or choose another --downloads folder, "
                                    f"and run the command again")
        meta = {"source": source, "total": total, "etag": resp.headers.get("ETag"),
                "last_modified": resp.headers.get("Last-Modified")}
        final = resp.geturl()
        if not offset:
            came = f" (redirected from {_host(url)})" if _host(final) != _host(url) else ""
            log(f"  {name}: downloading from {_host(final)}{came}" + (f" ({_size(total)})" if total else ""))
        progress = _Progress(name, total, offset, log)
        rate = _Rate(timeout, min_rate)

        def stopped(at: int, why: str) -> DownloadInterruptedError:
            return DownloadInterruptedError(
                f"the download of {name} stopped at {_size(at)}" + (f" of {_size(total)}" if total else "")
                + f" ({why}); the bytes so far are kept in {part}: run the command again to resume")

        try:
            meta_path.write_text(json.dumps(meta))
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read1(CHUNK)  # what has arrived: a trickle returns too, for the rate check
                    except (OSError, http.client.HTTPException) as e:  # dropped connection, timeout
                        f.flush()
                        raise stopped(f.tell(), one_line(e) or type(e).__name__) from None
                    if not block:
                        break
                    f.write(block)
                    progress.update(len(block))
                    if f.tell() > MAX_FILE_BYTES or (total is not None and f.tell() > total):
                        raise CorruptDownloadError(f"{url} sent more bytes than {name} has; discarded")
                    try:
                        if rate.add(len(block)):
                            f.flush()  # the .part shows the progress of a slow transfer
                    except _TooSlow as e:
                        f.flush()
                        raise stopped(f.tell(), str(e)) from None
                f.flush()
                os.fsync(f.fileno())
                got = f.tell()
        except CorruptDownloadError:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise
        except OSError as e:
            if e.errno in _DISK_FULL:
                raise _disk_full(part, meta_path, name, total, e) from None
            raise
        finally:
            progress.close()
    if total is not None and got < total:
        raise DownloadInterruptedError(f"the download of {name} stopped at {_size(got)} of {_size(total)}; "
                                       f"the bytes so far are kept in {part}: run the command again to resume")
    return True


# ----------------------------------------------------------------------------- Google Drive


class _DrivePage(html.parser.HTMLParser):
    """What goae needs from a Drive page: the confirmation form ('file too large to scan'), a legacy
    confirm link, an error caption (quota exceeded, no access), and embedded-folder entries."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.form_action: str | None = None
        self.form_fields: dict[str, str] = {}
        self.confirm_href: str | None = None
        self.error = ""
        self.entries: list[tuple[str, str]] = []  # embeddedfolderview: (file id, title)
        self._in_form = self._in_error = self._in_title = False
        self._entry_id: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "form" and a.get("id") == "download-form":
            self.form_action, self._in_form = a.get("action") or "", True
        elif tag == "input" and self._in_form and a.get("name") and a.get("type", "hidden") == "hidden":
            self.form_fields[a["name"]] = a.get("value", "")
        elif tag == "a":
            href = a.get("href", "")
            if "export=download" in href and "confirm=" in href:
                self.confirm_href = href
            m = re.search(r"/file/d/([\w-]{10,})", href)
            if m:
                self._entry_id = m.group(1)
        elif "uc-error-subcaption" in classes or "uc-error-caption" in classes:
            self._in_error = True
        elif "flip-entry-title" in classes and self._entry_id:
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False
        elif tag in ("p", "div", "span"):
            self._in_error = self._in_title = False

    def handle_data(self, data):
        if self._in_error:
            self.error += data
        if self._in_title and self._entry_id:
            self.entries.append((self._entry_id, data.strip()))
            self._entry_id, self._in_title = None, False


def _js_string(text: str) -> str:
    """Undo JavaScript string escapes (\\x22, \\u003d, \\/, \\\\ ...)."""
    def sub(m):
        s = m.group(1)
        if s[0] in "xu":
            return chr(int(s[1:], 16))
        return {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(s, s)
    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", sub, text)


def _drive_folder_entries(page: str) -> dict[str, str]:
    """{file name: file id} from a Drive folder page (the `_DRIVE_ivd` data) or an embedded folder view."""
    entries: dict[str, str] = {}
    m = re.search(r"_DRIVE_ivd'\]\s*=\s*'((?:[^'\\]|\\.)*)'", page)
    if m:
        try:
            data = json.loads(_js_string(m.group(1)))
            for e in (data[0] or []) if isinstance(data, list) and data else []:
                if isinstance(e, list) and len(e) > 3 and isinstance(e[0], str) and isinstance(e[2], str):
                    entries[e[2]] = e[0]
        except (ValueError, IndexError, TypeError):
            pass
    if not entries:
        parser = _DrivePage()
        parser.feed(page)
        entries = {title: fid for fid, title in parser.entries}
    return entries


def _manual_hint(f: WeightFile, downloads: Path) -> str:
    return (f"download {f.name} by hand from {f.page} and put it at {downloads / f.name}, then run "
            f"`{COMMAND}` again: it verifies and converts the files it finds there")


class _DriveFile:
    """Resolves a file of the GOAE Drive folder to a one-time download URL (before every attempt)."""

    def __init__(self, f: WeightFile, folder_id: str, downloads: Path, timeout: float, min_rate: float = MIN_RATE):
        self.f, self.folder_id, self.downloads, self.timeout, self.min_rate = f, folder_id, downloads, timeout, min_rate
        self.file_id: str | None = None

    def _manual(self, why: str) -> ManualDownloadRequiredError:
        return ManualDownloadRequiredError(f"Google Drive: {why}. Please {_manual_hint(self.f, self.downloads)}")

    def _find_id(self, opener) -> str:
        for page_url in (DRIVE_FOLDER_PAGE, DRIVE_EMBEDDED_FOLDER):
            try:
                _, page = _read_text(opener, page_url.format(id=self.folder_id), self.timeout, min_rate=self.min_rate)
            except DownloadError as e:
                if "HTTP 4" in str(e):
                    continue
                raise
            entries = _drive_folder_entries(page)
            if self.f.name in entries:
                return entries[self.f.name]
        raise self._manual(f"could not find {self.f.name} in the GOAE folder listing (the page format may have "
                           f"changed, or the folder needs a sign-in)")

    def __call__(self) -> str:
        opener = _opener()
        if self.file_id is None:
            self.file_id = self._find_id(opener)
        url = DRIVE_FILE_URL.format(id=self.file_id)
        for _ in range(3):  # file -> done; confirmation page -> its form's URL; error page -> manual
            with _open(opener, url, self.timeout) as resp:
                if resp.status == 416 or not _is_html(resp):
                    return resp.geturl()  # small files come at once; the final URL takes Range
                page = _read_body(resp, url, 4 << 20, self.timeout, self.min_rate).decode("utf-8", errors="replace")
            p = _DrivePage()
            p.feed(page)
            if p.form_action:
                url = urllib.parse.urljoin(url, p.form_action)
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode(p.form_fields)
            elif p.confirm_href:
                url = urllib.parse.urljoin(url, p.confirm_href)
            else:
                why = one_line(p.error) or "it answered with a page instead of the file"
                raise self._manual(f"{why} (Drive limits downloads of popular files; try again later)")
        raise self._manual("the download confirmation did not lead to the file")


# ----------------------------------------------------------------------------- checks


def _validate(f: WeightFile, path: Path) -> None:
    """Read the file with the converter's safe loaders (no pickle code runs). Raises CheckpointError."""
    from goae import convert  # lazily: torch

    if f.kind == "eg3d":
        convert.read_official_generator(path)
    elif f.kind == "direction":
        from goae.edit import DirectionError, load_direction  # lazily: torch

        try:  # .npy read without pickles; the cat files are torch zips, read with weights_only
            load_direction(path, name=Path(f.name).stem)
        except DirectionError as e:
            raise convert.CheckpointError(str(e)) from None
    else:
        convert.load_official_state_dict(path, what=f"{f.name}")


def _reject(path: Path, log: Callable[[str], None]) -> Path:
    """Move a bad final file aside (never delete what a person may have put there by hand)."""
    bad = path.with_name(path.name + ".rejected")
    os.replace(path, bad)
    log(f"  {path.name}: moved aside to {bad}")
    return bad


def _expected_sha(name: str, mirror_sums: Mapping[str, str]) -> tuple[str | None, str]:
    if name in KNOWN_SHA256:
        return KNOWN_SHA256[name], "goae's list of official digests"
    if name in mirror_sums:
        return mirror_sums[name], f"the mirror's {SUMS_NAME}"
    return None, ""


# ----------------------------------------------------------------------------- the whole thing


def _ask(prompt_in: Callable[[str], str] | None) -> bool:
    ask = prompt_in or input
    try:
        answer = ask("Do you accept these licences? Type 'yes' to download: ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _check_out_dir(out: Path, overwrite: bool) -> bool:
    """True if `out` already holds a complete pipeline (and overwrite is off). Refuses to replace a
    folder that is neither a pipeline nor empty, whatever overwrite says."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DownloadError(f"{out} exists and is not a folder; choose another --out")
    complete = (out / "model_index.json").is_file()
    if complete and not overwrite:
        return True
    if out.is_dir() and not complete and any(out.iterdir()):
        raise DownloadError(f"{out} exists and is not a goae pipeline folder: refusing to replace what it holds; "
                            f"choose another --out or empty it")
    return False


def _directions_installed(out: Path) -> bool:
    from goae.edit import DIRECTIONS_FOLDER, OFFICIAL_DIRECTIONS  # lazily: torch

    return all((out / DIRECTIONS_FOLDER / f"{n}.safetensors").is_file() for n in OFFICIAL_DIRECTIONS["human"])


def download_weights(
    *,
    accept_licences: bool = False,
    mirror: str | None = None,
    out_dir: str | os.PathLike | None = None,
    downloads_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    interactive: bool | None = None,
    prompt: Callable[[str], str] | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    min_rate: float = MIN_RATE,
    directions: bool = True,
    encoder_config: Mapping | None = None,
    afa_config: Mapping | None = None,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """Download (if needed), verify and convert the official weights; return the pipeline folder.

    mirror: base URL replacing the official hosts (default $GOAE_WEIGHTS_MIRROR); files are <mirror>/<name>,
    the edit directions <mirror>/ws_edit/<name>.
    out_dir: the pipeline folder (default `weights_folder()`); downloads_dir: default `downloads_folder()`.
    overwrite: convert again and replace an existing pipeline folder.
    interactive: ask for the licences on the terminal when `accept_licences` is False (default: stdin is
    a terminal); `prompt` replaces `input` for that question.
    timeout / min_rate: no answer within `timeout` s, or fewer than `min_rate` bytes/s over `timeout` s,
    stops a transfer (resumable; retried `retries` times).
    directions: also fetch the official edit directions (GOAE repository, sha256 known) into
    <downloads>/ws_edit and add the human ones to the pipeline's directions/ (an existing pipeline folder
    without them gets them). They are an extra: one that cannot be fetched is a warning, and the weights
    are converted all the same; the next run adds what is missing.
    encoder_config / afa_config: passed to `convert_goae` (the released architecture by default).
    Raises LicenceNotAcceptedError, DownloadInterruptedError, CorruptDownloadError,
    ManualDownloadRequiredError or DownloadError, each with a message meant for the user."""
    mirror = (mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")).strip() or None
    if mirror and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise DownloadError(f"the mirror must be an http(s) URL, got {mirror!r}")
    out = Path(out_dir).expanduser() if out_dir is not None else weights_folder()
    downloads = Path(downloads_dir).expanduser() if downloads_dir is not None else downloads_folder()
    converted = _check_out_dir(out, overwrite)
    if converted and (not directions or _directions_installed(out)):
        log(f"the weights are already converted in {out} (pass --overwrite to convert them again)")
        return out
    weights = () if converted else FILES
    missing = [f for f in weights if not (downloads / f.name).is_file()]
    direction_files = DIRECTION_FILES if directions else ()
    missing_dirs = [f for f in direction_files if not (downloads / f.name).is_file()]
    if missing:  # a download is needed: the licences first, before any network access
        log(licence_text(FILES + direction_files))
        if not accept_licences:
            if interactive is None:
                interactive = sys.stdin is not None and sys.stdin.isatty()
            if not interactive:
                raise LicenceNotAcceptedError(
                    "the licences of the weights were not accepted, so nothing was downloaded: read them "
                    f"(above, or {EG3D_LICENCE_URL} and {GOAE_REPO_URL}) and run again with --accept-licences "
                    "if you accept them")
            if not _ask(prompt):
                raise LicenceNotAcceptedError("licences not accepted; nothing was downloaded")
        accept_licences = True
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {downloads}: {one_line(e.strerror or e)}") from None

    with _lock(downloads):
        recorded = read_sums(downloads / SUMS_NAME)
        mirror_sums: dict[str, str] = {}
        if mirror and missing:
            base = mirror.rstrip("/")
            try:
                ctype, text = _read_text(_opener(), f"{base}/{SUMS_NAME}", timeout, limit=1 << 20, min_rate=min_rate)
                mirror_sums = _parse_sums(text) if ctype.startswith("text/") else {}
            except DownloadError as e:
                if "HTTP 404" not in str(e) and "HTTP 403" not in str(e):  # the mirror is down: say so once
                    raise DownloadError(f"{e}; check the mirror URL (--mirror / ${MIRROR_ENV})") from None
        net = dict(retries=retries, timeout=timeout, min_rate=min_rate, log=log)
        digests: dict[str, str] = {}
        for f in weights:
            digests[f.name] = _get_file(f, downloads, mirror, mirror_sums, recorded, **net)
            if recorded.get(f.name) != digests[f.name]:
                recorded[f.name] = digests[f.name]
                _write_sums(downloads / SUMS_NAME, recorded)
        got_dirs = _get_directions(direction_files, missing_dirs, accept_licences, downloads, mirror, net)

        if weights:
            log(f"converting into {out} ...")
            _convert(downloads, out, overwrite, digests, mirror, encoder_config, afa_config, recorded, got_dirs, log)
        elif got_dirs:
            _add_directions(out, downloads, got_dirs, log)
    return out


def _get_directions(files: Sequence[WeightFile], missing: Sequence[WeightFile], accepted: bool, downloads: Path,
                    mirror: str | None, net: Mapping) -> dict[str, str]:
    """The official edit directions that are (now) in <downloads>/ws_edit and verified: {name: sha256}. They are
    an extra: a file that cannot be had is a warning, not a failed download."""
    log = net["log"]
    if missing and not accepted:
        log(f"warning: the official edit directions were not fetched (their terms were not accepted): run "
            f"`{COMMAND}` to add them")
        files = [f for f in files if f not in missing]
    got, failed = {}, []
    for f in files:
        try:
            got[f.name] = _get_file(f, downloads, mirror, {}, {}, **net)
        except DownloadError as e:
            failed.append(f"{Path(f.name).name} ({one_line(e)})")
    if failed:
        log(f"warning: {len(failed)} official edit direction(s) left out: {'; '.join(failed)}. The weights do not need "
            f"them; run `{COMMAND}` again to add them")
    return got


def _add_directions(out: Path, downloads: Path, got: Mapping[str, str], log: Callable[[str], None],
                    shown: Path | None = None) -> list[str]:
    """The human directions of `got` into the pipeline folder `out` (`shown`: its final name); the rest stay
    in <downloads>/ws_edit."""
    from goae.edit import DIRECTIONS_FOLDER, add_directions  # lazily: torch

    try:
        names, _ = add_directions(out, [downloads / n for n in got])  # the notes: the cat_* files, for the cat model
    except ValueError as e:  # the folder or a file refused: the weights do not need them
        log(f"warning: the edit directions were not added to {shown or out}: {one_line(e)}")
        return []
    others = [Path(n).stem for n in got if Path(n).stem not in names]
    log(f"  edit directions {', '.join(names) or '(none)'} added to {(shown or out) / DIRECTIONS_FOLDER}"
        + (f"; {', '.join(others)} (for the cat model) are kept in {downloads / DIRECTIONS_DIR}" if others else ""))
    return names


def _get_file(f: WeightFile, downloads: Path, mirror: str | None, mirror_sums: Mapping[str, str],
              recorded: dict[str, str], retries: int, timeout: float, log: Callable[[str], None],
              min_rate: float = MIN_RATE) -> str:
    """Make downloads/<name> a checked copy of the official file; return its sha256."""
    from goae.convert import CheckpointError  # lazily: torch

    dest = downloads / f.name
    expected, by = _expected_sha(f.name, mirror_sums)
    if dest.is_file():  # an earlier run, or put there by hand
        digest = sha256_file(dest)
        if expected and digest != expected:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} has sha256 {digest}, but {by} says {expected}; it was moved "
                                       f"aside and the next run downloads it again")
        if f.name in recorded and recorded[f.name] != digest:
            log(f"  {f.name}: differs from the copy recorded in {SUMS_NAME} (replaced by hand?); checking it again")
        elif f.name in recorded or (expected and by == "goae's list of official digests"):
            log(f"  {f.name}: found in {downloads}, sha256 {digest[:16]}... as " + ("recorded" if f.name in recorded else "known"))
            return digest
        try:
            _validate(f, dest)
        except CheckpointError as e:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} is not a usable {f.what} checkpoint ({one_line(e)}); it was "
                                       f"moved aside: {_manual_hint(f, downloads)}") from None
        log(f"  {f.name}: found in {downloads}, sha256 {digest}")
        return digest

    net = dict(timeout=timeout, retries=retries, log=log, min_rate=min_rate)
    if mirror:
        url = f"{mirror.rstrip('/')}/{urllib.parse.quote(f.name)}"
        part = download_file(url, dest, **net)
    elif f.kind == "direction":
        url = DIRECTIONS_URL.format(commit=GOAE_COMMIT, name=Path(f.name).name)
        part = download_file(url, dest, **net)
    elif f.kind == "eg3d":
        url = NGC_FILE_URL.format(name=f.name)
        part = download_file(url, dest, **net)
    else:
        url = DRIVE_FOLDER_PAGE.format(id=GOAE_DRIVE_FOLDER_ID) + f" ({f.name})"
        resolve = _DriveFile(f, GOAE_DRIVE_FOLDER_ID, downloads, timeout, min_rate)
        part = download_file(url, dest, source=f"gdrive:{GOAE_DRIVE_FOLDER_ID}/{f.name}", resolve=resolve, **net)
    meta = part.with_name(part.name + ".json")
    digest = sha256_file(part)

    def discard(why: str) -> CorruptDownloadError:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return CorruptDownloadError(f"{f.name} from {url} {why}; the download was discarded (nothing was kept "
                                    f"or converted): run again to download it afresh, or {_manual_hint(f, downloads)}")

    if expected and digest != expected:
        raise discard(f"has sha256 {digest}, but {by} says {expected} (corrupted in transfer, or another file)")
    try:
        _validate(f, part)
    except CheckpointError as e:
        raise discard(f"is not a usable {f.what} checkpoint ({one_line(e).replace(str(part), f.name)})") from None
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    log(f"  {f.name}: ok, sha256 {digest}")
    return digest


def _convert(downloads: Path, out: Path, overwrite: bool, digests: Mapping[str, str], mirror: str | None,
             encoder_config, afa_config, recorded: dict[str, str], directions: Mapping[str, str],
             log: Callable[[str], None]) -> None:
    from goae import convert  # lazily: it imports torch, which fetching does not need

    paths = {f.name: downloads / f.name for f in FILES}
    try:
        # Our own atomic folder around the converter's: the model card with the sources' sha256 is
        # added before anything appears at `out`.
        with atomic_dir(out, overwrite=overwrite or out.is_dir()) as tmp:
            configs = {k: v for k, v in (("encoder_config", encoder_config), ("afa_config", afa_config)) if v is not None}
            inner = convert.convert_goae(paths[EG3D_FILE], paths[ENCODER_FILE], paths[AFA_FILE], tmp / "pipeline",
                                         **configs)
            for child in list(inner.iterdir()):
                os.rename(child, tmp / child.name)
            inner.rmdir()
            where = f"mirror {mirror}" if mirror else f"NVIDIA NGC ({NGC_PAGE}) and the GOAE release ({GOAE_REPO_URL})"
            notes = []
            names = _add_directions(tmp, downloads, directions, log, shown=out) if directions else []
            if names:
                notes.append(f"edit directions {', '.join(names)}: the official files of the GOAE repository "
                             f"({DIRECTIONS_PAGE}; the authors' terms)" + (f", through mirror {mirror}" if mirror else ""))
            sources = {**digests, **{n: d for n, d in directions.items() if Path(n).stem in names}}
            write_model_card(tmp, "pipeline", Provenance(sources=sources, command=current_command(),
                                                         note=f"official checkpoints downloaded from {where}", notes=notes))
    except convert.CheckpointError as e:
        msg = one_line(e)
        for f in FILES:  # a file the converter refuses is not kept as good
            if str(paths[f.name]) in msg and paths[f.name].is_file():
                _reject(paths[f.name], log)
                recorded.pop(f.name, None)
                _write_sums(downloads / SUMS_NAME, recorded)
        raise CorruptDownloadError(f"conversion failed, nothing was written to {out}: {msg}") from None


# ----------------------------------------------------------------------------- command line


def build_parser(prog: str = "python -m goae.download") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Download the official EG3D (NVIDIA NGC) and GOAE (Google Drive) checkpoints, check them, "
                    "and convert them into a goae pipeline folder in the cache.",
        epilog=f"Licences: {EG3D_LICENCE_NAME} <{EG3D_LICENCE_URL}>; the GOAE authors' terms <{GOAE_REPO_URL}> "
               "(no LICENSE file published). Environment: GOAE_HOME (cache folder), GOAE_WEIGHTS_MIRROR.")
    p.add_argument("--accept-licences", "--accept-licenses", dest="accept_licences", action="store_true",
                   help="accept the weights' licences (shown on start) without being asked")
    p.add_argument("--mirror", metavar="URL", default=None,
                   help=f"base URL serving the files as URL/<file name> instead of the official hosts (${MIRROR_ENV})")
    p.add_argument("--out", metavar="DIR", default=None,
                   help=f"pipeline folder to write (default: {weights_folder()})")
    p.add_argument("--downloads", metavar="DIR", default=None,
                   help=f"folder for the official files (default: {downloads_folder()}); files already there are used")
    p.add_argument("--overwrite", action="store_true", help="convert again and replace an existing pipeline folder")
    p.add_argument("--retries", type=int, default=3, metavar="N", help="retries of a dropped transfer in one run (default 3)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="network timeout in seconds: for the server's answer, and the window over which a transfer "
                        "must bring --min-rate (default 60)")
    p.add_argument("--min-rate", type=float, default=MIN_RATE, metavar="BYTES_PER_S",
                   help=f"a slower transfer stops (its bytes are kept and resume; default {MIN_RATE})")
    p.add_argument("--no-directions", dest="directions", action="store_false",
                   help="do not fetch the official edit directions (GOAE repository, example/ws_edit)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m goae.download") -> int:
    """Exit code 0 on success, 1 when a download or conversion failed, 2 for a usage error or licences
    not accepted, 130 on Ctrl-C. Errors are one line on stderr; the folder is printed on stdout."""
    args = build_parser(prog).parse_args(argv)
    if args.retries < 0 or not (0 < args.timeout < 1e6) or not (0 <= args.min_rate < 1e12):
        print(f"{prog}: error: --retries must be >= 0, --timeout > 0 and --min-rate >= 0", file=sys.stderr)
        return 2
    try:
        out = download_weights(accept_licences=args.accept_licences, mirror=args.mirror, out_dir=args.out,
                               downloads_dir=args.downloads, overwrite=args.overwrite, retries=args.retries,
                               timeout=args.timeout, min_rate=args.min_rate, directions=args.directions)
    except LicenceNotAcceptedError as e:
        return _fail(prog, e, 2)
    except DownloadError as e:
        return _fail(prog, e, 1)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted; partial downloads are kept as *.part and resume on the next run", 130)
    except OSError as e:  # a full disk, permissions: one line, and nothing half-written
        return _fail(prog, f"{e.strerror or type(e).__name__}: {e.filename or e}", 1)
    except Exception as e:  # out of memory, a bug: still one line (conversion is atomic: nothing half-written)
        return _fail(prog, f"{type(e).__name__}: {e}", 1)
    print(f"goae weights ready: {out}")
    print(f"use them with: GOAE_WEIGHTS={out} python app.py, or goae invert ... --weights {out}")
    return 0


def _fail(prog: str, message: object, code: int) -> int:
    print(f"{prog}: error: {one_line(message) or 'unknown error'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
