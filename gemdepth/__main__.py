"""``python -m gemdepth`` is the ``gemdepth`` command."""

import sys

from gemdepth.cli import main

sys.exit(main())
