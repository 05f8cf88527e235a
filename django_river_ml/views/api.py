"""The River API views: validate with a serializer, call DjangoClient, render the answer through a serializer.

Every body is declared in :mod:`django_river_ml.serializers` (requests and answers); the
decorators of :mod:`django_river_ml.schema` only say which answers which status. This module
also reads the bodies: JSON, forms and NDJSON, within their limits (a batch may be up to
MAX_BATCH_BYTES, any other body up to DATA_UPLOAD_MAX_MEMORY_SIZE), with or without a leading
UTF-8 byte order mark, and sent with a Content-Length or in chunks (which only an ASGI server can
read: under WSGI, a chunked body without a Content-Length is a 411).
"""

from __future__ import annotations

import codecs
import io
import json
from functools import cached_property

import orjson

from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse
from rest_framework import parsers
from rest_framework.exceptions import APIException, NotAuthenticated, NotFound, ParseError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from django_river_ml import schema as openapi
from django_river_ml import serializers
from django_river_ml.auth import (
    APITokenAuthentication,
    BasicAPITokenAuthentication,
    BearerJWTAuthentication,
    IsAuthenticatedWhereRequired,
    RouteRateThrottle,
    SessionAuthentication,
    authentication_required,
    issue_jwt,
)
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import AuthenticationRequired, InvalidInput, PayloadTooLarge
from django_river_ml.settings import river_settings
from django_river_ml.views.errors import exception_handler

JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
                   bool: "a boolean", type(None): "null"}


# Reading bodies -----------------------------------------------------------------------------------


class LengthRequired(APIException):
    status_code = 411
    default_detail = (
        "The body came in chunks (Transfer-Encoding: chunked) without a Content-Length, which this server (WSGI) "
        "cannot read: send it with a Content-Length."
    )
    default_code = "length_required"


def sent_in_chunks(django_request) -> bool:
    """Whether the body comes with ``Transfer-Encoding: chunked`` and no Content-Length."""
    meta = django_request.META
    return not meta.get("CONTENT_LENGTH") and "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()


def unsized_body(django_request):
    """The stream of a body that came without a Content-Length (in chunks), or None if there is none.

    An ASGI server has received the body whole, whatever its framing; under WSGI, Django reads
    no further than the Content-Length, so a chunked body cannot be read: 411.
    """
    if isinstance(django_request, ASGIRequest):
        return io.BytesIO(django_request.body) if django_request._read_started else django_request
    if sent_in_chunks(django_request):
        raise LengthRequired()
    return None


class RiverRequest(Request):
    """DRF's request, but a body without a Content-Length is read (DRF takes it for no body)."""

    def _load_stream(self):
        super()._load_stream()
        if self._stream is None and not self._request.META.get("CONTENT_LENGTH"):
            self._stream = unsized_body(self._request)


def too_big() -> RequestDataTooBig:
    return RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")  # Django's own words


def batch_too_big(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than the limit of {limit} bytes (MAX_BATCH_BYTES).")


def is_batch(data) -> bool:
    return isinstance(data, dict) and "examples" in data


def declared_length(parser_context) -> int:
    request = (parser_context or {}).get("request")
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
    except ValueError:
        return 0


_drf_json = parsers.JSONParser()


class JSONParser(parsers.BaseParser):
    """JSON, as DRF's parser reads it (NaN and Infinity refused), but within the River API's limits.

    A body may have DATA_UPLOAD_MAX_MEMORY_SIZE bytes, a batch (``{"model", "examples"}``, on the
    routes that take them) MAX_BATCH_BYTES: DRF's own parser would hold a batch to Django's limit.
    A leading UTF-8 byte order mark is skipped (as in NDJSON).
    """

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        single = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        view = (parser_context or {}).get("view")
        batch = river_settings.MAX_BATCH_BYTES if getattr(view, "takes_batches", False) else None
        limit = single if batch is None or single is None else max(single, batch)

        def over_limit():
            return batch_too_big(batch) if limit == batch and limit != single else too_big()

        if limit is not None and declared_length(parser_context) > limit:
            raise over_limit()
        data = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise over_limit()
        if not data:  # a body without a Content-Length, and nothing in it: as a Content-Length of 0
            return {}
        over_single = single is not None and len(data) > single  # only a batch may be larger
        data = data.removeprefix(codecs.BOM_UTF8)
        try:
            value = fast_json(data)
            if value is NOT_READ:
                value = _drf_json.parse(io.BytesIO(data), media_type, parser_context)
        except RecursionError:
            if over_single:
                raise too_big() from None
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
        except ParseError:
            if over_single:
                raise too_big() from None
            raise
        if over_single and not is_batch(value):
            raise too_big()
        if batch is not None and len(data) > batch and is_batch(value):
            raise batch_too_big(batch)
        return value


class NDJSONParser(parsers.BaseParser):
    """``application/x-ndjson``: one example per line, read line by line, ``{"examples": [...]}``.

    Reading stops at the first line past MAX_BATCH_ROWS or MAX_BATCH_BYTES, so a long upload
    costs at most one batch of memory. Blank lines are skipped; NaN and Infinity are refused; a
    leading UTF-8 byte order mark is skipped (as in JSON).
    """

    media_type = "application/x-ndjson"

    def parse(self, stream, media_type=None, parser_context=None):
        byte_limit = river_settings.MAX_BATCH_BYTES
        row_limit = river_settings.MAX_BATCH_ROWS
        if declared_length(parser_context) > byte_limit:
            raise batch_too_big(byte_limit)
        examples, read = [], 0
        for number, line in enumerate(stream or (), start=1):
            read += len(line)
            if read > byte_limit:
                raise batch_too_big(byte_limit)
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if not line.strip():
                continue
            if len(examples) == row_limit:
                raise PayloadTooLarge(f"The body has more than {row_limit} examples (MAX_BATCH_ROWS).")
            try:
                example = fast_json(line)
                examples.append(json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
                                if example is NOT_READ else example)
            except (ValueError, RecursionError) as error:
                raise ParseError(f"Line {number} is not JSON: {error}") from None
        return {"examples": examples} if read else {}


#: What :func:`fast_json` answers for a body it leaves to Python's json module.
NOT_READ = object()
# 19 digits in a row: maybe an integer past 64 bits, which orjson reads as a float where Python's json reads an
# int. Found by turning every digit into 0 and looking for 19 zeros (a tenth of the time of a regular expression).
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


def fast_json(data: bytes):
    """``data`` as Python's json module reads it (strict: NaN and Infinity refused), read by orjson (a
    third of the CPU on a batch); NOT_READ for what orjson would read otherwise (an integer past 64 bits)
    or refuses: the json module then reads it, or says why it cannot."""
    if data.translate(_DIGITS_AS_ZEROS).find(_LONG_DIGITS) >= 0:
        return NOT_READ
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return NOT_READ


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def read_body(request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (Django's in-memory limit does not apply)."""
    django_request = request._request
    try:
        declared = int(django_request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("The Content-Length header is not a number.") from None
    if declared > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; the limit is {limit}.")
    stream = django_request if declared else unsized_body(django_request)
    data = stream.read(limit + 1) if stream is not None else b""
    if len(data) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")
    return data


# Views ---------------------------------------------------------------------------------------------


class RiverAPIView(APIView):
    """Base view: JSON in and out, our error format, independent of the site's DRF defaults."""

    authentication_classes = [BearerJWTAuthentication, APITokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticatedWhereRequired]
    throttle_classes = [RouteRateThrottle]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser, parsers.FormParser]  # Django's own limits hold forms
    schema = openapi.RiverAutoSchema()

    @cached_property
    def client(self) -> DjangoClient:
        """Full access with authentication disabled; else the caller (on a route left open, every model is public)."""
        if river_settings.DISABLE_AUTHENTICATION:
            return DjangoClient()
        return DjangoClient(user=self.request.user, public=not authentication_required(self.request))

    def initialize_request(self, request, *args, **kwargs):
        return RiverRequest(request, parsers=self.get_parsers(), authenticators=self.get_authenticators(),
                            negotiator=self.get_content_negotiator(), parser_context=self.get_parser_context(request))

    def get_exception_handler(self):
        return exception_handler

    def handle_exception(self, exc):
        if isinstance(exc, AuthenticationRequired):  # DRF adds the WWW-Authenticate challenge clients follow
            exc = NotAuthenticated(exc.message)
        return super().handle_exception(exc)

    def get_authenticators(self):
        # With authentication off, no credential is even looked at (no user database needed).
        return [] if river_settings.DISABLE_AUTHENTICATION else super().get_authenticators()

    def validated(self, serializer_class, data=None) -> dict:
        data = self.request.data if data is None else data
        if not hasattr(data, "get"):
            kind = JSON_TYPE_NAMES.get(type(data), type(data).__name__)
            raise InvalidInput(f"The request body must be a JSON object of fields, not {kind}.")
        return serializers.validate(serializer_class, data)

    def idempotency_key(self, data: dict) -> str | None:
        """The learn's idempotency key: the ``Idempotency-Key`` header or the body's ``idempotency_key`` (DjangoClient
        checks it)."""
        header, field = self.request.headers.get(serializers.IDEMPOTENCY_HEADER), data.get("idempotency_key")
        if header is not None and field is not None and header != field:
            raise InvalidInput(f"The {serializers.IDEMPOTENCY_HEADER} header and the body's idempotency_key differ; "
                               "send one key.")
        return header if field is None else field

    def model_name(self) -> str:
        """The model named by ``?model=``, else by the body (JSON or form, any method)."""
        name = self.request.query_params.get("model")
        if name is None:
            return self.validated(serializers.ModelNameSerializer)["model"]
        return name

    @staticmethod
    def answer(serializer_class, result, status: int = 200) -> Response:
        """What DjangoClient answered, rendered as ``serializer_class`` declares it."""
        return Response(serializers.render(serializer_class, result), status=status)


class ServiceInfoView(RiverAPIView):
    @openapi.service_info
    def get(self, request):
        return self.answer(serializers.ServiceInfoSerializer, self.client.info(baseurl=request.build_absolute_uri("/")))


class AuthTokenView(RiverAPIView):
    """``GET /auth/token/`` with HTTP Basic ``user:<API token>``: a short-lived JWT."""

    authentication_classes = [BasicAPITokenAuthentication]
    permission_classes = [IsAuthenticated]

    def get_authenticators(self):
        return [authenticator() for authenticator in self.authentication_classes]

    @openapi.auth_token
    def get(self, request):
        return self.answer(serializers.TokenSerializer, issue_jwt(request.user))


class BatchMixin:
    """Routes that take one example, or a batch: ``{"model", "examples": [...]}``, or NDJSON lines with ``?model=``."""

    takes_batches = True
    parser_classes = [JSONParser, parsers.FormParser, NDJSONParser]
    batch_serializer: type  # the route's batch request (a serializer)
    batch_fields = ("model", "examples")  # what a batch has besides its examples' fields

    def batch(self) -> dict | None:
        """The validated batch, if the request is one."""
        data = self.request.data
        if not (hasattr(data, "get") and "examples" in data):
            return None
        body = {field: data[field] for field in self.batch_fields if field in data}
        body["model"] = self.request.query_params.get("model", data.get("model"))
        extra = set(data) - set(self.batch_fields)
        if extra:
            fields = f"{', '.join(self.batch_fields[:-1])} and {self.batch_fields[-1]}"
            raise InvalidInput(f"A batch has only {fields}; {sorted(extra)[0]!r} belongs in each example.")
        return self.validated(self.batch_serializer, body)


class LearnView(BatchMixin, RiverAPIView):
    batch_serializer = serializers.LearnBatchSerializer
    batch_fields = ("model", "examples", "idempotency_key")

    @openapi.learn
    def post(self, request):
        batch = self.batch()
        if batch is not None:
            result = self.client.learn_many(batch["model"], batch["examples"],
                                            idempotency_key=self.idempotency_key(batch))
            return self.answer(serializers.LearnedBatchSerializer, result, status=201)
        data = self.validated(serializers.LearnSerializer)
        result = self.client.learn(data["model"], data.get("features"), ground_truth=data.get("ground_truth"),
                                   identifier=data.get("identifier"), idempotency_key=self.idempotency_key(data))
        return self.answer(serializers.LearnResultSerializer, result, status=201)


class PredictView(BatchMixin, RiverAPIView):
    batch_serializer = serializers.PredictBatchSerializer

    @openapi.predict
    def post(self, request):
        batch = self.batch()
        if batch is not None:
            return self.answer(serializers.PredictedBatchSerializer,
                               self.client.predict_many(batch["model"], batch["examples"]))
        data = self.validated(serializers.PredictSerializer)
        result = self.client.predict(data["model"], data["features"], identifier=data.get("identifier"))
        if "identifier" in result:
            return self.answer(serializers.IdentifiedPredictionSerializer, result, status=201)
        return self.answer(serializers.PredictionSerializer, result)


class LabelView(RiverAPIView):
    @openapi.label
    def post(self, request):
        data = self.validated(serializers.LabelSerializer)
        return self.answer(serializers.LabelResultSerializer,
                           self.client.label(data["label"], data["identifier"], data["model"],
                                             idempotency_key=self.idempotency_key(data)))


class MetricsView(RiverAPIView):
    @openapi.metrics
    def get(self, request):
        return self.answer(serializers.MetricsSerializer, self.client.metrics(self.model_name()))


class StatsView(RiverAPIView):
    @openapi.stats
    def get(self, request):
        return self.answer(serializers.StatsSerializer, self.client.stats(self.model_name()))


class ModelsView(RiverAPIView):
    @openapi.models
    def get(self, request):
        return self.answer(serializers.ModelListSerializer, {"models": self.client.models()})


class ModelView(RiverAPIView):
    """``/model/<name>/``: GET the JSON view, DELETE it; POST uploads with ``<name>`` as the flavor."""

    @openapi.get_model
    def get(self, request, name):
        return self.answer(serializers.ModelParametersSerializer, self.client.get_model_json(name))

    @openapi.upload_model
    def post(self, request, name):
        return upload(self, flavor=name, model_name=None)

    @openapi.delete_model
    def delete(self, request, name):
        return deleted(self, name)


class ModelDeleteView(RiverAPIView):
    """``DELETE /model/`` with the name in a form or JSON body, or ``?model=``."""

    @openapi.delete_model_by_body
    def delete(self, request):
        return deleted(self, self.model_name())


class ModelUploadView(RiverAPIView):
    @openapi.upload_named_model
    def post(self, request, flavor, name):
        return upload(self, flavor=flavor, model_name=name)


class NotFoundView(RiverAPIView):
    """Any other path under the prefix: a JSON 404, whatever the method."""

    schema = None  # not an operation of the API

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)  # JSON, whatever Accept says

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        message = f"No route {request.path}."
        if not request.path.endswith("/"):
            message += f" River API routes end with a slash: {request.path}/"
        raise NotFound(message)


class ModelAccessView(RiverAPIView):
    """``/model/access/<name>/``: who owns the model and whom it is shared with (its owner and staff)."""

    @openapi.get_access
    def get(self, request, name):
        return self.answer(serializers.AccessResultSerializer, self.client.get_access(name))

    @openapi.set_access
    def put(self, request, name):
        data = self.validated(serializers.AccessSerializer)
        result = self.client.set_access(name, owner=data.get("owner"), users=data.get("users"),
                                        groups=data.get("groups"))
        return self.answer(serializers.AccessResultSerializer, result)


class ModelDownloadView(RiverAPIView):
    @openapi.download_model
    def get(self, request, name):
        version = self.validated(serializers.DownloadQuerySerializer, request.query_params).get("version")
        data = self.client.download_model(name, version=version)
        response = HttpResponse(data, content_type="application/octet-stream")
        suffix = "" if version is None else f"-v{version}"
        response["Content-Disposition"] = f'attachment; filename="{name}{suffix}.pkl"'
        return response


def upload(view: RiverAPIView, flavor: str, model_name: str | None) -> Response:
    """A pickled model as the raw body, or a JSON model spec (``Content-Type: application/json``); the query's
    options (:class:`~django_river_ml.serializers.UploadOptionsSerializer`) make it a challenger, or choose its
    drift detection."""
    options = view.validated(serializers.UploadOptionsSerializer, view.request.query_params)
    if view.request.content_type.split(";")[0].strip() == "application/json":
        name = view.client.upload_spec(view.request.data, flavor, model_name=model_name, **options)
    else:
        body = read_body(view.request, river_settings.MAX_UPLOAD_SIZE)
        name = view.client.upload_model(body, flavor, model_name=model_name, **options)
    answer = {"name": name, **({"challenger_of": options["challenger_of"]} if "challenger_of" in options else {})}
    return view.answer(serializers.UploadedSerializer, answer, status=201)


def deleted(view: RiverAPIView, name: str) -> Response:
    view.client.delete_model(name)
    return view.answer(serializers.DeletedSerializer, {"message": f"Deleted model {name}.", "model": name})
