"""``python -m cli``: the ``coalition`` command (cli/main.py)."""

import sys

from cli.main import main

sys.exit(main())
