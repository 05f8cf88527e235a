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

Latencies are also counted in a histogram of fixed, log-spaced buckets (:data:`BUCKET_BOUNDS_NS`),
and calls in slots of :data:`RATE_SLOT_SECONDS` by when they ended. Both are plain counts, so the
store adds them up exactly, whichever worker's tally comes first: p50/p95/p99 and the call rate
over the last minute are those of every call, on every worker (:func:`percentile`,
:func:`rate_per_second`). Failed calls are counted too, by route and status (:func:`count_error`).

>>> tally = Tally()
>>> for duration in (100, 200, 400):
...     tally.count(duration, alpha=0.5)
>>> tally.calls, tally.total_ns, tally.folded_into(None)  # a model's first calls
(3, 700, 275.0)
>>> percentile(tally.buckets, 0.5) <= percentile(tally.buckets, 0.99)
True
"""

from __future__ import annotations

import atexit
import bisect
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from django_river_ml.settings import river_settings

logger = logging.getLogger(__name__)


#: Upper bounds, in ns, of the latency histogram's buckets: six a decade (the E6 series: 1, 1.5, 2.2, 3.3,
#: 4.7, 6.8), from 10 µs (river predicts in microseconds) to 100 s; one more bucket holds longer calls.
#: Neighbouring bounds differ by at most 1.5 times, which bounds a percentile's error. The Prometheus
#: histogram has the same buckets. Changing them would mix counts of different buckets in the store.
BUCKET_BOUNDS_NS: tuple[int, ...] = (
    *(mantissa * 10**exponent for exponent in range(3, 10) for mantissa in (10, 15, 22, 33, 47, 68)),
    100 * 10**9,
)
#: Calls are counted in slots of this many seconds (by when they ended), for the rate over the last minute.
RATE_SLOT_SECONDS = 5
RATE_WINDOW_SECONDS = 60
#: Slots the rate reads: the window's, the current (partial) one included. Stores drop older ones.
RATE_SLOTS = RATE_WINDOW_SECONDS // RATE_SLOT_SECONDS


def bucket_of(duration_ns: int) -> int:
    """The index of the bucket a duration falls in (``le`` semantics: a bound belongs to its bucket)."""
    return bisect.bisect_left(BUCKET_BOUNDS_NS, duration_ns)


def slot_of(at: float) -> int:
    return int(at // RATE_SLOT_SECONDS)


def oldest_slot_kept(now: float) -> int:
    """Slots before this one are out of every window a reader can ask for: stores drop them."""
    return slot_of(now) - RATE_SLOTS


@dataclass
class Tally:
    """Calls of one operation of one model since the last write to the store."""

    calls: int = 0
    total_ns: int = 0
    first_ns: int = 0  # the first call's duration: the mean of a model without calls yet starts there
    decay: float = 1.0  # (1 - alpha) ** calls
    add: float = 0.0  # sum of alpha * (1 - alpha) ** (calls - i) * duration_i
    last_at: float = 0.0  # when the last call ended (time.time(): which models were used last)
    buckets: Counter = field(default_factory=Counter)  # bucket index -> calls (see BUCKET_BOUNDS_NS)
    slots: Counter = field(default_factory=Counter)  # rate slot (slot_of) -> calls that ended in it

    def count(self, duration_ns: int, alpha: float) -> None:
        if not self.calls:
            self.first_ns = duration_ns
        self.calls += 1
        self.total_ns += duration_ns
        self.decay *= 1 - alpha
        self.add = (1 - alpha) * self.add + alpha * duration_ns
        self.last_at = time.time()
        self.buckets[bucket_of(duration_ns)] += 1
        self.slots[slot_of(self.last_at)] += 1

    def then(self, later: Tally) -> Tally:
        """This tally followed by ``later`` (a write that failed is retried with the newer calls)."""
        return Tally(self.calls + later.calls, self.total_ns + later.total_ns, self.first_ns,
                     self.decay * later.decay, self.add * later.decay + later.add, max(self.last_at, later.last_at),
                     self.buckets + later.buckets, self.slots + later.slots)

    def folded_into(self, ewm_ns: float | None) -> float:
        """The mean after these calls, from ``ewm_ns`` (None: the model had no calls)."""
        return self.decay * (self.first_ns if ewm_ns is None else ewm_ns) + self.add


def percentile(buckets: Mapping[int, int], q: float) -> float:
    """The ``q`` quantile (0 < q <= 1), in ns, of the durations counted in ``buckets``; 0.0 without calls.

    Interpolated linearly inside the bucket where it falls, as Prometheus' ``histogram_quantile``
    does (so the stats and a Grafana panel agree); beyond the last bound it is the last bound.
    Above zero whenever there were calls, and never smaller for a larger ``q``.
    """
    rank = q * sum(buckets.values())
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if count and seen + count >= rank > 0:
            if index >= len(BUCKET_BOUNDS_NS):
                return float(BUCKET_BOUNDS_NS[-1])
            lower = BUCKET_BOUNDS_NS[index - 1] if index else 0
            return lower + (BUCKET_BOUNDS_NS[index] - lower) * (rank - seen) / count
        seen += count
    return 0.0


def rate_per_second(slots: Mapping[int, int], now: float, since: float = 0.0) -> float:
    """Calls per second over the last minute (the current slot included), from ``slots``.

    The minute starts no earlier than ``since`` (when the model was uploaded: a model a few
    seconds old is not averaged over a whole minute), and is at least a second long.
    """
    first = slot_of(now) - RATE_SLOTS + 1
    calls = sum(n for slot, n in slots.items() if slot >= first)
    return calls / max(now - max(first * RATE_SLOT_SECONDS, since), 1.0)


class CallStatsBuffer:
    """One process's tallies for one store, by (model, incarnation, operation), and its failed calls."""

    def __init__(self, store):
        self._store = weakref.ref(store)
        self._tallies: dict[tuple[str, str, str], Tally] = {}
        self._errors: Counter = Counter()  # (route name, status) -> failed calls
        self._lock = threading.Lock()
        # One flush at a time: a reader's flush waits for the writer thread's, so it reads every call.
        self._writing = threading.Lock()

    def count(self, name: str, incarnation: str, operation: str, duration_ns: int) -> None:
        with self._lock:
            tally = self._tallies.get((name, incarnation, operation))
            if tally is None:
                tally = self._tallies[(name, incarnation, operation)] = Tally()
            tally.count(duration_ns, float(river_settings.STATS_EWM_ALPHA))

    def count_error(self, route: str, status: int) -> None:
        with self._lock:
            self._errors[(route, status)] += 1

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
            errors, self._errors = self._errors, Counter()
        if store is None:
            return
        if errors:
            try:
                store.record_errors(dict(errors))
            except Exception as error:  # noqa: BLE001 - as the tallies below
                if last:
                    return
                with self._lock:
                    self._errors.update(errors)
                logger.warning("Could not write the error counts yet: %s", error)
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
    _write_soon(buffer)


def count_error(store, route: str, status: int) -> None:
    """Count one call answered with an error ``status`` on the route named ``route`` (as :func:`count`)."""
    buffer = buffer_for(store)
    buffer.count_error(route, status)
    _write_soon(buffer)


def _write_soon(buffer: CallStatsBuffer) -> None:
    if not river_settings.STATS_FLUSH_SECONDS:
        buffer.flush()
        return
    _start_writer()


def flush(store=None) -> None:
    """Write this process's tallies now (for ``store``, else for every store)."""
    buffers = [buffer_for(store)] if store is not None else list(_buffers.values())
    for buffer in buffers:
        buffer.flush()


def close(store) -> None:
    """Write what this process holds for ``store`` one last time and forget it: the store is no longer used
    (the settings changed), so counts it refuses now would wait for it, and warn, for ever."""
    buffer = _buffers.pop(store, None)
    if buffer is not None:
        buffer.flush(last=True)


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
