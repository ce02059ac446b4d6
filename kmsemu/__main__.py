"""``python -m kmsemu``: the same as ``xksproxy kms-emulator``."""

import sys

from kmsemu.cli import main

sys.exit(main())
