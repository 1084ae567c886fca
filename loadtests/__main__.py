"""`python -m loadtests ...`: the same as `blockserve loadtest ...`."""

import sys

from loadtests.cli import main

sys.exit(main())
