"""``python -m stnref``: the same as the ``stnref`` console script."""

import sys

from .app.cli import main

sys.exit(main())
