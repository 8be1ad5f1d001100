"""`python -m sivae` is the `sivae` command."""

import sys

from sivae.launch.cli import main

sys.exit(main())
