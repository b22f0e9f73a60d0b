"""``python -m services.cli ...``: the same as the ``crucible`` console script."""

import sys

from services.cli import app

if __name__ == "__main__":
    sys.exit(app())
