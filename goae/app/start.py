"""Start the app: load the pipelines (once) and the edit directions, build the page, serve it. Settings come from
the command line or the environment (a Space has only the environment): see goae/app/__init__.py."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from goae import export
from goae.app.components import hide_paths
from goae.app.gpu import on_zero_gpu
from goae.app.server import launch
from goae.app.service import AppDomains, GOAEApp
from goae.app.state import Folders, InversionCache
from goae.app.ui import build_demo
from goae.paths import default_weights_folder
from goae.edit import directions_for, random_weights
from goae.landmarker import LandmarkerModelMissing, download_landmarker, find_landmarker
from goae.pipeline import load_pipeline
from goae.runtime import setup_runtime, setup_server_allocator

log = logging.getLogger("goae.app")
DEFAULT_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the project's, beside app.py
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
FALLBACK_WEIGHTS = "random"  # what the app runs when no weights load: the real architecture, random weights


def load_model(weights: str | None, device, seed: int = 0, fallback: str | None = None,
               default_folder: bool = True):
    """(pipeline on `device`, banner). Falls back to `fallback` (default FALLBACK_WEIGHTS), with a banner, when no
    weights load (none configured, offline, missing files, a damaged checkpoint with NaN values). Weights
    are loaded and checked on the CPU, then moved (on ZeroGPU, `spaces` takes over that move)."""
    reason = "no weights configured (set GOAE_WEIGHTS or --weights, or run `goae download`)"
    if default_folder:
        weights = weights or (str(folder) if (folder := default_weights_folder()) else None)
    if weights:
        try:
            pipe = load_pipeline(weights, seed=seed, device="cpu")
            export.check_weights(pipe)
        except Exception as e:  # the demo still starts
            log.warning("could not load weights %r: %s", weights, e)
            reason = f"the weights `{weights}` could not be loaded: {hide_paths(str(e))}"
        else:
            if random_weights(pipe):
                return pipe.to(device), f"Running on **random weights** (`{weights}`): results are not faces."
            return pipe.to(device), ""
    pipe = load_pipeline(fallback or FALLBACK_WEIGHTS, seed=seed, device="cpu").to(device)
    return pipe, f"Running on **random weights** because {reason}. Results are not faces."


def list_examples(folder: str | Path | None) -> list[str]:
    if not folder or not Path(folder).is_dir():
        return []
    return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]


def ensure_landmarker() -> None:
    """mediapipe's face_landmarker.task is not in the wheel: fetch it once (a Space has no set-up step)."""
    try:
        find_landmarker()
    except LandmarkerModelMissing:
        try:
            download_landmarker()
        except Exception as e:  # offline: photos will then fail with the landmarker's own instructions
            log.warning("face landmarker model missing and could not be downloaded: %s", e)


def create_app(weights: str | None = None, directions: str | None = None, examples: str | None = None,
               device: str | None = None, fast: bool | None = None, cat_weights: str | None = None) -> AppDomains:
    """Load the models (once) and the edit directions; arguments default to the GOAE_* environment.
    `weights` and `cat_weights` (GOAE_CAT_WEIGHTS) may be pipelines of two domains (goae.domains): the page
    then offers the choice. On random weights the cat domain comes too, so both can be tried.
    `fast` (GOAE_FAST=1): the pipelines' fast path (bf16 where the device has it) instead of fp32."""
    weights = weights or os.environ.get("GOAE_WEIGHTS")
    cat_weights = cat_weights or os.environ.get("GOAE_CAT_WEIGHTS")
    directions = directions or os.environ.get("GOAE_DIRECTIONS")
    examples = examples or os.environ.get("GOAE_EXAMPLES") or DEFAULT_EXAMPLES
    fast = os.environ.get("GOAE_FAST", "0").lower() in ("1", "true", "yes") if fast is None else fast
    # The device at start: cuda on a GPU Space (on ZeroGPU a placeholder that `spaces` moves into each
    # GPU call), else the CPU; each model step then runs where its call has a device (call_device).
    # The device and TF32 off; glibc's allocator as a threaded server wants it (not the command line's tuning,
    # which keeps freed memory in every thread's arena: issue #31), set before Gradio starts its threads.
    device = setup_runtime(device or "auto", tune_allocator=False)
    setup_server_allocator()
    ensure_landmarker()
    loaded = [load_model(weights, device)]
    first = loaded[0][0]
    small = str(first.weights_label).startswith("random-small")
    if not cat_weights and random_weights(first) and first.domain.name != "cat":
        cat_weights = "random-small-cat" if small else "random-cat"  # try both domains on random weights
    if cat_weights:
        loaded.append(load_model(cat_weights, device, fallback="random-small-cat" if small else "random-cat",
                                 default_folder=False))
    cache_mb = export.whole(os.environ.get("GOAE_CACHE_MB", 512), "GOAE_CACHE_MB", 0)
    cache, folders, examples = InversionCache(cache_mb * 2**20), Folders(), list_examples(examples)
    apps: dict[str, GOAEApp] = {}
    for pipe, banner in loaded:
        name = pipe.domain.name
        if name in apps:  # e.g. GOAE_CAT_WEIGHTS names a human pipeline
            log.warning("goae app: two %s pipelines given; keeping %s", name, apps[name].pipe.weights_label)
            continue
        if fast:
            pipe.enable_fast_path("auto", keep_fp32_weights=False)  # the app never goes back to fp32
            log.info("goae app: fast path %s", pipe.fast_path)
        dirs, notes = directions_for(pipe, directions)
        if banner and len(loaded) > 1:
            banner = f"{pipe.domain.title}s: {banner}"
        log.info("goae app: %s weights %s on %s%s, %d edit directions", name, pipe.weights_label, device,
                 " (ZeroGPU)" if on_zero_gpu() else "", len(dirs))
        apps[name] = GOAEApp(pipe, dirs, banner, notes, examples, folders=folders, cache=cache)
    return AppDomains(apps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GOAE web demo")
    p.add_argument("--weights", help="pipeline folder or Hub repo id, or random / random-small ($GOAE_WEIGHTS)")
    p.add_argument("--cat-weights", help="a second pipeline, of the cat domain (or random-cat) ($GOAE_CAT_WEIGHTS)")
    p.add_argument("--directions", help="folder of edit direction files ($GOAE_DIRECTIONS)")
    p.add_argument("--examples", help="folder of example photos ($GOAE_EXAMPLES; default examples/)")
    p.add_argument("--host", default=None, help="address to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--share", action="store_true", help="also make a temporary public gradio.live link")
    p.add_argument("--fast", action="store_true", default=None,
                   help="fast path: bf16 autocast where the CPU/GPU has it ($GOAE_FAST=1); default fp32")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """`python app.py [options]`: load, build and serve until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    apps = create_app(args.weights, args.directions, args.examples, fast=args.fast, cat_weights=args.cat_weights)
    launch(build_demo(apps), apps.default.examples, args.host, args.port, args.share)
