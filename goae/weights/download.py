"""Weights in one command: fetch the official EG3D and GOAE checkpoints and convert them.

    goae download --accept-licences          # or `python -m goae.download ...`

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
3. Conversion with `goae.weights.convert.convert_goae` into `<cache>/weights/goae-ffhq` (or `--out`),
   published atomically; the command prints the folder. `default_weights_folder()` returns it once it is complete,
   for the app and `goae invert` to use when no weights are configured.
4. The official edit directions (age, anger, glass; cat_black, cat_smalleyes for the cat model), which
   the GOAE authors publish in their git repository (example/ws_edit), come from GitHub at a fixed commit
   (or `<mirror>/ws_edit/`) into `<cache>/downloads/ws_edit/`, checked against their known sha256; the
   human ones go into the pipeline's `directions/` (an existing pipeline folder without them gets them).
   They are an extra: one that cannot be fetched is a warning, and `--no-directions` skips them.

The transfers: goae.weights.fetch (resume, deadlines, redirects, a full disk); the hosts and licences:
goae.weights.sources. Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from goae.io import atomic_dir, atomic_write_bytes, exit_with_error, one_line, sha256_file
from goae.paths import DIRECTIONS_DIR, downloads_folder, weights_folder
from goae.weights.cards import Provenance, current_command, write_model_card
from goae.weights.errors import CheckpointError, CorruptDownloadError, DownloadError, LicenceNotAcceptedError
from goae.weights.fetch import MIN_RATE, download_file, new_opener, read_text, to_stderr
from goae.weights.sources import (AFA_FILE, COMMAND, DIRECTION_FILES, DIRECTIONS_PAGE, EG3D_FILE, EG3D_LICENCE_NAME,
                                  EG3D_LICENCE_URL, ENCODER_FILE, FILES, GOAE_REPO_URL, KNOWN_SHA256, MIRROR_ENV, NGC_PAGE,
                                  SUMS_NAME, WeightFile, licence_text, manual_hint, where)

# ----------------------------------------------------------------------------- SHA256SUMS and the lock


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


# ----------------------------------------------------------------------------- checks


def _validate(f: WeightFile, path: Path) -> None:
    """Read the file with the converter's safe loaders (no pickle code runs). Raises CheckpointError."""
    # lazily: these import torch, which fetching does not need
    from goae.edit import DirectionError, load_direction
    from goae.weights.checkpoints import load_official_state_dict
    from goae.weights.unpickle import read_official_generator

    if f.kind == "eg3d":
        read_official_generator(path)
    elif f.kind == "direction":
        try:  # .npy read without pickles; the cat files are torch zips, read with weights_only
            load_direction(path, name=Path(f.name).stem)
        except DirectionError as e:
            raise CheckpointError(one_line(e)) from None
    else:
        load_official_state_dict(path, what=f"{f.name}")


def _reject(path: Path, log: Callable[[str], None]) -> Path:
    """Move a bad final file aside (never delete what a person may have put there by hand)."""
    bad = path.with_name(path.name + ".rejected")
    os.replace(path, bad)
    log(f"  {path.name}: moved aside to {bad}")
    return bad


def _expected_sha(name: str, mirror_sums: Mapping[str, str]) -> tuple[str | None, str, bool]:
    """(the sha256 a file must have or None, who says so, whether it is an official digest goae knows)."""
    if name in KNOWN_SHA256:
        return KNOWN_SHA256[name], "goae's list of official digests", True
    if name in mirror_sums:
        return mirror_sums[name], f"the mirror's {SUMS_NAME}", False
    return None, "", False


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
    log: Callable[[str], None] = to_stderr,
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
                ctype, text = read_text(new_opener(), f"{base}/{SUMS_NAME}", timeout, limit=1 << 20, min_rate=min_rate)
                mirror_sums = _parse_sums(text) if ctype.startswith("text/") else {}
            except DownloadError as e:
                if e.status not in (403, 404):  # no SHA256SUMS is fine; the mirror being down is said once
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


def _add_directions(out: Path, downloads: Path, got: Mapping[str, str], log: Callable[[str], None]) -> list[str]:
    """The human directions of `got` into the existing pipeline folder `out`; the rest stay in <downloads>/ws_edit."""
    from goae.edit import add_directions  # lazily: torch

    try:
        names, _ = add_directions(out, [downloads / n for n in got])  # the notes: the cat_* files, for the cat model
    except ValueError as e:  # the folder or a file refused: the weights do not need them
        log(f"warning: the edit directions were not added to {out}: {one_line(e)}")
        return []
    _say_added(out, downloads, got, names, log)
    return names


def _say_added(out: Path, downloads: Path, got: Mapping[str, str], names: Sequence[str], log: Callable[[str], None]) -> None:
    from goae.edit import DIRECTIONS_FOLDER  # lazily: torch

    others = [Path(n).stem for n in got if Path(n).stem not in names]
    log(f"  edit directions {', '.join(names) or '(none)'} added to {out / DIRECTIONS_FOLDER}"
        + (f"; {', '.join(others)} (for the cat model) are kept in {downloads / DIRECTIONS_DIR}" if others else ""))


def _get_file(f: WeightFile, downloads: Path, mirror: str | None, mirror_sums: Mapping[str, str],
              recorded: dict[str, str], retries: int, timeout: float, log: Callable[[str], None],
              min_rate: float = MIN_RATE) -> str:
    """Make downloads/<name> a checked copy of the official file; return its sha256."""
    dest = downloads / f.name
    expected, by, official = _expected_sha(f.name, mirror_sums)
    if dest.is_file():  # an earlier run, or put there by hand
        digest = sha256_file(dest)
        if expected and digest != expected:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} has sha256 {digest}, but {by} says {expected}; it was moved "
                                       f"aside and the next run downloads it again")
        if f.name in recorded and recorded[f.name] != digest:
            log(f"  {f.name}: differs from the copy recorded in {SUMS_NAME} (replaced by hand?); checking it again")
        elif f.name in recorded or official:  # official: it matched goae's known digest above
            log(f"  {f.name}: found in {downloads}, sha256 {digest[:16]}... as " + ("recorded" if f.name in recorded else "known"))
            return digest
        try:
            _validate(f, dest)
        except CheckpointError as e:
            _reject(dest, log)
            raise CorruptDownloadError(f"{dest} is not a usable {f.what} checkpoint ({one_line(e)}); it was "
                                       f"moved aside: {manual_hint(f, downloads)}") from None
        log(f"  {f.name}: found in {downloads}, sha256 {digest}")
        return digest

    src = where(f, mirror, downloads, timeout, min_rate)
    url = src.url
    part = download_file(url, dest, source=src.source, resolve=src.resolve, timeout=timeout, retries=retries, log=log,
                         min_rate=min_rate)
    meta = part.with_name(part.name + ".json")
    digest = sha256_file(part)

    def discard(why: str) -> CorruptDownloadError:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return CorruptDownloadError(f"{f.name} from {url} {why}; the download was discarded (nothing was kept "
                                    f"or converted): run again to download it afresh, or {manual_hint(f, downloads)}")

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
    # lazily: these import torch, which fetching does not need
    from goae.edit import DIRECTIONS_FOLDER
    from goae.weights import convert

    paths = {f.name: downloads / f.name for f in FILES}
    try:
        # Our own atomic folder around the converter's: the model card with the sources' sha256 is
        # added before anything appears at `out`. The converter ships the directions that fit, before the one
        # check of the finished folder.
        with atomic_dir(out, overwrite=overwrite or out.is_dir()) as tmp:
            configs = {k: v for k, v in (("encoder_config", encoder_config), ("afa_config", afa_config)) if v is not None}
            inner = convert.convert_goae(paths[EG3D_FILE], paths[ENCODER_FILE], paths[AFA_FILE], tmp / "pipeline",
                                         directions=[downloads / n for n in directions] or None,
                                         known_sha256=digests, **configs)
            for child in list(inner.iterdir()):
                os.rename(child, tmp / child.name)
            inner.rmdir()
            origin = f"mirror {mirror}" if mirror else f"NVIDIA NGC ({NGC_PAGE}) and the GOAE release ({GOAE_REPO_URL})"
            names = sorted(p.stem for p in (tmp / DIRECTIONS_FOLDER).glob("*.safetensors"))
            notes = []
            if directions:
                _say_added(out, downloads, directions, names, log)
            if names:
                notes.append(f"edit directions {', '.join(names)}: the official files of the GOAE repository "
                             f"({DIRECTIONS_PAGE}; the authors' terms)" + (f", through mirror {mirror}" if mirror else ""))
            sources = {**digests, **{n: d for n, d in directions.items() if Path(n).stem in names}}
            write_model_card(tmp, "pipeline", Provenance(sources=sources, command=current_command(),
                                                         note=f"official checkpoints downloaded from {origin}", notes=notes))
    except CheckpointError as e:
        for f in FILES:  # a file the converter refuses is not kept as good
            if e.path == paths[f.name] and paths[f.name].is_file():
                _reject(paths[f.name], log)
                recorded.pop(f.name, None)
                _write_sums(downloads / SUMS_NAME, recorded)
        raise CorruptDownloadError(f"conversion failed, nothing was written to {out}: {one_line(e)}") from None


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
        return exit_with_error(prog, "--retries must be >= 0, --timeout > 0 and --min-rate >= 0", 2)
    try:
        out = download_weights(accept_licences=args.accept_licences, mirror=args.mirror, out_dir=args.out,
                               downloads_dir=args.downloads, overwrite=args.overwrite, retries=args.retries,
                               timeout=args.timeout, min_rate=args.min_rate, directions=args.directions)
    except LicenceNotAcceptedError as e:
        return exit_with_error(prog, e, 2)
    except DownloadError as e:
        return exit_with_error(prog, e, 1)
    except KeyboardInterrupt:
        return exit_with_error(prog, "interrupted; partial downloads are kept as *.part and resume on the next run", 130)
    except Exception as e:  # a full disk, no memory, a bug: still one line (conversion is atomic: nothing half-written)
        return exit_with_error(prog, e, 1)
    print(f"goae weights ready: {out}")
    print(f"use them with: GOAE_WEIGHTS={out} python app.py, or goae invert ... --weights {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
