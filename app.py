"""GOAE web demo: the Hugging Face Space's entry (`app_file: app.py`); the app itself is the goae.app package.

    python app.py [--weights REPO_OR_DIR | random | random-small] [--cat-weights REPO_OR_DIR | random-cat]
                  [--directions DIR] [--examples DIR] [--host 127.0.0.1] [--port 7860] [--share] [--fast]

Imported (a Space, `gradio app.py`), it builds the page from the GOAE_* environment (see goae/app/__init__.py).
"""
try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA. Optional everywhere else.
    import spaces  # noqa: F401
except ImportError:
    pass

from goae.app import build_demo, create_app, main

if __name__ == "__main__":
    main()
else:  # imported (Hugging Face Spaces, `gradio app.py`): build from the environment
    goae_apps = create_app()
    goae_app = goae_apps.default  # the first pipeline (human unless only a cat one is loaded)
    demo = build_demo(goae_apps)
