"""`python -m marginlens.core.cli`: the same command as `marginlens`."""

import sys

from marginlens.core.cli import main

sys.exit(main())
