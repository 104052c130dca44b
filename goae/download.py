"""`python -m goae.download ...`: the same command as `goae download` (goae.weights.download)."""
import sys

from goae.weights.download import main

if __name__ == "__main__":
    sys.exit(main())
