"""Log lines and progress bars; `--quiet` turns bars off and keeps plain log lines."""

from __future__ import annotations

import sys


def log(message: str, quiet: bool = False) -> None:
    # Progress bars write to stderr too; tqdm.write keeps a line from tearing a bar.
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)


def progress(iterable=None, total=None, desc="", unit="it", quiet=False):
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=quiet or None,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
