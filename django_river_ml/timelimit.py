"""Time and memory limits on one call into a model, in any thread.

A learn or predict runs in the request's thread (the main thread under a sync
gunicorn worker, a pool thread under ASGI or gthread), so ``SIGALRM`` cannot
be used. One watchdog thread per process keeps the deadlines and memory
ceilings; when one is passed it raises :class:`CallTimeout` (or
:class:`CallOverMemory`) in that thread with ``PyThreadState_SetAsyncExc``,
which takes effect at the next Python bytecode — river models are Python, so a
runaway ``learn_one`` stops within microseconds. (A single long call into C,
such as one huge numpy operation, finishes first.)

Those exceptions are ``BaseException`` s, so a model's ``except Exception``
cannot swallow them; :func:`run_limited`, the one way in, turns them into
ordinary exceptions and cancels one still pending when the call ends.

>>> run_limited(1.0, sum, range(1000))
499500
>>> import time
>>> def forever():
...     while True:
...         time.sleep(0.001)
>>> run_limited(0.05, forever)
Traceback (most recent call last):
...
django_river_ml.timelimit.TimeLimitExceeded: it ran longer than CALL_TIME_LIMIT_SECONDS (0.05 s) allows
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class CallTimeout(BaseException):
    """A call into a model ran past its time limit."""


class CallOverMemory(BaseException):
    """A call into a model grew the process past its memory limit."""


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux), or None where it cannot be read cheaply."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


try:
    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE_SIZE = 4096


class _Watchdog:
    """Deadlines by thread; polls while calls are running, sleeps when none ran for a while.

    Arming a deadline costs a dict write under a lock: the watchdog is woken only
    when it was idle, so a busy server pays no thread switch per call.
    """

    POLL_SECONDS = 0.02
    IDLE_AFTER_SECONDS = 1.0

    def __init__(self):
        self._deadlines: dict[int, tuple[float, float]] = {}  # thread id -> (deadline, memory ceiling)
        self._fired: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = True
        self._thread: threading.Thread | None = None
        self._resident: int | None = None
        self._resident_at = float("-inf")

    def arm(self, seconds: float | None, memory_bytes: int | None = None) -> int:
        ident = threading.get_ident()
        deadline = time.monotonic() + seconds if seconds and seconds > 0 else float("inf")
        ceiling = float("inf")
        if memory_bytes and memory_bytes > 0:
            # The watchdog's reading, taken every POLL_SECONDS while calls run (reading /proc costs ~20 µs,
            # more than the call it guards); a fresh one when it is over a second old.
            resident = self._resident
            if resident is None or time.monotonic() - self._resident_at > 1.0:
                resident = self._resident = resident_bytes()
                self._resident_at = time.monotonic()
            ceiling = resident + memory_bytes if resident is not None else ceiling
        with self._lock:
            self._deadlines[ident] = (deadline, ceiling)
            self._fired.discard(ident)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="river-ml-call-limits", daemon=True)
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
                resident = None
                if any(ceiling != float("inf") for _, ceiling in self._deadlines.values()):
                    resident = self._resident = resident_bytes()
                    self._resident_at = now
                for ident, (deadline, ceiling) in list(self._deadlines.items()):
                    if deadline <= now or (resident is not None and resident > ceiling):
                        del self._deadlines[ident]
                        self._fired.add(ident)
                        _set_async_exc(ident, CallTimeout if deadline <= now else CallOverMemory)
                self._idle = not self._deadlines and now - last_busy > self.IDLE_AFTER_SECONDS
                self._wake.wait(None if self._idle else self.POLL_SECONDS)


_watchdog = _Watchdog()


class CallLimitExceeded(Exception):
    """What callers catch: a call into a model was stopped at one of its limits."""


class TimeLimitExceeded(CallLimitExceeded):
    """The call ran longer than its time limit."""


class MemoryLimitExceeded(CallLimitExceeded):
    """The call grew the process by more than its memory limit."""


class ModelCrashed(Exception):
    """The model raised a BaseException that is not Python's own: a Rust panic (pyo3's PanicException)."""


def run_limited(seconds: float | None, function, *args, memory_bytes: int | None = None):
    """Call into model code: under a time and a memory limit, with whatever it raises as an ordinary exception.

    :class:`TimeLimitExceeded` when it runs too long, :class:`MemoryLimitExceeded` when the process
    grows by more than ``memory_bytes`` meanwhile (resident memory, read by the watchdog every
    20 ms, Linux only); :class:`ModelCrashed` for a BaseException such as a Rust panic, which
    ``except Exception`` would let through to a bare 500.
    """
    try:
        if not (seconds and seconds > 0) and not (memory_bytes and memory_bytes > 0):
            return function(*args)
        ident = _watchdog.arm(seconds, memory_bytes)
        try:
            return function(*args)
        finally:
            _watchdog.disarm(ident)
    except CallTimeout:  # from the call, or delivered just as it ended (inside the finally)
        raise TimeLimitExceeded(f"it ran longer than CALL_TIME_LIMIT_SECONDS ({seconds:g} s) allows") from None
    except CallOverMemory:
        raise MemoryLimitExceeded(
            f"it used more memory than CALL_MEMORY_LIMIT_BYTES ({memory_bytes}) allows") from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception:
        raise
    except BaseException as error:  # noqa: BLE001 - a panic in a compiled extension
        raise ModelCrashed(f"{type(error).__name__}: {error}") from None
