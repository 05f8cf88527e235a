"""Property-based fuzzing of the River API from its own OpenAPI schema, on both storage backends.

Schemathesis loads ``/api/schema/`` from the WSGI application (in-process, no server), then
sends every operation examples from the schema, the coverage phase's boundary and invalid
values, and random requests (valid and invalid). Every answer must be no 5xx, and must conform
to the schema: a documented status code and content type, and a body that matches.

A model of every flavor exists while fuzzing (the regression one under the schema examples'
name), and valid generated model names are often swapped for theirs, so requests reach the
models' code, not only the 404 of an unknown model. The second test fuzzes with authentication
on: with a token the routes work as above, and schemathesis checks that without one (or with a
bad one) they refuse.

A fixed seed makes every run send the same requests; with MAX_EXAMPLES = 50 the file runs in
about half a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import AcceptedNegativeData, ServerError
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from django_river_ml.client import DjangoClient
from django_river_ml.schema import EXAMPLE_MODEL
from flavored_models import FLAVORS, make_model

# One model of every flavor; the regression one is the model the schema's examples name.
FUZZ_MODELS = {flavor: EXAMPLE_MODEL if flavor == "regression" else f"fuzz-{flavor}" for flavor in FLAVORS}
MAX_EXAMPLES = 50

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

CONFIG = SchemathesisConfig.from_dict({
    "seed": 20240601,  # the same requests every run (a failure can be replayed)
    "generation": {"mode": "all"},  # valid and invalid requests
})


def ensure_models(owner=None) -> None:
    """Every fuzz model exists (a fuzzed DELETE or upload may have removed or replaced one), ``owner``'s if given."""
    present = set(DjangoClient().models())
    for flavor, name in FUZZ_MODELS.items():
        if name not in present:
            DjangoClient(user=owner).upload_model(make_model(flavor), flavor, model_name=name)


@pytest.fixture(autouse=True)
def keep_database_connection():
    """Requests go straight to the WSGI application: like Django's test client, leave the test's connection be."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def load_schema(authentication: bool):
    """The schema as the fuzzed server serves it (its security section follows DISABLE_AUTHENTICATION)."""
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    with override_settings(DJANGO_RIVER_ML={"DISABLE_AUTHENTICATION": not authentication}):
        return schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), config=CONFIG)


schema = load_schema(authentication=False)  # as the ``backend`` fixture serves it
secured_schema = load_schema(authentication=True)
names = st.sampled_from(sorted(FUZZ_MODELS.values()))


# DRF's CharField takes a JSON number for a string and makes it one ({"identifier": 0} is "0"). The schema
# says string; the server's leniency (a client that sends a number keeps working) is not counted as
# accepting invalid data. Every other schema-violating request must be refused.
STRING_FIELDS = ("model", "identifier")


def relies_on_number_coercion(body) -> bool:
    return isinstance(body, dict) and any(
        isinstance(body.get(field), (int, float)) and not isinstance(body.get(field), bool) for field in STRING_FIELDS
    )


def streams_answer_501_under_wsgi(failure, case, response) -> bool:
    """This harness is WSGI: the stream routes check everything, then answer their documented 501
    (they stream under ASGI: tests/test_streams*.py). Every bad request still gets its 4xx."""
    return isinstance(failure, ServerError) and response.status_code == 501 and case.path.startswith("/api/stream/")


@secured_schema.hook
@schema.hook
def filter_failure(context, failure, case, response):
    if streams_answer_501_under_wsgi(failure, case, response):
        return False
    return not (isinstance(failure, AcceptedNegativeData) and relies_on_number_coercion(case.body))


def with_fuzz_model(case, name: str):
    """The case with its model name swapped for a fuzz model's, where the name is valid data anyway."""
    meta = case.meta
    if meta is None:
        return case
    if isinstance(case.body, dict) and "model" in case.body and not meta.is_negative_at(ParameterLocation.BODY):
        case.body = {**case.body, "model": name}
    if "model" in case.query and not meta.is_negative_at(ParameterLocation.QUERY):
        case.query = {**case.query, "model": name}
    # In POST /model/{name}/ the name is a flavor.
    if "name" in case.path_parameters and case.method.upper() != "POST" \
            and not meta.is_negative_at(ParameterLocation.PATH):
        case.path_parameters = {**case.path_parameters, "name": name}
    return case


@secured_schema.hook
@schema.hook
def flatmap_case(context, case):
    return st.one_of(st.just(case), names.map(lambda name: with_fuzz_model(case, name)))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_answers_as_documented(case, backend):
    ensure_models()
    case.call_and_validate(checks=CHECKS)


@pytest.fixture
def jwt_header(backend, settings, django_user_model):
    """Authentication on (the default), and a user's short-lived token."""
    from django_river_ml.auth import issue_jwt

    # Schemathesis sends many bad credentials on purpose; the failed-authentication throttle (tested in
    # test_auth_hardening.py) would answer them 429 instead of the 401 this test checks.
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False,
                                "AUTH_FAILURE_RATE_LIMIT": None}
    user = django_user_model.objects.create_user("fuzzer")
    return {"Authorization": f"Bearer {issue_jwt(user)['token']}"}


@secured_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES // 3, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["shelve"], indirect=True)
def test_every_operation_answers_as_documented_with_authentication(case, backend, jwt_header, django_user_model):
    """With a token, as above; without one or with a bad one, the protected routes answer 401."""
    ensure_models(owner=django_user_model.objects.get(username="fuzzer"))
    # A case with invalid headers is sent as made (its Authorization may be the invalid part).
    headers = None if case.meta and case.meta.is_negative_at(ParameterLocation.HEADER) else jwt_header
    case.call_and_validate(headers=headers, checks=[*CHECKS, ignored_auth])
