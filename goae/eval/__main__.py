import sys

from goae.eval.cli import main

sys.exit(main())
