"""Typed errors raised by the client: catch exactly what you expect, never ``SystemExit``.

Every error carries the server's own ``message`` (from its JSON ``{"message": ...}`` answer),
the HTTP ``status_code`` (``None`` when no answer came back) and the ``requests`` ``response``
(``None`` likewise)::

    RiverAPIError
    ├── BadRequest           400, 405, 409, 413, 415, 422, ... (the request was refused)
    ├── NotFound             404 (unknown model, identifier or route)
    ├── AuthenticationError  401, 403 (no or wrong credentials, token refused)
    ├── ServerError          500 and other 5xx the server answered with
    └── ServerUnavailable    no answer: connection refused or dropped, timeout,
                             502/503/504 after the retries
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RiverAPIError",
    "BadRequest",
    "NotFound",
    "AuthenticationError",
    "ServerError",
    "ServerUnavailable",
    "error_for_response",
    "message_of",
]


class RiverAPIError(Exception):
    """Base class of every error the client raises about a call."""

    def __init__(self, message: str, status_code: int | None = None, response: Any = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.response = response

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.status_code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r})"


class BadRequest(RiverAPIError):
    """The server refused the request as it was (bad payload, bad flavor, too large, ...)."""


class NotFound(RiverAPIError):
    """No such model, identifier or route on the server."""


class AuthenticationError(RiverAPIError):
    """Credentials are missing or were refused (401 / 403)."""


class ServerError(RiverAPIError):
    """The server answered with an internal error (5xx other than 502/503/504)."""


class ServerUnavailable(RiverAPIError):
    """No usable answer: the server could not be reached, dropped the connection, timed out,
    or kept answering 502/503/504 after the retries."""


UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


def message_of(response: Any) -> str:
    """The server's message in an error answer: ``{"message"}``, ``{"errors": [{"message"}]}``,
    ``{"detail"}``, else the start of the body, else the HTTP reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("message"), str) and body["message"]:
            return body["message"]
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = [str(e.get("message") or e.get("detail") or e) if isinstance(e, dict) else str(e) for e in errors]
            return "; ".join(parts)
        if isinstance(body.get("detail"), str):
            return body["detail"]
    text = (getattr(response, "text", "") or "").strip()
    content_type = response.headers.get("Content-Type", "") if getattr(response, "headers", None) else ""
    if text and "html" not in content_type.lower():
        first_line = text.splitlines()[0]
        return first_line if len(first_line) <= 200 else first_line[:197] + "..."
    reason = getattr(response, "reason", "") or "no reason given"
    return f"{reason} ({response.request.method} {response.url})" if getattr(response, "request", None) else reason


def error_class_for(status_code: int) -> type[RiverAPIError]:
    if status_code in (401, 403):
        return AuthenticationError
    if status_code == 404:
        return NotFound
    if status_code in UNAVAILABLE_STATUSES:
        return ServerUnavailable
    if 400 <= status_code < 500:
        return BadRequest
    if status_code >= 500:
        return ServerError
    return RiverAPIError


def error_for_response(response: Any) -> RiverAPIError:
    """The typed error for an unsuccessful answer."""
    status = response.status_code
    return error_class_for(status)(message_of(response), status_code=status, response=response)
