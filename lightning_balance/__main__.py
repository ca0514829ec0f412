"""``python -m lightning_balance``: the ``lightning-balance`` command line."""

import sys

from lightning_balance.cli import main

if __name__ == "__main__":
    sys.exit(main())
