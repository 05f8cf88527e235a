"""django-eventstream's two extension points, filled with our event log and our access rules.

The app sets ``EVENTSTREAM_STORAGE_CLASS`` and ``EVENTSTREAM_CHANNELMANAGER_CLASS`` to these
classes when a site has not set them (see ``apps.py``; a site with its own must subclass ours,
which the system check tells).

Who may read a channel is decided as for the REST routes (:mod:`django_river_ml.access`): the
channels of all models (``events``, ``metrics``) to callers every model is open to (server
code, staff, DISABLE_AUTHENTICATION, or a stream route left open by ``AUTHENTICATED_VIEWS``);
a model's channels to those who may use that model. django-eventstream asks again at every
read from the event log; live events are not re-checked one by one, but when a model is
uploaded again or deleted, every open stream following it is checked again and ended
(``stream-error``, condition ``forbidden``) if its caller may no longer read it.
"""

from __future__ import annotations

import json
import logging

from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.storage import StorageBase
from django_eventstream.views import Listener, get_listener_manager

from django_river_ml.access import Caller
from django_river_ml.auth import route_requires_authentication
from django_river_ml.settings import river_settings
from django_river_ml.storage import get_store
from django_river_ml.streams import EVENTS, KINDS, channel, parse_channel
from django_river_ml.streams.eventlog import get_event_log

logger = logging.getLogger(__name__)

#: The route serving each kind of channel (its name decides whether it is open to everyone).
ROUTES = {EVENTS: "stream_events", "metrics": "stream_metrics"}
# Events after which the streams following a model are checked again.
ACCESS_CHANGES = frozenset({"upload", "delete"})


class EventStorage(StorageBase):
    """django-eventstream's storage, on our event log (ids per channel, shared by every worker)."""

    def append_event(self, channel, event_type, data):
        return get_event_log().append([(channel, event_type, data)])[0]

    def get_events(self, channel, last_id, limit=100):
        return get_event_log().read(channel, int(last_id), limit)

    def get_current_id(self, channel):
        return get_event_log().current_id(channel)


class ChannelManager(ChannelManagerBase):
    """Channels come from the stream view; reading them follows the API's access rules."""

    def get_channels_for_request(self, request, view_kwargs):
        return set(view_kwargs.get("channels", ()))

    def can_read_channel(self, user, channel):
        return may_read(user, channel)

    def is_channel_reliable(self, channel):
        return True


def stream_caller(user, kind: str) -> Caller:
    """Who reads a stream of ``kind``: full access with authentication off, else the user (None: anonymous)."""
    if river_settings.DISABLE_AUTHENTICATION:
        return Caller()
    return Caller(user=user if user is not None else _anonymous(),
                  public=not route_requires_authentication(ROUTES[kind]))


def may_read(user, name: str) -> bool:
    kind, model = parse_channel(name)
    if kind is None:
        return False
    caller = stream_caller(user, kind)
    if caller.unrestricted(public=True):
        return True
    if model is None:
        return False
    info = get_store().model_info(model)
    return info is not None and caller.may_use(info.access)


def channels_for(user, kind: str, models: list[str]) -> list[str]:
    """The channels a stream of ``kind`` follows: the named models', else every model the caller may read.

    A named model the caller may not read is missing (ModelNotFound, as on the REST routes).
    """
    from django_river_ml.client import DjangoClient
    from django_river_ml.exceptions import InvalidInput, ModelNotFound
    from django_river_ml.names import validate_name

    limit = river_settings.STREAM_MAX_MODELS
    models = list(dict.fromkeys(models))
    if len(models) > limit:
        raise InvalidInput(f"A stream follows at most {limit} models (STREAM_MAX_MODELS); {len(models)} were named.")
    store = get_store()
    for model in models:
        if store.model_info(validate_name(model)) is None or not may_read(user, channel(kind, model)):
            raise ModelNotFound(f"No model named {model!r}.")
    if models:
        return [channel(kind, model) for model in models]
    caller = stream_caller(user, kind)
    if caller.unrestricted(public=True):
        return [channel(kind)]
    readable = DjangoClient(user=caller.user, public=caller.public).models()
    if not readable:
        raise ModelNotFound("You may read no model yet: upload one (or have one shared with you), then connect again.")
    if len(readable) > limit:
        raise InvalidInput(f"You may read {len(readable)} models, more than one stream follows (STREAM_MAX_MODELS "
                           f"is {limit}): name the ones to follow with ?model=NAME.")
    return [channel(kind, model) for model in readable]


class StreamListener(Listener):
    """A stream's listener; ``readable`` streams follow the models their caller could read when they connected."""

    def __init__(self, kind: str, readable: bool):
        super().__init__()
        self.kind = kind
        self.readable = readable


def check_followers(event) -> None:
    """After an upload or delete of a model, end the open streams that may no longer read it, or may now.

    A stream following "every model I may read" (of a restricted caller, who follows a list of
    model channels) ends when a model it may read is uploaded, so that its client reconnects
    and follows that one too (``stream-error`` with condition ``models-changed``).
    """
    kind, model = parse_channel(event.channel)
    if event.type not in ACCESS_CHANGES:
        return
    if model is None:
        if event.type == "upload":
            _offer(json.loads(event.data).get("model"))
        return
    manager = get_listener_manager()
    for name in (channel(other, model) for other in KINDS):
        with manager.lock:
            user_ids = {listener.user_id for listener in manager.listeners_by_channel.get(name, ())}
        for user_id in user_ids:
            try:
                allowed = may_read(_user(user_id), name)
            except Exception as error:  # the store or the user table failed: keep the stream, say so
                logger.warning("Could not check access to %s for user %s: %s", name, user_id, error)
                continue
            if not allowed:
                manager.kick(user_id, name)


def _offer(model: str | None) -> None:
    manager = get_listener_manager()
    with manager.lock:
        listeners = [listener for group in manager.listeners_by_channel.values() for listener in group
                     if isinstance(listener, StreamListener) and listener.readable]
    for listener in set(listeners):
        name = channel(listener.kind, model)
        if model is None or name in listener.channels:
            continue
        try:
            allowed = may_read(_user(listener.user_id), name)
        except Exception as error:
            logger.warning("Could not check access to %s for user %s: %s", name, listener.user_id, error)
            continue
        if allowed:
            with manager.lock:
                listener.error = {"condition": "models-changed",
                                  "text": f"Model {model} is new to you: connect again to follow it too.",
                                  "extra": {"model": model}}
            listener.wake_threadsafe()


def _user(user_id):
    if user_id in (None, "anonymous"):
        return None
    from django.contrib.auth import get_user_model

    return get_user_model()._default_manager.filter(pk=user_id).first()


def _anonymous():
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()
