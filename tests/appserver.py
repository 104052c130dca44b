"""The app under test: its service built directly (goae.app.create_app), app.py imported with a given environment
(as a Space imports it), or started as a server process on a free localhost port. Shared by the app tests and the
memory soak script."""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]


def build_apps(weights: str = "random-small", directions: str | None = None, examples: str | None = None):
    """The app's service (goae.app.AppDomains: one GOAEApp per domain) as create_app builds it, with none of the
    environment's GOAE_* settings in play (GOAE_EXAMPLES unset: the project's examples/)."""
    from goae.app import create_app

    names = ("GOAE_WEIGHTS", "GOAE_CAT_WEIGHTS", "GOAE_DIRECTIONS", "GOAE_EXAMPLES", "GOAE_CACHE_MB", "GOAE_FAST",
             "SPACES_ZERO_GPU")
    saved = {k: os.environ.pop(k, None) for k in names}
    try:
        return create_app(weights, directions, examples)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})


def import_app(env: Mapping[str, str | None]):
    """A fresh import of app.py (its module-level `goae_apps`, `goae_app`, `demo`) with the GOAE_* variables of
    `env` set (None: unset) while it loads; the process environment is restored afterwards."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, str(v))
        sys.modules.pop("app", None)
        return importlib.import_module("app")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(app: Path, env: Mapping[str, str], log, timeout_s: float = 480,
              weights: str = "random-small") -> tuple[subprocess.Popen, str]:
    """`python app.py` (random-small weights by default) on a free port, answering HTTP -> (process, URL).
    RuntimeError, with the process killed, if it exits or does not answer within timeout_s."""
    port = free_port()
    env = dict(env, GOAE_WEIGHTS=weights, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=Path(app).parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the app did not start (exit code {proc.poll()})") from None
            time.sleep(0.5)
