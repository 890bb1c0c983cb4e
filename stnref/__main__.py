"""``python -m stnref``: the same as the ``stnref`` console script."""

import sys

from .cli import main

sys.exit(main())
