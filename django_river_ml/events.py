"""The one place events are emitted.

Every state change and prediction calls :func:`emit`. Receivers of
:data:`river_event` (live streams, metrics exporters, a site's own code) get
``event`` (``"learn"``, ``"predict"``, ``"label"``, ``"upload"``, ``"delete"``, ``"access"``, and the
lifecycle's ``"version"``, ``"rollback"``, ``"challenger"``, ``"withdraw"``, ``"promote"``, ``"drift"``),
``data`` (plain JSON values) and ``incarnation`` (which upload of the model it is
about: a model deleted and uploaded again under its name is another incarnation). A receiver that raises never fails or slows
the request: the error is logged and counted in :data:`dropped`. With no
receiver connected, emitting costs nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

from django_river_ml.describe import to_jsonable

logger = logging.getLogger(__name__)

river_event = Signal()
#: Sent with every ``drift`` event, for server code that acts on drifts only (``data`` as the event's).
drift_detected = Signal()

#: Events a receiver failed to handle, in this process.
dropped = 0


def emit(event: str, data: dict[str, Any], incarnation: str | None = None) -> None:
    global dropped
    if event == "drift" and drift_detected.has_listeners():
        for receiver, result in drift_detected.send_robust(sender=None, model=data.get("model"), data=to_jsonable(data),
                                                           incarnation=incarnation):
            if isinstance(result, Exception):
                dropped += 1
                logger.warning("Drift signal dropped by %r: %r", receiver, result)
    if not river_event.has_listeners():
        return
    for receiver, result in river_event.send_robust(sender=None, event=event, data=to_jsonable(data),
                                                    incarnation=incarnation):
        if isinstance(result, Exception):
            dropped += 1
            logger.warning("Event %s dropped by %r: %r", event, receiver, result)
