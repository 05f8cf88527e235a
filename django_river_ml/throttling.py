"""Rate limits: calls per route (``VIEW_RATE_LIMIT``) and failed authentications per client.

Both count in the Django cache ``THROTTLE_CACHE`` names. Django's default cache
(``LocMemCache``) lives in one process: with several worker processes each counts
alone, so point ``THROTTLE_CACHE`` at a cache every process shares (Redis, or a
file-based cache on one host).

A client is its ``REMOTE_ADDR``. ``X-Forwarded-For`` is written by whoever sends the
request, so it is read only when ``NUM_PROXIES`` says that many proxies of yours
stand in front of the server (DRF's own ``get_ident`` trusts it by default: a client
rotating the header would get a fresh allowance each time).
"""

from __future__ import annotations

import re

from django.core.cache import caches
from rest_framework import throttling

from django_river_ml.settings import river_settings

KEY_PREFIX = "django_river_ml"


def client_address(request) -> str:
    """The address a client is counted by: ``REMOTE_ADDR``, or the ``X-Forwarded-For`` entry
    added by the farthest of ``NUM_PROXIES`` trusted proxies."""
    address = request.META.get("REMOTE_ADDR") or ""
    proxies = river_settings.NUM_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if proxies and forwarded:
        entries = [entry.strip() for entry in forwarded.split(",")]
        address = entries[-min(proxies, len(entries))]
    # A cache key, whatever a proxy wrote: no spaces or control characters, bounded length.
    return re.sub(r"[^0-9A-Za-z:._-]", "_", address)[:64] or "unknown"


def throttle_cache():
    return caches[river_settings.THROTTLE_CACHE]


class RouteRateThrottle(throttling.SimpleRateThrottle):
    """``VIEW_RATE_LIMIT``: one rate for every route (``"100/minute"``) or one per route name.

    Counts per user when authenticated, else per client address.
    """

    def __init__(self):  # the rate depends on the route, known only in allow_request
        pass

    def allow_request(self, request, view):
        from django_river_ml.auth import route_name

        limit = river_settings.VIEW_RATE_LIMIT
        self.scope = route_name(request) or "river"
        self.rate = limit.get(self.scope) if isinstance(limit, dict) else limit
        if not self.rate:
            return True
        self.cache = throttle_cache()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        ident = request.user.pk if request.user and request.user.is_authenticated else client_address(request)
        return self.cache_format % {"scope": f"{KEY_PREFIX}:{self.scope}", "ident": ident}


class FailedAuthenticationThrottle(throttling.SimpleRateThrottle):
    """``AUTH_FAILURE_RATE_LIMIT``: failed authentications a client address may make.

    Over the limit, the client's credentials are not even looked at until the oldest
    counted failure is older than the period: guessing goes no faster, right or wrong.
    """

    scope = "auth_failures"

    def __init__(self):
        self.rate = river_settings.AUTH_FAILURE_RATE_LIMIT
        self.cache = throttle_cache()
        if self.rate:
            self.num_requests, self.duration = self.parse_rate(self.rate)
            self.num_requests = max(self.num_requests, 1)

    def get_cache_key(self, request, view=None):
        return self.cache_format % {"scope": f"{KEY_PREFIX}:{self.scope}", "ident": client_address(request)}

    def _load(self, request) -> str:
        key = self.get_cache_key(request)
        self.now = self.timer()
        self.history = [moment for moment in self.cache.get(key, []) if moment > self.now - self.duration]
        return key

    def seconds_blocked(self, request) -> float | None:
        """Seconds until the client may try again, or None when it may now."""
        if not self.rate:
            return None
        self._load(request)
        if len(self.history) < self.num_requests:
            return None
        # Newest first: the client may try again once the num_requests-th newest failure is out of the period.
        return max(self.duration - (self.now - self.history[self.num_requests - 1]), 1.0)

    def record_failure(self, request) -> None:
        if not self.rate:
            return
        key = self._load(request)
        self.history = [self.now, *self.history][: self.num_requests]
        self.cache.set(key, self.history, self.duration)
