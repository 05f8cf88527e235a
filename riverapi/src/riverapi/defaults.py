"""Defaults shared by the client and the command line (``riverapi.defaults.baseurl`` as in 0.0.21)."""

from __future__ import annotations

import os

#: The server the client talks to when none is given.
baseurl = "http://127.0.0.1:8000"

#: Routes live under ``/<prefix>/`` on the server.
prefix = "api"

#: Seconds to wait for a connection and for each read of an answer.
timeout = 30.0

#: How often idempotent calls (GET, DELETE, HEAD) are retried on connection errors and 502/503/504.
retries = 3

#: Back-off between retries: ``backoff_factor * 2 ** (retry - 1)`` seconds.
backoff_factor = 0.5

#: Environment variables holding the user and the API token for the token flow.
USER_ENV = "RIVER_ML_USER"
TOKEN_ENV = "RIVER_ML_TOKEN"

#: Environment variable the client and the command line read the server's URL from.
URL_ENV = "RIVER_API_URL"


def default_baseurl() -> str:
    """The server when none is given: ``$RIVER_API_URL``, else :data:`baseurl`."""
    return os.environ.get(URL_ENV) or baseurl
