"""``python -m ddim``: the ``ddim`` command line."""

import sys

from ddim.cli import main

if __name__ == "__main__":
    sys.exit(main())
