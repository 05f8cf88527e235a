"""Storage backends and the per-process store they are reached through.

``STORAGE_BACKEND`` names a built-in store (``"shelve"``, ``"redis"``) or gives the dotted
path of a :class:`Store` subclass of your own (``"mysite.stores.AuditedStore"``). It is made
by its ``from_settings(river_settings)`` classmethod: by default without arguments, the shelve
store (and its subclasses) with the store file's path, the Redis store with its connection settings.

>>> from django_river_ml.storage import get_store
>>> get_store().backend_name in ("shelve", "redis")
True
"""

from __future__ import annotations

import inspect
import os
import threading

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_river_ml import callstats
from django_river_ml.settings import STORAGE_BACKENDS, river_settings
from django_river_ml.storage.base import Access, CallStats, LogEntry, ModelInfo, Store

__all__ = ["Access", "CallStats", "LogEntry", "ModelInfo", "Store", "backend_problem", "get_store", "make_store",
           "reset_store", "store_class"]

#: The built-in stores, by the names STORAGE_BACKEND may give (``settings.STORAGE_BACKENDS``).
BUILT_IN = {"shelve": "django_river_ml.storage.shelve.ShelveStore", "redis": "django_river_ml.storage.redis.RedisStore"}
assert set(BUILT_IN) == set(STORAGE_BACKENDS)

_lock = threading.Lock()
_store: Store | None = None
_store_pid: int | None = None


def store_class(backend: object) -> type[Store]:
    """The Store subclass ``backend`` (a STORAGE_BACKEND value) names; ValueError says why not."""
    if not isinstance(backend, str) or (backend not in BUILT_IN and "." not in backend):
        raise ValueError(f"STORAGE_BACKEND is {backend!r}; choose one of {', '.join(STORAGE_BACKENDS)}, or give "
                         "the dotted path of a django_river_ml.storage.Store subclass ('mysite.stores.MyStore')")
    try:
        found = import_string(BUILT_IN.get(backend, backend))
    except ImportError as error:
        raise ValueError(f"STORAGE_BACKEND is {backend!r}, which cannot be imported: {error}") from None
    if not (isinstance(found, type) and issubclass(found, Store)):
        raise ValueError(f"STORAGE_BACKEND is {backend!r}, which is not a subclass of django_river_ml.storage.Store")
    if inspect.isabstract(found):
        missing = ", ".join(sorted(found.__abstractmethods__))
        raise ValueError(f"STORAGE_BACKEND is {backend!r}, which does not implement {missing}")
    if not isinstance(getattr(found, "backend_name", None), str):
        raise ValueError(f"STORAGE_BACKEND is {backend!r}, which has no backend_name (the name service info "
                         "gives the store)")
    return found


def backend_problem(backend: object) -> str | None:
    """Why ``backend`` cannot be the STORAGE_BACKEND, or None (for the settings' system check)."""
    try:
        store_class(backend)
    except ValueError as error:
        return str(error)
    return None


def make_store() -> Store:
    """Build the store the current settings name."""
    return store_class(river_settings.STORAGE_BACKEND).from_settings(river_settings)


def get_store() -> Store:
    """The process-wide store (made again after a fork or a settings change)."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        with _lock:
            if _store is None or _store_pid != os.getpid():
                _store, _store_pid = make_store(), os.getpid()
    return _store


def reset_store() -> None:
    """Forget the store (and, through the registry, every replica built on it), once it has the counts held for it."""
    global _store
    with _lock:
        if _store is not None and _store_pid == os.getpid():
            callstats.close(_store)
            _store.close()
        _store = None


def _on_setting_changed(*, setting: str, **kwargs) -> None:
    if setting in ("DJANGO_RIVER_ML", "BASE_DIR"):
        reset_store()


setting_changed.connect(_on_setting_changed)
