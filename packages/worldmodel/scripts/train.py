"""The guide's `python scripts/train.py ...`: a thin wrapper around `worldmodel train` (same flags)."""
import sys

from worldmodel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog_name="scripts/train.py"))
