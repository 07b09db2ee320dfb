"""`python -m affina ...` is the `affina` command (workers start training this way)."""

import sys

from affina.cli import main

sys.exit(main())
