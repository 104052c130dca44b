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

Only the standard library is used for HTTP (urllib). Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import html.parser
import http.client
import http.cookiejar
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

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

# sha256 of the official files. Neither NVIDIA nor the GOAE authors publish digests, so none are built in
# yet; until then a download is checked by size, by the mirror's SHA256SUMS when there is one, and by
# reading it with the converter's safe loaders, and its digest is recorded for later runs to compare.
KNOWN_SHA256: dict[str, str] = {}

MIRROR_ENV = "GOAE_WEIGHTS_MIRROR"
HOME_ENV = "GOAE_HOME"
SUMS_NAME = "SHA256SUMS"
PIPELINE_NAME = "goae-ffhq"
MAX_FILE_BYTES = 8 << 30  # the released files are a few hundred MB; an endless stream stops here
CHUNK = 1 << 20
COMMAND = "python -m goae.download --accept-licences"


@dataclasses.dataclass(frozen=True)
class Licence:
    name: str
    url: str
    terms: str


@dataclasses.dataclass(frozen=True)
class WeightFile:
    name: str
    kind: str  # "eg3d" (network pickle) or "pt" (flat torch state dict)
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


# ----------------------------------------------------------------------------- where things go


def cache_root() -> Path:
    """$GOAE_HOME, else ($XDG_CACHE_HOME or ~/.cache)/goae (the face landmarker model lives there too)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "goae"


def weights_folder() -> Path:
    """Where `python -m goae.download` puts the converted pipeline (complete or not)."""
    return cache_root() / "weights" / PIPELINE_NAME


def downloads_folder() -> Path:
    """Where the official files (and their .part files and SHA256SUMS) are kept."""
    return cache_root() / "downloads"


def default_weights_folder() -> Path | None:
    """The downloaded pipeline folder if it is complete (model_index.json; it is published atomically),
    else None. Cheap: reads no weights and does not import torch."""
    folder = weights_folder()
    return folder if (folder / "model_index.json").is_file() else None


def licence_text(files: Sequence[WeightFile] = FILES) -> str:
    """What the user accepts, one paragraph per licence."""
    lines = ["The weights are not goae's and keep their owners' licences (goae's Apache-2.0 does not cover them):"]
    for lic in dict.fromkeys(f.licence for f in files):
        names = ", ".join(f.name for f in files if f.licence == lic)
        lines.append(f"  * {names}: {lic.name} <{lic.url}>: {lic.terms}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- small helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


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
    from goae.io import atomic_write_bytes

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


def _opener() -> urllib.request.OpenerDirector:
    # A cookie jar: Google Drive's confirmation step may hand out a cookie that the next request needs.
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    from goae import __version__

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
        why = _one_line(getattr(reason, "strerror", None) or reason or type(e).__name__)
    return DownloadError(f"cannot reach {_host(url)} for {url}: {why}")


def _open(opener, url: str, timeout: float, headers: Mapping[str, str] | None = None):
    req = urllib.request.Request(url, headers=_headers(headers))
    try:
        return opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # Range Not Satisfiable: the caller decides
            return e
        raise _network_error(url, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _network_error(url, e) from None


def _read_text(opener, url: str, timeout: float, limit: int = 4 << 20) -> tuple[str, str]:
    """(content type, text) of a small page."""
    with _open(opener, url, timeout) as resp:
        try:
            data = resp.read(limit)
        except (OSError, http.client.HTTPException) as e:
            raise _network_error(url, e) from None
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
                  resolve: Callable[[], str] | None = None) -> Path:
    """Fetch `url` into `dest` through `dest.part`, resuming a .part left by an earlier run with an HTTP
    Range request. Returns the .part path once complete (the caller verifies it and renames it).

    `source` names what the bytes are (default: url); a .part from another source is not resumed.
    `resolve()` is called before every attempt to get a fresh URL (Google Drive's are one-time).
    Stops early (connection dropped, timeout, 5xx) are retried `retries` times, resuming each time;
    after that DownloadInterruptedError says how much is kept and that the next run resumes."""
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
                if _fetch_once(target, part, meta_path, source, timeout, log, dest.name):
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


def _fetch_once(url: str, part: Path, meta_path: Path, source: str, timeout: float,
                log: Callable[[str], None], name: str) -> bool:
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
        meta = {"source": source, "total": total, "etag": resp.headers.get("ETag"),
                "last_modified": resp.headers.get("Last-Modified")}
        part.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta))
        if not offset:
            log(f"  {name}: downloading from {_host(url)}" + (f" ({_size(total)})" if total else ""))
        progress = _Progress(name, total, offset, log)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:  # dropped connection, timeout
                        f.flush()
                        raise DownloadInterruptedError(
                            f"the download of {name} stopped at {_size(f.tell())}"
                            + (f" of {_size(total)}" if total else "")
                            + f" ({_one_line(e) or type(e).__name__}); the bytes so far are kept in {part}: "
                            f"run the command again to resume") from None
                    if not block:
                        break
                    f.write(block)
                    progress.update(len(block))
                    if f.tell() > MAX_FILE_BYTES or (total is not None and f.tell() > total):
                        raise CorruptDownloadError(f"{url} sent more bytes than {name} has; discarded")
                f.flush()
                os.fsync(f.fileno())
                got = f.tell()
        except CorruptDownloadError:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
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

    def __init__(self, f: WeightFile, folder_id: str, downloads: Path, timeout: float):
        self.f, self.folder_id, self.downloads, self.timeout = f, folder_id, downloads, timeout
        self.file_id: str | None = None

    def _manual(self, why: str) -> ManualDownloadRequiredError:
        return ManualDownloadRequiredError(f"Google Drive: {why}. Please {_manual_hint(self.f, self.downloads)}")

    def _find_id(self, opener) -> str:
        for page_url in (DRIVE_FOLDER_PAGE, DRIVE_EMBEDDED_FOLDER):
            try:
                _, page = _read_text(opener, page_url.format(id=self.folder_id), self.timeout)
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
                page = resp.read(4 << 20).decode("utf-8", errors="replace")
            p = _DrivePage()
            p.feed(page)
            if p.form_action:
                url = urllib.parse.urljoin(url, p.form_action)
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode(p.form_fields)
            elif p.confirm_href:
                url = urllib.parse.urljoin(url, p.confirm_href)
            else:
                why = _one_line(p.error) or "it answered with a page instead of the file"
                raise self._manual(f"{why} (Drive limits downloads of popular files; try again later)")
        raise self._manual("the download confirmation did not lead to the file")


# ----------------------------------------------------------------------------- checks


def _validate(f: WeightFile, path: Path) -> None:
    """Read the file with the converter's safe loaders (no pickle code runs). Raises CheckpointError."""
    from goae import convert

    if f.kind == "eg3d":
        convert.read_official_generator(path)
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
    encoder_config: Mapping | None = None,
    afa_config: Mapping | None = None,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """Download (if needed), verify and convert the official weights; return the pipeline folder.

    mirror: base URL replacing the official hosts (default $GOAE_WEIGHTS_MIRROR); files are <mirror>/<name>.
    out_dir: the pipeline folder (default `weights_folder()`); downloads_dir: default `downloads_folder()`.
    overwrite: convert again and replace an existing pipeline folder.
    interactive: ask for the licences on the terminal when `accept_licences` is False (default: stdin is
    a terminal); `prompt` replaces `input` for that question.
    encoder_config / afa_config: passed to `convert_goae` (the released architecture by default).
    Raises LicenceNotAcceptedError, DownloadInterruptedError, CorruptDownloadError,
    ManualDownloadRequiredError or DownloadError, each with a message meant for the user."""
    mirror = (mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")).strip() or None
    if mirror and urllib.parse.urlsplit(mirror).scheme not in ("http", "https"):
        raise DownloadError(f"the mirror must be an http(s) URL, got {mirror!r}")
    out = Path(out_dir).expanduser() if out_dir is not None else weights_folder()
    downloads = Path(downloads_dir).expanduser() if downloads_dir is not None else downloads_folder()
    if _check_out_dir(out, overwrite):
        log(f"the weights are already converted in {out} (pass --overwrite to convert them again)")
        return out

    missing = [f for f in FILES if not (downloads / f.name).is_file()]
    if missing:  # a download is needed: the licences first, before any network access
        log(licence_text())
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
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {downloads}: {_one_line(e.strerror or e)}") from None

    with _lock(downloads):
        recorded = read_sums(downloads / SUMS_NAME)
        mirror_sums: dict[str, str] = {}
        if mirror and missing:
            base = mirror.rstrip("/")
            try:
                ctype, text = _read_text(_opener(), f"{base}/{SUMS_NAME}", timeout, limit=1 << 20)
                mirror_sums = _parse_sums(text) if ctype.startswith("text/") else {}
            except DownloadError as e:
                if "HTTP 404" not in str(e) and "HTTP 403" not in str(e):  # the mirror is down: say so once
                    raise DownloadError(f"{e}; check the mirror URL (--mirror / ${MIRROR_ENV})") from None
        digests: dict[str, str] = {}
        for f in FILES:
            digests[f.name] = _get_file(f, downloads, mirror, mirror_sums, recorded, retries, timeout, log)
            if recorded.get(f.name) != digests[f.name]:
                recorded[f.name] = digests[f.name]
                _write_sums(downloads / SUMS_NAME, recorded)

        log(f"converting into {out} ...")
        _convert(downloads, out, overwrite, digests, mirror, encoder_config, afa_config, recorded, log)
    return out


def _get_file(f: WeightFile, downloads: Path, mirror: str | None, mirror_sums: Mapping[str, str],
              recorded: dict[str, str], retries: int, timeout: float, log: Callable[[str], None]) -> str:
    """Make downloads/<name> a checked copy of the official file; return its sha256."""
    from goae.convert import CheckpointError

    dest = downloads / f.name
    expected, by = _expected_sha(f.name, mirror_sums)
    if dest.is_file():  # an earlier run, or put there by hand
        digest = _sha256(dest)
        if expected and digest != expected:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} has sha256 {digest}, but {by} says {expected}; it was moved "
                                       f"aside and the next run downloads it again")
        if f.name in recorded and recorded[f.name] != digest:
            log(f"  {f.name}: differs from the copy recorded in {SUMS_NAME} (replaced by hand?); checking it again")
        elif f.name in recorded:
            log(f"  {f.name}: found in {downloads}, sha256 {digest[:16]}... as recorded")
            return digest
        try:
            _validate(f, dest)
        except CheckpointError as e:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} is not a usable {f.what} checkpoint ({_one_line(e)}); it was "
                                       f"moved aside: {_manual_hint(f, downloads)}") from None
        log(f"  {f.name}: found in {downloads}, sha256 {digest}")
        return digest

    if mirror:
        url = f"{mirror.rstrip('/')}/{urllib.parse.quote(f.name)}"
        part = download_file(url, dest, timeout=timeout, retries=retries, log=log)
    elif f.kind == "eg3d":
        url = NGC_FILE_URL.format(name=f.name)
        part = download_file(url, dest, timeout=timeout, retries=retries, log=log)
    else:
        url = DRIVE_FOLDER_PAGE.format(id=GOAE_DRIVE_FOLDER_ID) + f" ({f.name})"
        resolve = _DriveFile(f, GOAE_DRIVE_FOLDER_ID, downloads, timeout)
        part = download_file(url, dest, source=f"gdrive:{GOAE_DRIVE_FOLDER_ID}/{f.name}", timeout=timeout,
                             retries=retries, log=log, resolve=resolve)
    meta = part.with_name(part.name + ".json")
    digest = _sha256(part)

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
        raise discard(f"is not a usable {f.what} checkpoint ({_one_line(e).replace(str(part), f.name)})") from None
    os.replace(part, dest)
    meta.unlink(missing_ok=True)
    log(f"  {f.name}: ok, sha256 {digest}")
    return digest


def _convert(downloads: Path, out: Path, overwrite: bool, digests: Mapping[str, str], mirror: str | None,
             encoder_config, afa_config, recorded: dict[str, str], log: Callable[[str], None]) -> None:
    from goae import convert
    from goae.card import Provenance, current_command, write_model_card
    from goae.io import atomic_dir

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
            write_model_card(tmp, "pipeline", Provenance(sources=dict(digests), command=current_command(),
                                                         note=f"official checkpoints downloaded from {where}"))
    except convert.CheckpointError as e:
        msg = _one_line(e)
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
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default 60)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m goae.download") -> int:
    """Exit code 0 on success, 1 when a download or conversion failed, 2 for a usage error or licences
    not accepted, 130 on Ctrl-C. Errors are one line on stderr; the folder is printed on stdout."""
    args = build_parser(prog).parse_args(argv)
    if args.retries < 0 or not (args.timeout > 0):
        print(f"{prog}: error: --retries must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        out = download_weights(accept_licences=args.accept_licences, mirror=args.mirror, out_dir=args.out,
                               downloads_dir=args.downloads, overwrite=args.overwrite, retries=args.retries,
                               timeout=args.timeout)
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
    print(f"{prog}: error: {_one_line(message) or 'unknown error'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
