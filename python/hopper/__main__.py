"""``python -m hopper``: see :mod:`hopper.cli`."""

import sys

from .cli import main

sys.exit(main())
