"""``python -m ddim``: the ``ddim`` command line."""

import sys

from ddim.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
