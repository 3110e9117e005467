"""The guide's `python scripts/find_lr.py ...`: a thin wrapper around `worldmodel find-lr` (same flags)."""
import sys

from worldmodel.cli import main

if __name__ == "__main__":
    sys.exit(main(["find-lr", *sys.argv[1:]], prog_name="scripts/find_lr.py"))
