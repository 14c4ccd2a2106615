"""``python -m interop``."""

import sys

from .cli import main

sys.exit(main())
