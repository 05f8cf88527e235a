"""Keeping loaded models out of the garbage collector's full passes.

A full pass of Python's cyclic garbage collector walks every tracked object, and it runs
each time the long-lived objects grew by a quarter. A worker that loads model after model
grows its heap by the objects of each, so the passes come again and again and each is
longer: measured with ~100 KB Hoeffding trees, they went from 40 ms to over a second as a
process loaded 400 of them, and a request that met one waited for it.

So after a model is loaded, :func:`settle` collects the young garbage and freezes
(:func:`gc.freeze`) everything alive: the collector never walks those objects again. That
is safe for what gets frozen here because river's models hold no reference cycles (checked
for trees, forests, pipelines, KMeans, HalfSpaceTrees and bagging): a dropped replica is
freed by reference counting, frozen or not. So that a model with cycles, or other cyclic
garbage caught in a freeze (a request in flight at the time), is not kept for good, every
``RESETTLE_EVERY`` settles the freeze is undone for one full pass: a pause as long as the
heap is big, rare enough to stay out of the 99th percentile.
"""

from __future__ import annotations

import gc
import threading

RESETTLE_EVERY = 4096

_settled = 0
_lock = threading.Lock()


def settle() -> None:
    """Collect what is garbage now, then move everything alive out of the collector's passes."""
    global _settled
    with _lock:
        _settled += 1
        if _settled % RESETTLE_EVERY == 0:
            gc.unfreeze()  # one full pass over everything, to free cyclic garbage frozen since
        gc.collect()
        gc.freeze()
