"""``python -m combprune`` runs the command line (see :mod:`combprune.cli`)."""

import sys

from combprune.cli import main

sys.exit(main())
