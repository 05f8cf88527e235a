"""Typed errors raised by :class:`~django_river_ml.client.DjangoClient`.

Each carries the HTTP status the REST API answers with, so views never
translate errors by hand and server code can catch exactly what it expects.
"""

from __future__ import annotations


class RiverMLError(Exception):
    """Base class: ``message`` is safe to show to the caller."""

    status_code = 400
    #: In a batch, the index of the example it is about (None otherwise).
    row: int | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def at_row(self, row: int) -> RiverMLError:
        """The same error, about example ``row`` of a batch."""
        self.row, self.message = row, f"Example {row}: {self.message}"
        self.args = (self.message,)
        return self


class InvalidInput(RiverMLError):
    """The request is missing something or has a value of the wrong kind."""


class UnknownFlavor(InvalidInput):
    """The flavor named in an upload does not exist."""


class InvalidModel(InvalidInput):
    """An uploaded model cannot be used: unsafe, unreadable, or unfit for its flavor."""


class ModelNotFound(RiverMLError):
    """No model of that name."""

    status_code = 404


class VersionNotFound(ModelNotFound):
    """The model has no version of that number (never, or no longer kept: see VERSIONS_KEPT)."""


class ChallengerNotFound(ModelNotFound):
    """The model has no challenger of that name."""


class IdentifierNotFound(RiverMLError):
    """No pending prediction with that identifier (never made, expired, or already labelled)."""

    status_code = 404


class AuthenticationRequired(RiverMLError):
    """Only a signed-in caller may do this (upload, delete, share), even on a route the site left open."""

    status_code = 401


class AccessDenied(RiverMLError):
    """The caller may use the model but not do this with it (only its owner or staff may share it)."""

    status_code = 403


class Conflict(RiverMLError):
    """The request conflicts with what the store holds now."""

    status_code = 409


class IdentifierConflict(Conflict):
    """A prediction is already pending under that identifier; it is never replaced."""


class QuotaExceeded(Conflict):
    """The owner already owns MAX_MODELS_PER_USER models."""


class ModelFailed(RiverMLError):
    """The model raised while learning or predicting on this input; its state is unchanged."""


class PayloadTooLarge(RiverMLError):
    """The request body is larger than the configured limit."""

    status_code = 413


class ModelTooLarge(RiverMLError):
    """The model is larger, as stored, than MAX_MODEL_BYTES."""

    status_code = 413


class ModelBusy(RiverMLError):
    """This worker could not catch up with the model's log in time (an entry ran long): retry shortly."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


class ModelFull(RiverMLError):
    """The model has grown past MAX_MODEL_BYTES while learning: it predicts, but learns no more."""

    status_code = 409


class StorageUnavailable(RiverMLError):
    """The store (Redis or the embedded file) cannot be reached or did not answer in time.

    The operation may have happened all the same (a write that timed out can have
    landed), so callers retry, after ``retry_after`` seconds (the Retry-After header).
    """

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class NotSupported(RiverMLError):
    """The store does not do this (a site's own backend that records no idempotency keys)."""

    status_code = 501


class StreamsUnavailable(RiverMLError):
    """Live streams need an ASGI server; under WSGI a stream would hold a worker forever."""

    status_code = 501
