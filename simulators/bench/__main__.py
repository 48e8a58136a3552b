"""``python -m simulators.bench NAME [args]``: the command line lives in ``harness.py``."""

import sys

from simulators.bench.harness import main

sys.exit(main())
