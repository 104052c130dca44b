"""`python -m goae.convert ...`: the same command as `goae convert` (goae.weights.convert)."""
import sys

from goae.weights.checkpoints import load_official_generator  # noqa: F401  (older importers)
from goae.weights.convert import convert_eg3d, convert_goae, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
