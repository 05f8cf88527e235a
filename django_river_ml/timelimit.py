"""A time limit on one call into a model, in any thread.

A learn or predict runs in the request's thread (the main thread under a sync
gunicorn worker, a pool thread under ASGI or gthread), so ``SIGALRM`` cannot
be used. One watchdog thread per process keeps the deadlines; when one passes
it raises :class:`CallTimeout` in the late thread with
``PyThreadState_SetAsyncExc``, which takes effect at the next Python bytecode
— river models are Python, so a runaway ``learn_one`` stops within
microseconds. (A single long call into C, such as one huge numpy operation,
finishes first; uploads are tried under a timer before they are accepted.)

The exception is a ``BaseException``, so a model's ``except Exception``
cannot swallow it, and it can only surface inside the ``with`` block: leaving
the block cancels a pending one.

>>> with time_limit(1.0):
...     total = sum(range(1000))
>>> import time
>>> with time_limit(0.05):
...     while True:
...         time.sleep(0.001)
Traceback (most recent call last):
...
django_river_ml.timelimit.CallTimeout
"""

from __future__ import annotations

import ctypes
import threading
import time
from contextlib import contextmanager

_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class CallTimeout(BaseException):
    """A call into a model ran past its time limit."""


class _Watchdog:
    """Deadlines by thread; polls while calls are running, sleeps when none ran for a while.

    Arming a deadline costs a dict write under a lock: the watchdog is woken only
    when it was idle, so a busy server pays no thread switch per call.
    """

    POLL_SECONDS = 0.02
    IDLE_AFTER_SECONDS = 1.0

    def __init__(self):
        self._deadlines: dict[int, float] = {}  # thread id -> deadline
        self._fired: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = True
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> int:
        ident = threading.get_ident()
        with self._lock:
            self._deadlines[ident] = time.monotonic() + seconds
            self._fired.discard(ident)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="river-ml-time-limit", daemon=True)
                self._thread.start()
            elif self._idle:
                self._wake.notify()
        return ident

    def disarm(self, ident: int) -> None:
        with self._lock:
            self._deadlines.pop(ident, None)
            fired = ident in self._fired
            self._fired.discard(ident)
        if fired:  # raised too late to matter, or not yet delivered: make sure it never surfaces outside
            _clear_async_exc(ident, None)

    def _run(self) -> None:
        last_busy = time.monotonic()
        with self._lock:
            while True:
                now = time.monotonic()
                if self._deadlines:
                    last_busy = now
                for ident, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[ident]
                        self._fired.add(ident)
                        _set_async_exc(ident, CallTimeout)
                self._idle = not self._deadlines and now - last_busy > self.IDLE_AFTER_SECONDS
                self._wake.wait(None if self._idle else self.POLL_SECONDS)


_watchdog = _Watchdog()


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`CallTimeout` in this thread if the block runs longer than ``seconds`` (None/0: no limit)."""
    if not seconds or seconds <= 0:
        yield
        return
    ident = _watchdog.arm(seconds)
    try:
        yield
    finally:
        _watchdog.disarm(ident)


class TimeLimitExceeded(Exception):
    """What callers catch: the call was stopped at its limit (an ordinary exception, unlike CallTimeout)."""


def run_limited(seconds: float | None, function, *args):
    """``function(*args)`` under a time limit; :class:`TimeLimitExceeded` when it runs too long."""
    if not seconds or seconds <= 0:
        return function(*args)
    try:
        ident = _watchdog.arm(seconds)
        try:
            return function(*args)
        finally:
            _watchdog.disarm(ident)
    except CallTimeout:  # from the call, or delivered just as it ended (inside the finally)
        raise TimeLimitExceeded(f"it ran longer than CALL_TIME_LIMIT_SECONDS ({seconds:g} s) allows") from None
