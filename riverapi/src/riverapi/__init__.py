"""Python client for River API servers (django-river-ml): online machine learning over HTTP.

>>> import riverapi
>>> riverapi.Client is riverapi.main.Client
True
"""

from riverapi.client import Client
from riverapi.exceptions import (
    AuthenticationError,
    BadRequest,
    NotFound,
    RiverAPIError,
    ServerError,
    ServerUnavailable,
)
from riverapi.streams import Event, EventStream
from riverapi.version import __version__

import riverapi.main  # noqa: E402,F401 - riverapi 0.0.21's module, kept importable as an attribute

__all__ = [
    "Client",
    "Event",
    "EventStream",
    "RiverAPIError",
    "BadRequest",
    "NotFound",
    "AuthenticationError",
    "ServerError",
    "ServerUnavailable",
    "__version__",
]
