"""Every error the API answers is JSON ``{"message": ...}`` (and, about an example of a batch, its ``row``),
as :class:`django_river_ml.serializers.ErrorSerializer` declares it."""

from __future__ import annotations

import logging

import redis
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from django_river_ml import callstats
from django_river_ml.exceptions import RiverMLError, StorageUnavailable
from django_river_ml.serializers import ErrorSerializer, render
from django_river_ml.storage import get_store

logger = logging.getLogger(__name__)


def flatten_detail(detail) -> str:
    """DRF's nested error details as one sentence: ``field: problem; field: problem``."""
    if isinstance(detail, dict):
        parts = []
        for field, problems in detail.items():
            text = flatten_detail(problems)
            parts.append(text if field in ("non_field_errors", "detail") else f"{field}: {text}")
        return "; ".join(parts)
    if isinstance(detail, (list, tuple)):
        return " ".join(flatten_detail(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    """DRF exception handler for the River API views; every error answered is counted (``river_ml_errors_total``)."""
    response = answer(exc, context)
    count_failed_call(context.get("request"), response.status_code)
    return response


def count_failed_call(request, status: int) -> None:
    """Count a failed call of the request's route, in the store with the call stats; never fails the answer."""
    match = getattr(request, "resolver_match", None)
    try:
        callstats.count_error(get_store(), (match.url_name if match else None) or "unknown", status)
    except Exception:  # noqa: BLE001 - a count is not worth a second error
        logger.exception("Could not count an error answer")


def answer(exc, context) -> Response:
    """The error answer for ``exc``: a RiverMLError's status and message, DRF's and Django's errors alike."""
    if isinstance(exc, redis.exceptions.RedisError):  # Redis used outside the store: a cache, a throttle
        logger.warning("Redis failed in %s: %r", context.get("view").__class__.__name__, exc)
        exc = StorageUnavailable("The server's Redis cannot be reached or did not answer in time.")
    if isinstance(exc, RiverMLError):
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        body = {"message": exc.message} if exc.row is None else {"message": exc.message, "row": exc.row}
        return error(body, exc.status_code, headers)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, SuspiciousOperation):  # Django's limits on request data (too many fields, too big)
        status = 413 if isinstance(exc, RequestDataTooBig) else 400
        return error({"message": str(exc) or "The request is malformed."}, status)
    if isinstance(exc, drf_exceptions.APIException):
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        return error({"message": flatten_detail(exc.detail)}, exc.status_code, headers)
    logger.exception("Unexpected error in %s", context.get("view").__class__.__name__)
    return error({"message": "Internal server error; the details are in the server log."}, 500)


def error(body: dict, status: int, headers: dict | None = None) -> Response:
    return Response(render(ErrorSerializer, body), status=status, headers=headers)
