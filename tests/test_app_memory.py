"""Memory and folder bounds of the app (issue #15.11).

The fast tests (collected by pytest) check the bounds directly: the RAM budget and least-recently-used
eviction of the tri-plane caches, their spill to disk and reload, and that session folders go when a
session ends, when a step fails and at shutdown.

`test_server_memory_levels_off` (slow) bounds a running app's RSS over many calls and concurrent visitors.

Run as a script, this file is the slow soak measurement (not part of the test suite): it starts an app
(`--app`, default ./app.py) with random-small weights and drives many inversions in many sessions through
gradio_client, printing the server's RSS at a few points and the session folders left before and after
shutdown:

    python tests/test_app_memory.py --sessions 50 --inversions 200
    python tests/test_app_memory.py --app /tmp/app_before.py --flow old      # an older app.py, for comparison
    python tests/test_app_memory.py --curve --weights random                 # full size: RSS after every call
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from appserver import start_app

try:  # the fast tests need these; the soak script only the standard library and gradio_client
    import torch

    from goae.app.service import USER_ERRORS, GOAEApp
    from goae.app.state import API_FILES_TTL_S, AppError, Folders, InversionCache
except ImportError:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fast tests
def _fake_pipe():
    """Enough of a pipeline for GOAEApp's bookkeeping (no model: these tests never render)."""
    import types
    from goae.domains import HUMAN

    return types.SimpleNamespace(generator=types.SimpleNamespace(neural_rendering_resolution=64, ray_range=(2.25, 3.3)),
                                 domain=HUMAN)


def _entry(mb: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"planes": torch.randn(mb * 2**18, generator=g), "ws": torch.randn(14, 32, generator=g)}


def test_cache_keeps_recent_entries_in_ram_and_spills_the_rest(tmp_path):
    cache = InversionCache(max_bytes=25 * 2**20)
    keys = []
    for i in range(4):  # four sessions' inversions of ~10 MB each
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        keys.append(cache.put(folder / "cache" / "inversion.safetensors", _entry(10, i)))
        assert cache.ram_bytes <= 25 * 2**20
    assert [Path(k).is_file() for k in keys] == [True, True, False, False]  # the two oldest on disk
    assert cache.ram_bytes == sum(cache.size(_entry(10, i)) for i in (2, 3))
    again = cache.get(keys[0])                       # read back, now the most recent
    assert torch.equal(again["planes"], _entry(10, 0)["planes"]) and torch.equal(again["ws"], _entry(10, 0)["ws"])
    assert Path(keys[2]).is_file() and cache.ram_bytes <= 25 * 2**20
    cache.forget(keys[1])
    assert not Path(keys[1]).exists()
    with pytest.raises(AppError, match="invert the photo again"):
        cache.get(keys[1])
    cache.discard(tmp_path / "s3")
    assert keys[3] not in cache._ram and not Path(keys[3]).exists()  # RAM only, the file never existed


def test_cache_does_not_write_for_sessions_that_ended(tmp_path):
    cache = InversionCache(max_bytes=1)
    gone = tmp_path / "gone"
    (gone / "cache").mkdir(parents=True)
    key = cache.put(gone / "cache" / "inversion.safetensors", _entry(1, 0))
    import shutil
    shutil.rmtree(gone)
    cache.put(tmp_path / "cache" / "inversion.safetensors", _entry(1, 1))   # spills the first: its session ended
    assert not gone.exists() and key not in cache._ram


def test_session_folders_come_and_go(tmp_path):
    folders = Folders(str(tmp_path))
    app = GOAEApp(_fake_pipe(), folders=folders)
    assert folders.root.parent == tmp_path and folders.root.name.startswith(f"goae-app-{os.getpid()}-")
    # A session's folder is made with its first file; a photo that fails leaves none (issue #15.11).
    with pytest.raises(USER_ERRORS, match="No face found"):
        app.align(ROOT / "examples" / "coffee.png", None, session_id="tab-1")
    with pytest.raises(USER_ERRORS, match="not an image"):
        app.align(b"not a photo at all" * 20, None, session_id="tab-1")     # an inline data: URL
    assert not (folders.root / "sessions").exists() or not any((folders.root / "sessions").iterdir())
    session = app.align(ROOT / "examples" / "astronaut.png", None, session_id="tab-1").session
    assert session.folder == folders.session("tab-1") and (session.folder / "aligned.png").is_file()
    assert "tab-1" not in str(session.folder)                  # the client's session id is never a file name
    session.inversion = session.current = app.cache.put(session.cache_keys[0], _entry(1, 0))
    # A new photo that fails: the previous photo's files and tri-planes go too.
    with pytest.raises(USER_ERRORS):
        app.align(ROOT / "examples" / "coffee.png", session, session_id="tab-1")
    assert not session.folder.exists() and not app.cache._ram
    session = app.align(ROOT / "examples" / "astronaut.png", session, session_id="tab-1").session
    session.inversion = session.current = app.cache.put(session.cache_keys[0], _entry(1, 0))
    app.end_session(session)                                   # state expired or the tab closed
    assert not session.folder.exists() and not app.cache._ram
    folders.remove_all()                                       # shutdown
    assert not folders.root.exists()


def test_stale_roots_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"goae-app-{dead.pid}-abc"
    alive = tmp_path / f"goae-app-{os.getpid()}-def"
    other = tmp_path / "goae-app-old_style"
    for folder in (stale, alive, other):
        (folder / "sessions").mkdir(parents=True)
    folders = Folders(str(tmp_path))
    assert not stale.exists() and alive.exists() and other.exists()
    folders.remove_all()


def test_api_call_folders_are_pruned(tmp_path, monkeypatch):
    folders = Folders(str(tmp_path))
    old = folders.api_call()
    old.mkdir(parents=True)
    past = time.time() - API_FILES_TTL_S - 5
    os.utime(old, (past, past))
    recent = folders.api_call()
    recent.mkdir()
    folders.api_call()
    assert not old.exists() and recent.exists()
    folders.remove_all()


# ------------------------------------------------------------------------------------------ soak (slow test)
@pytest.mark.slow
def test_server_memory_levels_off():
    """A running app (random-small) through many stateless calls, then rounds of concurrent visitors (page,
    align, reconstruct, render, preview): after the first calls set up the working set, RSS stays level (issue
    #31.3 / #29.3: it grew with every call and every round, doubled by the allocator tuning in a threaded
    server, and each page load copied the pipelines). The full-size curve: `--curve` below."""
    lines: list[str] = []
    points = curve(ROOT / "app.py", "random-small", invert_calls=8, clients=4, rounds=4,
                   photo=ROOT / "examples" / "astronaut.png", max_rss_mb=6000, out=lines.append)
    mb = dict(points)
    report = "\n".join(lines)
    assert mb["invert 8"] - mb["invert 2"] < 150, report
    assert mb["4 clients #4"] - mb["4 clients #2"] < 250, report


# ------------------------------------------------------------------------------------------ soak (script)
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _app_folders() -> set[Path]:
    return {p for p in Path(tempfile.gettempdir()).glob("goae-app*")}


def _count_files(folders) -> int:
    return sum(1 for f in folders for p in Path(f).rglob("*") if p.is_file()) if folders else 0


FLOWS = {
    # the app before issue #18: align, then the session's invert endpoint
    "old": (lambda c, photo: c.predict(photo, api_name="/align"),
            lambda c: c.predict(0, 0, 64, api_name="/invert")),
    # this app: the same two steps of a browser session (the stateless /invert keeps nothing)
    "new": (lambda c, photo: c.predict(photo=photo, api_name="/align"),
            lambda c: c.predict(api_name="/reconstruct")),
}


def soak(app: Path, flow: str, sessions: int, inversions: int, photo: Path, no_face: Path | None) -> None:
    from gradio_client import Client, handle_file

    align, invert = FLOWS[flow]
    before = _app_folders()
    env = {k: v for k, v in os.environ.items() if k != "GOAE_EXAMPLES"}
    log = tempfile.NamedTemporaryFile("w", prefix="goae_soak_", suffix=".log", delete=False)
    try:
        proc, url = start_app(app, env, log, timeout_s=300)
    except RuntimeError as e:
        raise SystemExit(f"{e} (log in {log.name})") from None
    per_session = max(1, inversions // sessions)
    print(f"{app} ({flow}): {sessions} sessions x {per_session} inversions, pid {proc.pid}")
    print(f"{'inversions':>10} {'sessions':>8} {'RSS MB':>8} {'app folders':>11} {'files':>6} {'s/inv':>6}")
    print(f"{0:>10} {0:>8} {_rss_mb(proc.pid):>8.0f}")
    done, t0, marks = 0, time.time(), {1, 10, 25, 50, 100, 150, 200, inversions}
    failed_aligns = 0
    for s in range(sessions):
        client = Client(url, verbose=False)
        if no_face is not None and s % 10 == 9:  # now and then a photo without a face (a failed align)
            try:
                align(client, handle_file(str(no_face)))
            except Exception:
                failed_aligns += 1
        align(client, handle_file(str(photo)))
        for _ in range(per_session):
            invert(client)
            done += 1
            if done in marks:
                new = _app_folders() - before
                print(f"{done:>10} {s + 1:>8} {_rss_mb(proc.pid):>8.0f} {len(new):>11} {_count_files(new):>6} "
                      f"{(time.time() - t0) / done:>6.2f}", flush=True)
        client.close()
    new = _app_folders() - before
    print(f"failed aligns: {failed_aligns}; before shutdown: {len(new)} app folders, {_count_files(new)} files")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    new = _app_folders() - before
    print(f"after shutdown (SIGTERM): {len(new)} app folders, {_count_files(new)} files")


def curve(app: Path, weights: str, invert_calls: int, clients: int, rounds: int, photo: Path,
          max_rss_mb: float = 0, out=print) -> list[tuple[str, float]]:
    """The server's RSS after each step -> [(step, MB)]: `invert_calls` stateless /invert calls one after another,
    then `rounds` of `clients` concurrent visitors, each loading the page and running a browser session's steps
    (/align, /reconstruct, /render, /preview) in its own session. Stops early (SystemExit) past `max_rss_mb`."""
    import threading
    import urllib.request

    from gradio_client import Client, handle_file

    env = dict(os.environ, GOAE_WEIGHTS=weights)
    env.pop("GOAE_EXAMPLES", None)
    log = tempfile.NamedTemporaryFile("w", prefix="goae_curve_", suffix=".log", delete=False)
    try:
        proc, url = start_app(app, env, log, timeout_s=900, weights=weights)
    except RuntimeError as e:
        raise SystemExit(f"{e} (log in {log.name})") from None
    points: list[tuple[str, float]] = []
    peak, stop = [0.0], threading.Event()

    def watch() -> None:  # the peak between steps; the server is killed past max_rss_mb (a shared machine)
        while not stop.wait(0.25) and proc.poll() is None:
            peak[0] = max(peak[0], _rss_mb(proc.pid))
            if max_rss_mb and peak[0] > max_rss_mb:
                out(f"RSS {peak[0]:.0f} MB, over {max_rss_mb:.0f} MB: server stopped")
                proc.kill()

    def mark(step: str) -> None:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before {step}")
        points.append((step, _rss_mb(proc.pid)))
        out(f"{step:>14} {points[-1][1]:>8.0f} MB  (peak so far {max(peak[0], points[-1][1]):.0f} MB, "
            f"{time.time() - t0:.0f} s)")

    def visitor(errors: list) -> None:
        try:
            urllib.request.urlopen(url, timeout=300).read()  # the page, as a browser loads it first
            c = Client(url, verbose=False)
            c.predict(photo=handle_file(str(photo)), api_name="/align")
            c.predict(api_name="/reconstruct")
            c.predict(yaw=20, pitch=0, api_name="/render")
            c.predict(yaw=-20, pitch=5, api_name="/preview")
            c.close()
        except Exception as e:  # reported after the round
            errors.append(e)

    t0 = time.time()
    threading.Thread(target=watch, daemon=True).start()
    try:
        out(f"{app} ({weights}), pid {proc.pid}")
        mark("start")
        client = Client(url, verbose=False)
        for i in range(invert_calls):
            client.predict(photo=handle_file(str(photo)), views=[[30, 0]], api_name="/invert")
            mark(f"invert {i + 1}")
        client.close()
        for r in range(rounds):
            errors: list = []
            threads = [threading.Thread(target=visitor, args=(errors,)) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise SystemExit(f"round {r + 1}: {len(errors)} visitors failed: {errors[0]!r}")
            mark(f"{clients} clients #{r + 1}")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    return points


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--curve", action="store_true", help="RSS after every step: /invert calls, then rounds of "
                   "concurrent visitors (--weights, --invert-calls, --clients, --rounds)")
    p.add_argument("--weights", default="random", help="for --curve: random (full size, human + cat) or random-small")
    p.add_argument("--invert-calls", type=int, default=20)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-rss-mb", type=float, default=12000, help="for --curve: stop past this RSS")
    p.add_argument("--app", type=Path, default=ROOT / "app.py")
    p.add_argument("--flow", choices=sorted(FLOWS), default="new")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--inversions", type=int, default=200)
    p.add_argument("--photo", type=Path, default=ROOT / "examples" / "astronaut.png")
    p.add_argument("--no-face", type=Path, default=ROOT / "examples" / "coffee.png")
    a = p.parse_args(argv)
    if a.curve:
        curve(a.app.resolve(), a.weights, a.invert_calls, a.clients, a.rounds, a.photo, a.max_rss_mb,
              out=lambda line: print(line, flush=True))
        return
    soak(a.app.resolve(), a.flow, a.sessions, a.inversions, a.photo, a.no_face if a.no_face.is_file() else None)


if __name__ == "__main__":
    main()
