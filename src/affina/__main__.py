"""`python -m affina ...` is the `affina` command (torchrun and the job workers start it this way)."""

import sys

from .cli import main

sys.exit(main())
