"""`python -m goae.convert ...`: the same command as `goae convert` (goae.weights.convert)."""
import sys

from goae.weights.convert import main

if __name__ == "__main__":
    sys.exit(main())
