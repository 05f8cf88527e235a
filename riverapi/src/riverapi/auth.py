"""The token flow: a 401 challenge names a realm; a token is fetched there with HTTP Basic.

A protected route answers ``401`` with
``Www-Authenticate: Bearer realm="<base>/<prefix>/auth/token",service="<base>"``. The client
GETs the realm with HTTP Basic ``RIVER_ML_USER:RIVER_ML_TOKEN``, reads ``{"token": ...}`` from
the JSON answer and retries the call with ``Authorization: Bearer <token>``.

The realm is followed only on the server's own origin (scheme, host and port): a challenge
naming another host, port or scheme would otherwise collect the user's API token, possibly in
clear over http.

``parse_auth_header`` and its ``Realm`` / ``Service`` / ``Scope`` attributes are kept from
riverapi 0.0.21.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from riverapi.exceptions import AuthenticationError, ServerUnavailable, error_for_response

__all__ = ["AuthChallenge", "authHeader", "origin", "parse_auth_header", "request_token"]

# name=value pairs where value is a quoted string (with backslash escapes) or a bare token.
_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


@dataclass
class AuthChallenge:
    """One ``Www-Authenticate`` challenge: its scheme (``Bearer``) and parameters."""

    scheme: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    # The capitalised names riverapi 0.0.21's authHeader had.
    Realm = realm
    Service = service
    Scope = scope


#: The name riverapi 0.0.21 gave the parsed header.
authHeader = AuthChallenge


def parse_auth_header(auth_header_raw: str) -> AuthChallenge:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (parameter names are case-insensitive).

    >>> h = parse_auth_header('Bearer realm="http://h/api/auth/token",service="http://h"')
    >>> h.scheme, h.Realm, h.Service, h.Scope
    ('Bearer', 'http://h/api/auth/token', 'http://h', None)
    """
    raw = (auth_header_raw or "").strip()
    scheme = ""
    first = re.match(r"([A-Za-z][A-Za-z0-9_-]*)(\s+|$)", raw)
    if first and "=" not in raw[: first.end()]:
        scheme, raw = first.group(1), raw[first.end():]
    params = {}
    for name, quoted, bare in _PARAM.findall(raw):
        params[name.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted or not bare else bare
    return AuthChallenge(scheme=scheme, params=params)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an http(s) URL, default ports filled in; None for anything else.

    >>> origin("HTTP://Example.com/api") == origin("http://example.com:80/")
    True
    >>> origin("https://example.com/"), origin("ftp://example.com/")
    (('https', 'example.com', 443), None)
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            return None
        return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:  # a port out of range or not a number
        return None


def request_token(session: requests.Session, challenge: AuthChallenge, user: str, token: str,
                  timeout: Any = None, headers: dict[str, str] | None = None, server: str | None = None) -> str:
    """GET the challenge's realm with HTTP Basic ``user:token`` and return the token it answers.

    ``server`` is the URL the challenged call went to: the realm must be on its origin, or no
    credential is sent. Raises :class:`AuthenticationError` when the realm is elsewhere, refuses
    the credentials or answers no token, :class:`ServerUnavailable` when it cannot be reached.
    """
    realm = challenge.realm
    if not realm or origin(realm) is None:
        raise AuthenticationError(f"The server's authentication challenge names no usable realm: {realm!r}.")
    if server is not None and origin(realm) != origin(server):
        raise AuthenticationError(
            f"The server's authentication challenge names a realm on another origin ({realm}) than the server's "
            f"({server}); the API token is sent only to the server itself. On the server, set DOMAIN_URL to "
            "the URL clients use.")
    request_headers = dict(headers or {})
    request_headers["Accept"] = "application/json"
    if challenge.service:
        request_headers["service"] = challenge.service  # as riverapi 0.0.21 sends it
    params = {"scope": challenge.scope} if challenge.scope else None
    try:
        # A redirect is followed (an old server's /auth/token -> /auth/token/), but requests drops the
        # credentials when it leads to another host, port or scheme.
        response = session.get(realm, auth=(user, token), headers=request_headers, params=params, timeout=timeout)
    except requests.RequestException as error:
        raise ServerUnavailable(f"Cannot get a token from {realm}: {error}") from error
    if response.status_code >= 400:
        error = error_for_response(response)
        if response.status_code in (401, 403):
            raise AuthenticationError(f"{realm} refused the credentials of {user!r}: {error.message}",
                                      status_code=response.status_code, response=response)
        raise error
    try:
        answer = response.json()
    except ValueError:
        answer = None
    issued = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(issued, str) or not issued:
        raise AuthenticationError(f"{realm} answered no token.", status_code=response.status_code, response=response)
    return issued
