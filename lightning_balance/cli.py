"""The ``lightning-balance`` command line: it lives in :mod:`lightning_balance.experiments.cli`.

Kept so that the console script ``lightning_balance.cli:main`` and ``from lightning_balance.cli import main``
keep working.
"""

import sys

from lightning_balance.experiments.cli import build_parser, lightning_cli, main, parse_kwargs

__all__ = ["build_parser", "lightning_cli", "main", "parse_kwargs"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
