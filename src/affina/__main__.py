"""`python -m affina ...` is the `affina` command (torchrun launches it this way)."""

import sys

from .cli import main

sys.exit(main())
