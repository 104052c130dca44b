"""`python -m goae.download ...`: the same command as `goae download` (goae.weights.download)."""
import sys

from goae.paths import default_weights_folder  # noqa: F401  (older importers)
from goae.weights.download import main

if __name__ == "__main__":
    sys.exit(main())
