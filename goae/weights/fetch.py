"""The HTTP client that fetches weights: resumable, bounded in time and size, careful with redirects.

`download_file` fetches a URL into `<dest>.part`: an interrupted transfer resumes with an HTTP Range request
(If-Range guards against a file that changed on the server), stops early are retried, and the caller renames
the .part once it has checked the bytes. Only the standard library is used (urllib); no torch.

Slow and hostile servers: the answer must come within `timeout` seconds and a transfer must bring `min_rate`
bytes/s over each `timeout` window, or it stops (resumable); redirects are followed within one origin or to
https only; a full disk removes the .part it was filling; more than MAX_FILE_BYTES is refused.
"""

from __future__ import annotations

import errno
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
from typing import Callable, Mapping

from goae import __version__
from goae.io import one_line
from goae.weights.cards import GOAE_REPO_URL
from goae.weights.errors import CorruptDownloadError, DownloadError, DownloadInterruptedError

MAX_FILE_BYTES = 8 << 30  # the released files are a few hundred MB; an endless stream stops here
CHUNK = 1 << 20
# A transfer slower than this (bytes/s, averaged over windows of `timeout` seconds) stops like a dropped one:
# its bytes are kept and resume. The socket timeout alone bounds each read, not the transfer.
MIN_RATE = 1024


def size_text(n: float) -> str:
    """A byte count for people: 512 B, 1.3 MB."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"

def to_stderr(msg: str) -> None:
    """The default log: one line on stderr, at once."""
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


def new_opener() -> urllib.request.OpenerDirector:
    # A cookie jar: Google Drive's confirmation step may hand out a cookie that the next request needs.
    return urllib.request.build_opener(_HTTPHandler(), _HTTPSHandler(), _Redirects(),
                                       urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"User-Agent": f"Mozilla/5.0 (compatible; goae/{__version__}; +{GOAE_REPO_URL})",
            "Accept-Encoding": "identity", **(extra or {})}


def host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _network_error(url: str, e: BaseException) -> DownloadError:
    """One line that says what failed and where (the server is down, no network, a 404...). A 5xx and every
    failure to get an answer are transient (worth a retry); a 4xx is not."""
    if isinstance(e, urllib.error.HTTPError):
        return DownloadError(f"{url}: HTTP {e.code} {e.reason}", status=e.code, transient=e.code >= 500)
    reason = getattr(e, "reason", e)
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused (is the server up?)"
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        why = "timed out"
    elif isinstance(reason, socket.gaierror):
        why = f"cannot resolve {host_of(url)} (no network?)"
    else:
        why = one_line(getattr(reason, "strerror", None) or reason or type(e).__name__)
    return DownloadError(f"cannot reach {host_of(url)} for {url}: {why}", transient=True)


def _hang_up(conns: list, fired: threading.Event) -> None:
    fired.set()
    for conn in list(conns):
        sock = conn.sock
        if sock is not None:
            try:  # the plain socket's shutdown (on a TLS socket too): the blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def open_url(opener, url: str, timeout: float, headers: Mapping[str, str] | None = None):
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
            raise DownloadError(f"cannot reach {host_of(url)} for {url}: timed out (no answer within {timeout:g} s)",
                                transient=True) from None
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
            raise _TooSlow(f"slower than {size_text(self.min_rate)}/s for {now - self.start:.0f} s: {rate:.0f} bytes/s")
        self.start, self.count = now, 0
        return True


def read_body(resp, url: str, limit: int, timeout: float, min_rate: float) -> bytes:
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
            raise DownloadError(f"cannot reach {host_of(url)} for {url}: timed out ({e})", transient=True) from None
    return bytes(data)


def read_text(opener, url: str, timeout: float, limit: int = 4 << 20, min_rate: float = MIN_RATE) -> tuple[str, str]:
    """(content type, text) of a small page."""
    with open_url(opener, url, timeout) as resp:
        data = read_body(resp, url, limit, timeout, min_rate)
        return resp.headers.get_content_type(), data.decode("utf-8", errors="replace")


def is_html(resp) -> bool:
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
        self.tty = sys.stderr.isatty() and log is to_stderr
        self.last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last > 0.5:
            self.last = now
            of = f" of {size_text(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
            print(f"\r  {self.name}: {size_text(self.done)}{of}   ", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def download_file(url: str, dest: str | os.PathLike, *, source: str | None = None, timeout: float = 60.0,
                  retries: int = 3, log: Callable[[str], None] = to_stderr,
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
            if not e.transient:
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
    need = f" (the file is {size_text(total)})" if total else ""
    return DownloadError(f"cannot write {name} in {part.parent}: {e.strerror or e}; the partial download "
                         f"({size_text(kept)}) was removed so that it does not keep the disk full: free space{need} "
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
    resp = open_url(new_opener(), url, timeout, headers)
    with resp:
        if resp.status == 416:  # nothing left to send: complete already, or the .part is longer than the file
            _, total = _content_range(resp.headers.get("Content-Range"))
            if offset and total == offset:
                return True
            log(f"  {name}: the partial download does not fit the file on the server; starting again")
            part.unlink(missing_ok=True)
            return False
        if is_html(resp):
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
            log(f"  {name}: resuming at {size_text(offset)}" + (f" of {size_text(total)}" if total else ""))
            mode = "ab"
        else:  # 200: the whole file (no Range support, or the file changed since the .part was written)
            if offset:
                log(f"  {name}: the server sent the whole file; starting again")
            offset, total, mode = 0, length, "wb"
        if total is not None and total > MAX_FILE_BYTES:
            raise CorruptDownloadError(f"{url} declares {size_text(total)}, far more than {name} can be")
        part.parent.mkdir(parents=True, exist_ok=True)
        if total is not None:  # room for the rest, before a byte is written
            free = shutil.disk_usage(part.parent).free + (part.stat().st_size if mode == "wb" and part.exists() else 0)
            if free < total - offset:
                raise DownloadError(f"{name} needs {size_text(total - offset)} more, but {part.parent} has {size_text(free)} "
                                    f"free; nothing was written: free space or choose another --downloads folder, "
                                    f"and run the command again")
        meta = {"source": source, "total": total, "etag": resp.headers.get("ETag"),
                "last_modified": resp.headers.get("Last-Modified")}
        final = resp.geturl()
        if not offset:
            came = f" (redirected from {host_of(url)})" if host_of(final) != host_of(url) else ""
            log(f"  {name}: downloading from {host_of(final)}{came}" + (f" ({size_text(total)})" if total else ""))
        progress = _Progress(name, total, offset, log)
        rate = _Rate(timeout, min_rate)

        def stopped(at: int, why: str) -> DownloadInterruptedError:
            return DownloadInterruptedError(
                f"the download of {name} stopped at {size_text(at)}" + (f" of {size_text(total)}" if total else "")
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
        raise DownloadInterruptedError(f"the download of {name} stopped at {size_text(got)} of {size_text(total)}; "
                                       f"the bytes so far are kept in {part}: run the command again to resume")
    return True

