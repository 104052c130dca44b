"""`python -m goae ...` == the `goae` command."""
import sys

from goae.cli import main

sys.exit(main())
