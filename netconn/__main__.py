"""``python -m netconn``: the same as the ``netconn`` command."""

import sys

from .cli import main

sys.exit(main())
