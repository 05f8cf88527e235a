"""Storage backends and the per-process store they are reached through.

>>> from django_river_ml.storage import get_store
>>> get_store().backend_name in ("shelve", "redis")
True
"""

from __future__ import annotations

import os
import threading

from django.core.signals import setting_changed

from django_river_ml.settings import river_settings
from django_river_ml.storage.base import Access, CallStats, LogEntry, ModelInfo, Store

__all__ = ["Access", "CallStats", "LogEntry", "ModelInfo", "Store", "get_store", "make_store", "reset_store"]

_lock = threading.Lock()
_store: Store | None = None
_store_pid: int | None = None


def make_store() -> Store:
    """Build the store the current settings name."""
    backend = river_settings.STORAGE_BACKEND
    if backend == "redis":
        from django_river_ml.storage.redis import RedisStore

        return RedisStore.from_settings(river_settings)
    if backend == "shelve":
        from django_river_ml.storage.shelve import ShelveStore

        return ShelveStore(river_settings.shelve_path)
    raise ValueError(f"Unknown STORAGE_BACKEND {backend!r}")


def get_store() -> Store:
    """The process-wide store (made again after a fork or a settings change)."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        with _lock:
            if _store is None or _store_pid != os.getpid():
                _store, _store_pid = make_store(), os.getpid()
    return _store


def reset_store() -> None:
    """Forget the store (and, through the registry, every replica built on it)."""
    global _store
    with _lock:
        if _store is not None and _store_pid == os.getpid():
            _store.close()
        _store = None


def _on_setting_changed(*, setting: str, **kwargs) -> None:
    if setting in ("DJANGO_RIVER_ML", "BASE_DIR"):
        reset_store()


setting_changed.connect(_on_setting_changed)
