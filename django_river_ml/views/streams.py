"""``GET /stream/events/`` and ``GET /stream/metrics/``: Server-Sent Events, through django-eventstream.

The view authenticates like every API route, picks the channels (``?model=NAME``, repeatable,
else every model the caller may read), checks ``Last-Event-ID`` (ids of ASCII digits, at most
18), and answers with the stream (:mod:`django_river_ml.streams.sse`, on django-eventstream's
parts), which replays what the client missed from the event log and then sends live events. A
stream opened with a JWT ends when the token would no longer be accepted. Errors before the
stream starts are JSON, like the rest of the API.
"""

from __future__ import annotations

import re

from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django_eventstream.eventrequest import EventRequest
from django_eventstream.utils import add_default_headers
from rest_framework.renderers import BaseRenderer, JSONRenderer

from django_river_ml import schema as openapi
from django_river_ml.auth import JWT_LEEWAY_SECONDS
from django_river_ml.exceptions import InvalidInput, StreamsUnavailable
from django_river_ml.settings import river_settings
from django_river_ml.streams import EVENTS, METRICS, channel
from django_river_ml.streams.adapters import StreamListener, channels_for
from django_river_ml.streams.eventlog import get_event_log
from django_river_ml.streams.fanout import ensure_fanout
from django_river_ml.streams.sse import event_stream
from django_river_ml.views.api import RiverAPIView

# django-eventstream's own parameters for a GRIP proxy: never taken from a client here.
PROXY_PARAMETERS = ("es-meta", "recover", "link")
# An event id: what a channel's INTEGER ids (SQLite's are 64-bit) can be, in ASCII digits only.
EVENT_ID = re.compile(r"[0-9]{1,18}")


class EventStreamRenderer(BaseRenderer):
    """Lets ``Accept: text/event-stream`` through content negotiation (the stream is not rendered)."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):  # pragma: no cover - never used
        raise NotImplementedError


class StreamView(RiverAPIView):
    kind = EVENTS
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def get(self, request):
        for name in PROXY_PARAMETERS:
            if name in request.query_params:
                raise InvalidInput(f"Unknown parameter {name!r}.")
        user = None if river_settings.DISABLE_AUTHENTICATION else request.user
        channels = channels_for(user, self.kind, request.query_params.getlist("model"))
        try:
            event_request = EventRequest(request, channel_limit=len(channels), view_kwargs={"channels": channels})
        except EventRequest.Error as error:
            raise InvalidInput(f"Cannot resume this stream: {error}") from None
        for name, last_id in event_request.channel_last_ids.items():
            if not EVENT_ID.fullmatch(str(last_id)):
                shown = last_id if len(str(last_id)) <= 40 else f"{str(last_id)[:40]}..."
                raise InvalidInput(f"Last-Event-ID names event {shown!r} of {name}, which is not an event id "
                                   "(1 to 18 digits 0-9).")
        if not isinstance(request._request, ASGIRequest):
            raise StreamsUnavailable("Live streams need an ASGI server (for example gunicorn with uvicorn workers, "
                                     "as `make serve` runs); this one runs WSGI.")
        ensure_fanout(get_event_log(), float(river_settings.STREAM_POLL_SECONDS))
        readable = not request.query_params.getlist("model") and channels != [channel(self.kind)]
        listener = StreamListener(self.kind, readable)
        listener.user_id = event_request.user.pk if event_request.user else "anonymous"
        listener.channels = event_request.channels
        response = StreamingHttpResponse(event_stream(event_request, listener, expires=token_expiry(request)),
                                         content_type="text/event-stream")
        add_default_headers(response, request=request)
        return response

    def finalize_response(self, request, response, *args, **kwargs):
        # Errors are JSON whatever the client accepts (an EventSource accepts only the stream).
        if getattr(response, "data", None) is not None:
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


def token_expiry(request) -> float | None:
    """When the JWT the request came with stops being accepted (Unix time), None for other credentials.

    :class:`~django_river_ml.auth.PlainBearerJWTAuthentication` leaves the token's checked claims
    in ``request.auth``; API tokens (a Token instance) and sessions (None) do not expire.
    """
    claims = request.auth
    if isinstance(claims, dict) and isinstance(claims.get("exp"), (int, float)):
        return float(claims["exp"]) + JWT_LEEWAY_SECONDS
    return None


class EventStreamView(StreamView):
    """Events as they happen: ``learn``, ``predict``, ``label``, ``upload``, ``delete``."""

    kind = EVENTS

    @openapi.stream_events
    def get(self, request):
        return super().get(request)


class MetricStreamView(StreamView):
    """Each model's metrics and call stats after they change (``metrics`` events, coalesced)."""

    kind = METRICS

    @openapi.stream_metrics
    def get(self, request):
        return super().get(request)
