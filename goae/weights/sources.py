"""Where the official weights come from and under which terms: NVIDIA NGC (the EG3D generator), the GOAE
authors' Google Drive folder (encoder and AFA), their git repository (the edit directions), or a mirror that
replaces them all (`<mirror>/<file name>`, `<mirror>/ws_edit/<name>`).

The checkpoints are not goae's: NVIDIA's EG3D generator is under the NVIDIA Source Code License for EG3D
(non-commercial: research or evaluation), and the GOAE checkpoints are the GOAE authors' release, whose
repository publishes no LICENSE file; `licence_text` is what a user accepts before anything is fetched.
Google Drive hands out a folder page, not per-file links: `DriveFile` finds the file in it and follows the
confirmation page to a one-time URL. Standard library only.
"""

from __future__ import annotations

import dataclasses
import html.parser
import json
import re
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

from goae.io import one_line
from goae.paths import DIRECTIONS_DIR
from goae.weights.cards import EG3D_LICENCE_URL, GOAE_REPO_URL
from goae.weights.errors import DownloadError, ManualDownloadRequiredError
from goae.weights.fetch import MIN_RATE, is_html, new_opener, open_url, read_body, read_text

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

# The official edit directions are in the GOAE git repository (example/ws_edit, what its infer.py --edit
# reads), not in the Drive folder: they come from GitHub's raw file host at a fixed commit, under the
# GOAE authors' terms like the checkpoints. cat_* are for the AFHQ cats model (torch.save zips named .npy).
GOAE_COMMIT = "ba7ef3d652aef73e7995d29a0261e5d08df406e2"
DIRECTIONS_PAGE = f"{GOAE_REPO_URL}/tree/{GOAE_COMMIT}/example/ws_edit"
DIRECTIONS_URL = "https://raw.githubusercontent.com/jiangyzy/GOAE/{commit}/example/ws_edit/{name}"  # GOAE_REPO_URL's
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
COMMAND = "goae download --accept-licences"


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


def drive_folder_entries(page: str) -> dict[str, str]:
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


def manual_hint(f: WeightFile, downloads: Path) -> str:
    return (f"download {f.name} by hand from {f.page} and put it at {downloads / f.name}, then run "
            f"`{COMMAND}` again: it verifies and converts the files it finds there")


class DriveFile:
    """Resolves a file of the GOAE Drive folder to a one-time download URL (before every attempt)."""

    def __init__(self, f: WeightFile, folder_id: str, downloads: Path, timeout: float, min_rate: float = MIN_RATE):
        self.f, self.folder_id, self.downloads, self.timeout, self.min_rate = f, folder_id, downloads, timeout, min_rate
        self.file_id: str | None = None

    def _manual(self, why: str) -> ManualDownloadRequiredError:
        return ManualDownloadRequiredError(f"Google Drive: {why}. Please {manual_hint(self.f, self.downloads)}")

    def _find_id(self, opener) -> str:
        for page_url in (DRIVE_FOLDER_PAGE, DRIVE_EMBEDDED_FOLDER):
            try:
                _, page = read_text(opener, page_url.format(id=self.folder_id), self.timeout, min_rate=self.min_rate)
            except DownloadError as e:
                if e.status is not None and 400 <= e.status < 500:  # no such page: try the other view
                    continue
                raise
            entries = drive_folder_entries(page)
            if self.f.name in entries:
                return entries[self.f.name]
        raise self._manual(f"could not find {self.f.name} in the GOAE folder listing (the page format may have "
                           f"changed, or the folder needs a sign-in)")

    def __call__(self) -> str:
        opener = new_opener()
        if self.file_id is None:
            self.file_id = self._find_id(opener)
        url = DRIVE_FILE_URL.format(id=self.file_id)
        for _ in range(3):  # file -> done; confirmation page -> its form's URL; error page -> manual
            with open_url(opener, url, self.timeout) as resp:
                if resp.status == 416 or not is_html(resp):
                    return resp.geturl()  # small files come at once; the final URL takes Range
                page = read_body(resp, url, 4 << 20, self.timeout, self.min_rate).decode("utf-8", errors="replace")
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



# ----------------------------------------------------------------------------- where each file is fetched from


@dataclasses.dataclass(frozen=True)
class Where:
    url: str  # what messages name (and what is fetched, unless `resolve` gives the URL)
    source: str | None = None  # what the bytes are, to resume a .part only from the same file (default: url)
    resolve: Callable[[], str] | None = None  # a fresh URL before every attempt (Drive's are one-time)


def where(f: WeightFile, mirror: str | None, downloads: Path, timeout: float, min_rate: float = MIN_RATE) -> Where:
    """How to fetch `f`: from the mirror when there is one, else from its official host."""
    if mirror:
        return Where(f"{mirror.rstrip('/')}/{urllib.parse.quote(f.name)}")
    if f.kind == "direction":
        return Where(DIRECTIONS_URL.format(commit=GOAE_COMMIT, name=Path(f.name).name))
    if f.kind == "eg3d":
        return Where(NGC_FILE_URL.format(name=f.name))
    return Where(DRIVE_FOLDER_PAGE.format(id=GOAE_DRIVE_FOLDER_ID) + f" ({f.name})",
                 source=f"gdrive:{GOAE_DRIVE_FOLDER_ID}/{f.name}",
                 resolve=DriveFile(f, GOAE_DRIVE_FOLDER_ID, downloads, timeout, min_rate))
