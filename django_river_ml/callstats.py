"""Call counts and durations: tallied in each process, written to the store off the request's path.

A learn or predict writes to the store once (the log entry, or the kept prediction); its
count and duration go into this process's :class:`Tally` for the model and operation, and a
thread writes the tallies to the store every ``STATS_FLUSH_SECONDS``. Stats read in a process
include its own calls (it writes its tallies first), and another worker's calls at most
``STATS_FLUSH_SECONDS`` (plus a write) late. A worker that stops gracefully writes what it
holds; one that is killed loses at most that many seconds of counts, never a learn.

Exponentially weighted means fold exactly: ``k`` calls with durations ``d1..dk`` turn a mean
``E`` into ``decay * E + add`` (see :meth:`Tally.count`), whatever the other workers wrote
between them, so the store's mean is the one a single writer would have made, up to the order
in which the processes' tallies arrive.

>>> tally = Tally()
>>> for duration in (100, 200, 400):
...     tally.count(duration, alpha=0.5)
>>> tally.calls, tally.total_ns, tally.folded_into(None)  # a model's first calls
(3, 700, 275.0)
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from dataclasses import dataclass

from django_river_ml.settings import river_settings

logger = logging.getLogger(__name__)


@dataclass
class Tally:
    """Calls of one operation of one model since the last write to the store."""

    calls: int = 0
    total_ns: int = 0
    first_ns: int = 0  # the first call's duration: the mean of a model without calls yet starts there
    decay: float = 1.0  # (1 - alpha) ** calls
    add: float = 0.0  # sum of alpha * (1 - alpha) ** (calls - i) * duration_i
    last_at: float = 0.0  # when the last call ended (time.time(): which models were used last)

    def count(self, duration_ns: int, alpha: float) -> None:
        if not self.calls:
            self.first_ns = duration_ns
        self.calls += 1
        self.total_ns += duration_ns
        self.decay *= 1 - alpha
        self.add = (1 - alpha) * self.add + alpha * duration_ns
        self.last_at = time.time()

    def then(self, later: Tally) -> Tally:
        """This tally followed by ``later`` (a write that failed is retried with the newer calls)."""
        return Tally(self.calls + later.calls, self.total_ns + later.total_ns, self.first_ns,
                     self.decay * later.decay, self.add * later.decay + later.add, max(self.last_at, later.last_at))

    def folded_into(self, ewm_ns: float | None) -> float:
        """The mean after these calls, from ``ewm_ns`` (None: the model had no calls)."""
        return self.decay * (self.first_ns if ewm_ns is None else ewm_ns) + self.add


class CallStatsBuffer:
    """One process's tallies for one store, by (model, incarnation, operation)."""

    def __init__(self, store):
        self._store = weakref.ref(store)
        self._tallies: dict[tuple[str, str, str], Tally] = {}
        self._lock = threading.Lock()
        # One flush at a time: a reader's flush waits for the writer thread's, so it reads every call.
        self._writing = threading.Lock()

    def count(self, name: str, incarnation: str, operation: str, duration_ns: int) -> None:
        with self._lock:
            tally = self._tallies.get((name, incarnation, operation))
            if tally is None:
                tally = self._tallies[(name, incarnation, operation)] = Tally()
            tally.count(duration_ns, float(river_settings.STATS_EWM_ALPHA))

    def flush(self, last: bool = False) -> None:
        """Write the tallies; those the store refuses now are kept for the next flush.

        ``last``: the process is exiting; a store that fails once is not tried again (each try
        could wait for a connection timeout).
        """
        with self._writing:
            self._write(last)

    def _write(self, last: bool) -> None:
        store = self._store()
        with self._lock:
            tallies, self._tallies = self._tallies, {}
        if store is None or not tallies:
            return
        failed = {}
        for (name, incarnation, operation), tally in tallies.items():
            try:
                store.record_calls(name, incarnation, operation, tally)
            except Exception as error:  # noqa: BLE001 - counts wait for the store, requests never do
                if last:
                    return
                failed[(name, incarnation, operation)] = tally
                logger.warning("Could not write the call stats of %s yet: %s", name, error)
        if failed:
            with self._lock:
                for key, tally in failed.items():
                    newer = self._tallies.get(key)
                    self._tallies[key] = tally.then(newer) if newer else tally


_buffers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_buffers_lock = threading.Lock()
_wake = threading.Event()
_writer: threading.Thread | None = None


def buffer_for(store) -> CallStatsBuffer:
    buffer = _buffers.get(store)
    if buffer is None:
        with _buffers_lock:
            buffer = _buffers.get(store)
            if buffer is None:
                buffer = _buffers[store] = CallStatsBuffer(store)
    return buffer


def count(store, name: str, incarnation: str, operation: str, duration_ns: int) -> None:
    """Count one call; written by the writer thread (at once when STATS_FLUSH_SECONDS is 0)."""
    buffer = buffer_for(store)
    buffer.count(name, incarnation, operation, duration_ns)
    if not river_settings.STATS_FLUSH_SECONDS:
        buffer.flush()
        return
    _start_writer()


def flush(store=None) -> None:
    """Write this process's tallies now (for ``store``, else for every store)."""
    buffers = [buffer_for(store)] if store is not None else list(_buffers.values())
    for buffer in buffers:
        buffer.flush()


def _start_writer() -> None:
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    with _buffers_lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(target=_write_every_interval, name="river-ml-call-stats", daemon=True)
            _writer.start()


def _write_every_interval() -> None:
    while True:
        _wake.wait(float(river_settings.STATS_FLUSH_SECONDS) or 1.0)
        _wake.clear()
        try:
            flush()
        except Exception:  # noqa: BLE001 - the thread must outlive any one failure
            logger.exception("Could not write call stats")


def _flush_at_exit() -> None:
    """A graceful stop (gunicorn's SIGTERM, Ctrl-C) writes what the process holds."""
    for buffer in list(_buffers.values()):
        try:
            buffer.flush(last=True)
        except Exception:  # noqa: BLE001, S110 - nothing is left to report to at exit
            pass


atexit.register(_flush_at_exit)
