"""`python -m steerlab.report --root ... --out ...`: see `steerlab.report.cli`."""

import sys

from steerlab.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
