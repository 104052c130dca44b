"""The GOAE web demo (Gradio Blocks), as a package; `app.py` at the project's root is its entry (also the
Hugging Face Space's, `app_file: app.py`). Not imported by `import goae`: only this package needs Gradio.

photo -> aligned crop + camera (estimated for portraits; AFHQ frontal or set by hand for cats) -> one inversion ->
views from the cached tri-planes (yaw/pitch sliders: a fast preview while dragging, the full render on release),
turntable video, depth map, mesh (.glb/.ply), semantic edits, a download for every output; and a stateless API
(/invert, /render_view, /edit; also MCP tools).

Settings come from the command line or the environment (a Space has only the environment):
  GOAE_WEIGHTS     pipeline folder or Hub repo id; 'random' / 'random-small' for seeded random weights.
                   Unset or not loadable (e.g. offline): the app runs on random weights with a banner.
  GOAE_CAT_WEIGHTS a second pipeline, of the other domain (goae.domains: a cat pipeline beside the human
                   one): the page then offers the choice. On random weights both domains are loaded.
  GOAE_DIRECTIONS  folder of edit direction files (age.npy, anger.npy, glass.npy, ...); default none.
  GOAE_EXAMPLES    folder of example photos shown under the upload box; default examples/ beside app.py.
  GOAE_CACHE_MB    RAM for the sessions' tri-plane caches together (default 512); older ones wait on disk.

The modules, in the order of the data flow:
  state.py    what the app keeps: Session (per browser session, in its gr.State), InversionCache, Folders
  gpu.py      where model steps run: ZeroGPU's @spaces.GPU (on_zero_gpu, gpu, gpu_duration, call_device)
  model.py    the model steps: pure functions of CPU data (CPU tensors and files out), each through `gpu`
  service.py  the app's steps (align, invert, view, edit, video, mesh, the stateless calls), no Gradio:
              named results (results.py), errors as USER_ERRORS; one GOAEApp per domain, AppDomains routes
  components.py, api.py, ui.py   the page: checked inputs, the stateless API, the layout and its wiring
  server.py   the server's limits (request size, HEAD) and launch;  start.py  create_app, parse_args, main

Where it runs. One model, loaded once, serves every visitor. On a ZeroGPU Space (the `spaces` package and
SPACES_ZERO_GPU) every model step runs inside `@spaces.GPU`: in a worker process that has the GPU for that call
only. Everything a visitor owns (the aligned face, the names of their tri-plane caches, their files) stays in the
main process. On a GPU Space or a CPU the decorator changes nothing and the same code runs in-process.
"""
import importlib

# Where each public name lives; loaded on first use, so that the service (goae.app.service) imports without Gradio.
_HOMES = {"AppDomains": "service", "GOAEApp": "service", "build_demo": "ui", "launch": "server",
          "create_app": "start", "main": "start", "parse_args": "start"}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'goae.app' has no attribute {name!r}")
    return getattr(importlib.import_module(f"goae.app.{_HOMES[name]}"), name)
