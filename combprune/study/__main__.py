"""``python -m combprune.study CONFIG.toml`` (same as ``combprune study``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
