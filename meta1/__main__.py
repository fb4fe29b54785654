"""``python -m meta1`` is the ``meta1`` command."""

import sys

from meta1.cli import main

sys.exit(main())
