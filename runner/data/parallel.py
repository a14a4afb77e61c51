"""An order-keeping, memory-bounded map over a process pool (or in-process for one worker)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator


def worker_count(requested: int) -> int:
    """0 means one per available core."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ordered_map(func: Callable, items: Iterable, *, workers: int, initializer: Callable,
                initargs: tuple = (), chunksize: int = 8) -> Iterator:
    """Yield func(item) in input order.

    Pool.imap would read the whole input ahead of the workers (a 1 GB corpus in memory), so the
    input goes to the pool in windows of a few chunks per worker.
    """
    if workers <= 1:
        initializer(*initargs)
        yield from map(func, items)
        return
    window = chunksize * workers * 4
    iterator = iter(items)
    with multiprocessing.get_context("fork").Pool(workers, initializer, initargs) as pool:
        pending = pool.imap(func, list(itertools.islice(iterator, window)), chunksize)
        while True:
            batch = list(itertools.islice(iterator, window))
            # Queue the next window before draining this one, so workers never wait on us.
            following = pool.imap(func, batch, chunksize) if batch else None
            yield from pending
            if following is None:
                break
            pending = following
