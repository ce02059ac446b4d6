"""`python -m xksproxy`: the same interface as the `xksproxy` console script."""

import sys

from xksproxy.admin.cli import main

if __name__ == "__main__":
    sys.exit(main())
