"""tqdm progress bars: on the main process only, silent when output is not a terminal or --quiet."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .distributed import is_main_process


def progress(iterable=None, *, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it", **kwargs):
    disable = quiet or not is_main_process() or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, unit=unit, **kwargs)
