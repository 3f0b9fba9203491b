"""``python -m anaxreport`` is the ``anaxreport`` command."""

import sys

from .cli import main

sys.exit(main())
