"""``python -m titn_edu`` — the same as the ``titn-edu`` command."""

import sys

from .cli import main

sys.exit(main())
