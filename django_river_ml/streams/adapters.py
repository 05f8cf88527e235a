"""django-eventstream's two extension points, filled with our event log and our access rules.

The app sets ``EVENTSTREAM_STORAGE_CLASS`` and ``EVENTSTREAM_CHANNELMANAGER_CLASS`` to these
classes when a site has not set them (see ``apps.py``; a site with its own must subclass ours,
which the system check tells).

Who may read a channel is decided as for the REST routes (:mod:`django_river_ml.access`): the
channels of all models (``events``, ``metrics``) to callers every model is open to (server
code, staff, DISABLE_AUTHENTICATION, or a stream route left open by ``AUTHENTICATED_VIEWS``);
a model's channels to those who may use that model. Access is checked again at every read
from the event log (:func:`read_events`); live events are not re-checked one by one, but when a
model is uploaded again, deleted, or its access changes (an ``access`` event), every open stream
following it is checked again and ended (``stream-error``, condition ``forbidden``) if its
caller may no longer read it; streams also check again by themselves every
``ACCESS_RECHECK_SECONDS`` (:mod:`~django_river_ml.streams.sse`).

A model's channel serves the events of the model's current incarnation only: each read looks
the model up once, for its access and its incarnation together, and the stream skips the
events of any other (:data:`ANY`: the channels of all models, which serve every event).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.eventstream import EventPermissionError
from django_eventstream.storage import EventDoesNotExist, StorageBase
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
ACCESS_CHANGES = frozenset({"upload", "delete", "access"})
# Events after which restricted streams following "every model I may read" are offered a model.
OFFERS = frozenset({"upload", "access"})
#: What a channel of all models follows: every incarnation of every model.
ANY = "*"
# Most events, and bytes of event data, one read of the event log brings for one stream (over its channels).
READ_EVENTS = 100
READ_BYTES = 1024 * 1024


class EventStorage(StorageBase):
    """django-eventstream's storage, on our event log (ids per channel, shared by every worker)."""

    def append_event(self, channel, event_type, data):
        # django-eventstream's send_event: about the model's incarnation of now (there is no other to go by).
        following = access(None, channel)[1]
        incarnation = following if following not in (None, ANY) else ""
        return get_event_log().append([(channel, event_type, data, incarnation)])[0]

    def get_events(self, channel, last_id, limit=100):
        following = access(None, channel)[1]  # only the current incarnation's events of a model's channel
        return [event for event in get_event_log().read(channel, int(last_id), limit) if serves(following, event)]

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


def access(user, name: str) -> tuple[bool, str | None]:
    """Whether ``user`` may read channel ``name``, and the incarnation it follows, from one look at the model.

    The incarnation is :data:`ANY` for a channel of all models, None for a model that is gone.
    """
    kind, model = parse_channel(name)
    if kind is None:
        return False, None
    caller = stream_caller(user, kind)
    if model is None:
        return caller.unrestricted(public=True), ANY
    info = get_store().model_info(model)
    incarnation = info.incarnation if info is not None else None
    if caller.unrestricted(public=True):
        return True, incarnation
    return info is not None and caller.may_use(info.access), incarnation


def may_read(user, name: str) -> bool:
    return access(user, name)[0]


def serves(following: str | None, event) -> bool:
    """Whether a channel following incarnation ``following`` sends ``event``."""
    return following == ANY or (following is not None and getattr(event, "incarnation", "") == following)


@dataclass
class Read:
    """What one read of the event log brought for a stream (django-eventstream's EventResponse, and more)."""

    items: dict = field(default_factory=dict)  # channel: events after its last id, of every incarnation
    last_ids: dict = field(default_factory=dict)  # channel: its current id, for channels without a last id
    reset: set = field(default_factory=set)  # channels whose missed events are no longer kept
    more: set = field(default_factory=set)  # channels with more events to read
    following: dict = field(default_factory=dict)  # channel: the incarnation it serves (see access)


def check_access(user, channels) -> tuple[list[str], dict]:
    """The channels ``user`` may no longer read, and the incarnation each follows."""
    denied, following = [], {}
    for name in channels:
        allowed, following[name] = access(user, name)
        if not allowed:
            denied.append(name)
    return denied, following


def read_events(event_request, limit: int = READ_EVENTS, max_bytes: int = READ_BYTES) -> Read:
    """What ``event_request``'s channels hold after their last ids: at most about ``limit`` events and
    ``max_bytes`` of data, shared by its channels (each gets one event at least).

    Raises EventPermissionError if the caller may no longer read some channel. The access and the
    incarnation of each channel come from the same look at its model: a stream serves a model's
    events only to a caller who may read that incarnation.
    """
    from django_river_ml.streams.publisher import MAX_EVENT_BYTES

    denied, following = check_access(event_request.user, event_request.channels)
    if denied:
        raise EventPermissionError(f"Permission denied to channels: {', '.join(denied)}", channels=denied)
    read = Read(following=following)
    count = len(event_request.channels) or 1
    per_channel, bytes_per_channel = max(limit // count, 1), max(max_bytes // count, MAX_EVENT_BYTES)
    log = get_event_log()
    for name in event_request.channels:
        last_id = event_request.channel_last_ids.get(name)
        if last_id is None:
            read.last_ids[name] = log.current_id(name)
            continue
        try:
            read.items[name], more = log.read_page(name, int(last_id), per_channel, bytes_per_channel)
        except EventDoesNotExist as error:
            read.reset.add(name)
            read.last_ids[name] = int(error.current_id)
            continue
        if more:
            read.more.add(name)
    return read


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
    """After an upload, delete or access change of a model, end the open streams that may no longer read it,
    or may now.

    A stream following "every model I may read" (of a restricted caller, who follows a list of
    model channels) ends when a model it may read is uploaded or shared with it, so that its
    client reconnects and follows that one too (``stream-error`` with condition ``models-changed``).
    """
    kind, model = parse_channel(event.channel)
    if event.type not in ACCESS_CHANGES:
        return
    if model is None:
        if event.type in OFFERS:
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
