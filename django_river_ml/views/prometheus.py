"""``GET /<PROMETHEUS_PATH>``: the Prometheus metrics of every model (docs/monitoring.md).

The scrape shows every model's name and numbers, whoever owns it, so it is not one of the API's
routes with their users and tokens: a scraper is let in by the settings alone. Until
``PROMETHEUS_TOKEN`` or ``PROMETHEUS_ALLOWED_ADDRESSES`` is set, every scrape is refused (403);
with both set, a scrape needs both. Client addresses are found as the rate limits find them
(``NUM_PROXIES``), and wrong tokens count against ``AUTH_FAILURE_RATE_LIMIT`` like wrong API tokens.
Refusals are the API's JSON errors, counted in ``river_ml_errors_total`` like the others.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.authentication import get_authorization_header

from django_river_ml import prometheus
from django_river_ml.exceptions import AccessDenied
from django_river_ml.settings import river_settings
from django_river_ml.throttling import FailedAuthenticationThrottle, client_address
from django_river_ml.views.api import RiverAPIView

#: The challenge of a 401: what a scraper must send.
CHALLENGE = 'Bearer realm="prometheus"'


def check_scraper(request) -> None:
    """Raise the refusal the settings give this request (403, 401 or 429); return if it may scrape."""
    token, networks = river_settings.PROMETHEUS_TOKEN, river_settings.prometheus_networks
    if token is None and not networks:
        raise AccessDenied("The Prometheus endpoint is closed: set PROMETHEUS_TOKEN or PROMETHEUS_ALLOWED_ADDRESSES "
                           "to open it (docs/monitoring.md).")
    if networks:
        address = client_address(request)
        if not any(ip in network for ip in _ip(address) for network in networks):
            raise AccessDenied(f"The client address {address} may not scrape (PROMETHEUS_ALLOWED_ADDRESSES).")
    if token is not None:
        check_token(request, token)


def _ip(address: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address (and the IPv4 one an IPv4-mapped IPv6 address stands for); none if it is not one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a proxy wrote something else
        return []
    mapped = getattr(ip, "ipv4_mapped", None)
    return [ip, mapped] if mapped else [ip]


def check_token(request, token: str) -> None:
    """``Authorization: Bearer <token>``, compared in constant time; wrong ones count as failed authentications."""
    parts = get_authorization_header(request).split()
    if not parts:
        raise exceptions.NotAuthenticated("Send the token: 'Authorization: Bearer <PROMETHEUS_TOKEN>'.")
    throttle = FailedAuthenticationThrottle()
    wait = throttle.seconds_blocked(request)
    if wait is not None:
        raise exceptions.Throttled(wait, detail="Too many failed authentications from this address.")
    if len(parts) != 2 or parts[0].lower() != b"bearer" or not hmac.compare_digest(parts[1], token.encode()):
        throttle.record_failure(request)
        raise exceptions.AuthenticationFailed("The token is not valid: send 'Authorization: Bearer "
                                              "<PROMETHEUS_TOKEN>'.")


class PrometheusView(RiverAPIView):
    """The scrape: Prometheus' text format (OpenMetrics when the scraper asks for it)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []
    http_method_names = ["get", "head"]
    schema = None  # not an operation of the River API

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)  # errors in JSON, whatever Accept says

    def get_authenticate_header(self, request):
        return CHALLENGE

    def get(self, request):
        check_scraper(request)
        body, content_type = prometheus.exposition(request.META.get("HTTP_ACCEPT", ""))
        response = HttpResponse(body, content_type=content_type)
        response["Cache-Control"] = "no-store"
        return response
