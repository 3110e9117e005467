"""The guide's `python scripts/prepare_dataset.py ...`: a thin wrapper around `worldmodel prepare-dataset` (same flags)."""
import sys

from worldmodel.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-dataset", *sys.argv[1:]], prog_name="scripts/prepare_dataset.py"))
