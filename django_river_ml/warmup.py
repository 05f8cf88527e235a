"""A starting worker gets ready for its first requests before they come.

Left alone, the first request a worker serves pays for what nothing did yet: importing
the river modules its model is made of (when the model is unpickled), Django's URL
resolver, DRF's first use, and loading the model's replica from its snapshot.
:func:`start` does that in a background thread as the worker starts (the ASGI handler of
:mod:`django_river_ml.asgi` calls it): it loads the ``WARM_MODELS`` models called most
recently, within ``REPLICA_MEMORY_BYTES``. A request that comes first just loads its
model itself, as before.

Then it moves everything loaded so far out of the garbage collector's way
(:func:`django_river_ml.heap.settle`): Django, river and those models are long-lived.
"""

from __future__ import annotations

import logging
import threading

from django_river_ml import heap
from django_river_ml.settings import river_settings

logger = logging.getLogger(__name__)

_started = False
_lock = threading.Lock()


def warm(limit: int | None = None) -> list[str]:
    """Load the replicas of the models called most recently; the names of those loaded."""
    from django.urls import get_resolver

    from django_river_ml.state import get_registry

    get_resolver().url_patterns  # noqa: B018 - builds the resolver once
    registry = get_registry()
    limit = river_settings.WARM_MODELS if limit is None else limit
    loaded = []
    if limit:
        for name in registry.store.recent_models(limit):
            try:
                replica = registry.replica(name)
            except Exception as error:  # noqa: BLE001 - deleted meanwhile, or the store is down: serve cold
                logger.info("Did not warm model %s: %s", name, error)
                continue
            loaded.append(replica.name)
    heap.settle()
    return loaded


def start() -> None:
    """Warm this process once, in the background."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_warm_quietly, name="river-ml-warm-up", daemon=True).start()


def _warm_quietly() -> None:
    try:
        names = warm()
        logger.info("Warmed %d models: %s", len(names), ", ".join(names))
    except Exception:  # noqa: BLE001 - a cold start is only slower
        logger.exception("Warming up failed")
