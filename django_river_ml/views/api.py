"""The River API views: validate with a serializer, call DjangoClient, shape the answer."""

from __future__ import annotations

import io
import json
from functools import cached_property

from django.conf import settings as django_settings
from django.http import HttpResponse
from rest_framework import parsers
from rest_framework.exceptions import NotAuthenticated, NotFound, ParseError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
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


def body_limit(parser_context) -> tuple[int | None, str]:
    """The most bytes a body may have, and the setting that says so (the routes that take batches have their own)."""
    view = (parser_context or {}).get("view")
    if getattr(view, "takes_batches", False):
        return river_settings.MAX_BATCH_BYTES, "MAX_BATCH_BYTES"
    return django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE, "DATA_UPLOAD_MAX_MEMORY_SIZE"


class LimitedBodyMixin:
    """Refuse bodies over the limit (DRF's parsers read the stream past Django's own check)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit, setting = body_limit(parser_context)
        data = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes ({setting}).")
        return super().parse(io.BytesIO(data), media_type, parser_context)


class JSONParser(LimitedBodyMixin, parsers.JSONParser):
    """DRF's JSON parser; a body nested too deeply for Python's parser is a 400, not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None


class FormParser(LimitedBodyMixin, parsers.FormParser):
    pass


class NDJSONParser(parsers.BaseParser):
    """``application/x-ndjson``: one example per line, read line by line, ``{"examples": [...]}``.

    Reading stops at the first line past MAX_BATCH_ROWS or MAX_BATCH_BYTES, so a long upload
    costs at most one batch of memory. Blank lines are skipped; NaN and Infinity are refused.
    """

    media_type = "application/x-ndjson"

    def parse(self, stream, media_type=None, parser_context=None):
        byte_limit, setting = body_limit(parser_context)
        row_limit = river_settings.MAX_BATCH_ROWS
        examples, read = [], 0
        for number, line in enumerate(stream or (), start=1):
            read += len(line)
            if byte_limit is not None and read > byte_limit:
                raise PayloadTooLarge(f"The body is larger than the limit of {byte_limit} bytes ({setting}).")
            if not line.strip():
                continue
            if len(examples) == row_limit:
                raise PayloadTooLarge(f"The body has more than {row_limit} examples (MAX_BATCH_ROWS).")
            try:
                examples.append(json.loads(line, parse_constant=_refuse_constant))
            except (ValueError, RecursionError) as error:
                raise ParseError(f"Line {number} is not JSON: {error}") from None
        return {"examples": examples}


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")

class RiverAPIView(APIView):
    """Base view: JSON in and out, our error format, independent of the site's DRF defaults."""

    authentication_classes = [BearerJWTAuthentication, APITokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticatedWhereRequired]
    throttle_classes = [RouteRateThrottle]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser, FormParser]
    schema = openapi.RiverAutoSchema()

    @cached_property
    def client(self) -> DjangoClient:
        """Full access with authentication disabled; else the caller (on a route left open, every model is public)."""
        if river_settings.DISABLE_AUTHENTICATION:
            return DjangoClient()
        return DjangoClient(user=self.request.user, public=not authentication_required(self.request))

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
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def model_name(self) -> str:
        """The model named by ``?model=``, else by the body (JSON or form, any method)."""
        name = self.request.query_params.get("model")
        if name is None:
            return self.validated(serializers.ModelNameSerializer)["model"]
        return name


class ServiceInfoView(RiverAPIView):
    @openapi.service_info
    def get(self, request):
        return Response(self.client.info(baseurl=request.build_absolute_uri("/")))


class AuthTokenView(RiverAPIView):
    """``GET /auth/token/`` with HTTP Basic ``user:<API token>``: a short-lived JWT."""

    authentication_classes = [BasicAPITokenAuthentication]
    permission_classes = [IsAuthenticated]

    def get_authenticators(self):
        return [authenticator() for authenticator in self.authentication_classes]

    @openapi.auth_token
    def get(self, request):
        return Response(issue_jwt(request.user))


class BatchMixin:
    """Routes that take one example, or a batch: ``{"model", "examples": [...]}``, or NDJSON lines with ``?model=``."""

    takes_batches = True
    parser_classes = [JSONParser, FormParser, NDJSONParser]

    def batch(self) -> dict | None:
        """The validated batch, if the request is one."""
        data = self.request.data
        if not (hasattr(data, "get") and "examples" in data):
            return None
        body = {"model": self.request.query_params.get("model", data.get("model")), "examples": data["examples"]}
        extra = set(data) - {"model", "examples"}
        if extra:
            raise InvalidInput(f"A batch has only model and examples; {sorted(extra)[0]!r} belongs in each example.")
        return self.validated(serializers.BatchSerializer, body)


class LearnView(BatchMixin, RiverAPIView):
    @openapi.learn
    def post(self, request):
        batch = self.batch()
        if batch is not None:
            return Response(self.client.learn_many(batch["model"], batch["examples"]), status=201)
        data = self.validated(serializers.LearnSerializer)
        result = self.client.learn(
            data["model"], data.get("features"), ground_truth=data.get("ground_truth"),
            identifier=data.get("identifier"),
        )
        return Response(result, status=201)


class PredictView(BatchMixin, RiverAPIView):
    @openapi.predict
    def post(self, request):
        batch = self.batch()
        if batch is not None:
            return Response(self.client.predict_many(batch["model"], batch["examples"]))
        data = self.validated(serializers.PredictSerializer)
        result = self.client.predict(data["model"], data["features"], identifier=data.get("identifier"))
        return Response(result, status=201 if "identifier" in result else 200)


class LabelView(RiverAPIView):
    @openapi.label
    def post(self, request):
        data = self.validated(serializers.LabelSerializer)
        return Response(self.client.label(data["label"], data["identifier"], data["model"]))


class MetricsView(RiverAPIView):
    @openapi.metrics
    def get(self, request):
        return Response(self.client.metrics(self.model_name()))


class StatsView(RiverAPIView):
    @openapi.stats
    def get(self, request):
        return Response(self.client.stats(self.model_name()))


class ModelsView(RiverAPIView):
    @openapi.models
    def get(self, request):
        return Response({"models": self.client.models()})


class ModelView(RiverAPIView):
    """``/model/<name>/``: GET the JSON view, DELETE it; POST uploads with ``<name>`` as the flavor."""

    @openapi.get_model
    def get(self, request, name):
        return Response(self.client.get_model_json(name))

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
        return Response(self.client.get_access(name))

    @openapi.set_access
    def put(self, request, name):
        data = self.validated(serializers.AccessSerializer)
        return Response(self.client.set_access(name, owner=data.get("owner"), users=data.get("users"),
                                               groups=data.get("groups")))


class ModelDownloadView(RiverAPIView):
    @openapi.download_model
    def get(self, request, name):
        data = self.client.download_model(name)
        response = HttpResponse(data, content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{name}.pkl"'
        return response


def upload(view: RiverAPIView, flavor: str, model_name: str | None) -> Response:
    """A pickled model as the raw body, or a JSON model spec (``Content-Type: application/json``)."""
    if view.request.content_type.split(";")[0].strip() == "application/json":
        name = view.client.upload_spec(view.request.data, flavor, model_name=model_name)
    else:
        body = read_body(view.request, river_settings.MAX_UPLOAD_SIZE)
        name = view.client.upload_model(body, flavor, model_name=model_name)
    return Response({"name": name}, status=201)


def deleted(view: RiverAPIView, name: str) -> Response:
    view.client.delete_model(name)
    return Response({"message": f"Deleted model {name}.", "model": name})


def read_body(request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (Django's in-memory limit does not apply)."""
    django_request = request._request
    try:
        declared = int(django_request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("The Content-Length header is not a number.") from None
    if declared > limit:
        raise PayloadTooLarge(f"The body is {declared} bytes; the limit is {limit}.")
    data = django_request.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")
    return data
