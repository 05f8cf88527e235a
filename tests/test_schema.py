"""The OpenAPI schema (/api/schema/) and its docs page (/api/docs/)."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
import schemathesis
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import URLPattern
from drf_spectacular.validation import validate_schema

from django_river_ml import schema, urls
from django_river_ml.flavors import FLAVORS
from django_river_ml.names import NAME_PATTERN
from django_river_ml.schema import EXAMPLE_MODEL
from django_river_ml.validation import MAX_IDENTIFIER_LENGTH

# Routes of the app that are not operations of the River API.
NOT_OPERATIONS = {"not_found", "schema", "docs", "dashboard"}


def river_operations() -> dict[str, set[str]]:
    """Path template -> methods, from the app's own routes (a slashless alias is not another operation)."""
    operations: dict[str, set[str]] = {}
    for pattern in urls.urlpatterns:
        if not isinstance(pattern, URLPattern) or pattern.name in NOT_OPERATIONS:
            continue
        route = str(pattern.pattern)
        if not route.endswith("/"):
            continue
        view = pattern.callback.view_class
        methods = {m for m in ("get", "post", "put", "patch", "delete") if hasattr(view, m)}
        operations["/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)] = methods
    return operations


@pytest.fixture
def open_api(settings):
    """Authentication off, as in the other API tests (the schema's security follows the setting)."""
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "DISABLE_AUTHENTICATION": True}


def get_schema(client, fmt: str = "json") -> dict:
    response = client.get(f"/api/schema/?format={fmt}")
    assert response.status_code == 200, response.content[:500]
    return json.loads(response.content) if fmt == "json" else yaml.safe_load(response.content)


def test_schema_is_a_valid_openapi_3_document(client, open_api):
    document = get_schema(client)
    assert document["openapi"].startswith("3.")
    validate_schema(document)  # against the OpenAPI 3 JSON Schema
    loaded = schemathesis.openapi.from_dict(document)  # and schemathesis reads every operation
    assert all(result.ok() for result in loaded.get_all_operations())


def test_schema_is_yaml_by_default_and_json_on_request(client, open_api):
    response = client.get("/api/schema/")
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert yaml.safe_load(response.content) == get_schema(client)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response["Content-Type"] == "application/json"


def test_schema_lists_every_route_and_method_of_the_river_api(client, open_api):
    document = get_schema(client)
    expected = river_operations()
    assert {"/api/learn/", "/api/predict/", "/api/model/{flavor}/{name}/", "/api/auth/token/"} <= set(expected)
    assert {path: set(methods) for path, methods in document["paths"].items()} == expected
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_upload_documents_the_six_flavors_and_both_bodies(client, open_api):
    document = get_schema(client)
    named = document["paths"]["/api/model/{flavor}/{name}/"]["post"]
    unnamed = document["paths"]["/api/model/{name}/"]["post"]
    for operation, parameter in ((named, "flavor"), (unnamed, "name")):
        flavor = next(p for p in operation["parameters"] if p["name"] == parameter and p["in"] == "path")
        assert sorted(flavor["schema"]["enum"]) == sorted(FLAVORS)
        assert len(FLAVORS) == 6
        content = operation["requestBody"]["content"]
        assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ModelSpec"}
        assert set(operation["responses"]) >= {"201", "400", "413"}
    step = document["components"]["schemas"]["ModelSpecStep"]
    assert step["required"] == ["class"] and set(step["properties"]) == {"class", "params"}
    assert step["properties"]["params"]["type"] == "object"


def test_errors_answers_and_quirks_are_documented(client, open_api):
    document = get_schema(client)
    paths = document["paths"]
    error = {"$ref": "#/components/schemas/Error"}
    assert document["components"]["schemas"]["Error"]["properties"]["message"] == {
        "type": "string", "description": "What went wrong, for people."}
    assert document["components"]["schemas"]["Error"]["required"] == ["message"]  # "row": about a batch's example
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "405" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if status >= "400":
                    assert response["content"]["application/json"]["schema"] == error, (method, path, status)
    for path in ("/api/learn/", "/api/predict/", "/api/label/"):
        assert {"400", "404", "413"} <= set(paths[path]["post"]["responses"])
    # Predict: 201 with an identifier, 200 without.
    predict = paths["/api/predict/"]["post"]["responses"]
    assert predict["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/IdentifiedPrediction")
    assert predict["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictOutcome")
    assert document["components"]["schemas"]["PredictOutcome"]["oneOf"] == [
        {"$ref": "#/components/schemas/Prediction"}, {"$ref": "#/components/schemas/PredictedBatch"}]
    assert "identifier" in document["components"]["schemas"]["IdentifiedPrediction"]["required"]
    # The model may be named by ?model= on the GET/DELETE routes that take a JSON or form body.
    for path, method in (("/api/metrics/", "get"), ("/api/stats/", "get"), ("/api/model/", "delete")):
        operation = paths[path][method]
        model = next(p for p in operation["parameters"] if p["name"] == "model")
        assert model["in"] == "query" and not model.get("required", False)
        assert "JSON body" in model["description"] and "form" in model["description"]
        assert {"400", "404"} <= set(operation["responses"])
    stats = document["components"]["schemas"]["Stats"]
    assert set(stats["required"]) == {"learn", "predict", "label", "drift"}
    call = document["components"]["schemas"]["CallStats"]
    assert set(call["required"]) == {"n_calls", "mean_duration", "mean_duration_human", "ewm_duration",
                                     "ewm_duration_human", "p50_duration", "p50_duration_human", "p95_duration",
                                     "p95_duration_human", "p99_duration", "p99_duration_human", "rate_per_second"}
    info = document["components"]["schemas"]["ServiceInfo"]
    assert set(info["required"]) == {"baseurl", "id", "status", "name", "description", "documentationUrl",
                                     "prefix", "storage", "river_version", "version"}
    download = paths["/api/model/download/{name}/"]["get"]["responses"]["200"]
    assert set(download["content"]) == {"application/octet-stream"}


def test_examples_name_one_model(client, open_api):
    document = get_schema(client)
    learn = document["paths"]["/api/learn/"]["post"]["requestBody"]["content"]["application/json"]
    assert [e["value"]["model"] for e in learn["examples"].values()] == [EXAMPLE_MODEL]


def test_security_follows_the_authentication_settings(client, settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "DISABLE_AUTHENTICATION": False}
    paths = get_schema(client)["paths"]
    learn = paths["/api/learn/"]["post"]
    assert {"jwtAuth": []} in learn["security"] and {} not in learn["security"]
    assert {"401", "403", "429"} <= set(learn["responses"])
    assert {} in paths["/api/"]["get"]["security"]  # service info stays open
    token = paths["/api/auth/token/"]["get"]
    assert {"basicTokenAuth": []} in token["security"]
    assert set(token["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1:]) == {
        "Token"}
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": True}
    assert "security" not in get_schema(client)["paths"]["/api/learn/"]["post"]


def test_schema_of_the_site_has_no_warnings():
    """What `manage.py spectacular --validate --fail-on-warn` checks (it raises on any warning)."""
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    site = json.loads(out.getvalue())
    assert set(river_operations()) <= set(site["paths"])
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json",
                 "--custom-settings", "django_river_ml.schema.SPECTACULAR_SETTINGS", stdout=out)
    assert json.loads(out.getvalue())["info"]["title"] == "River API"


def test_docs_page_uses_local_static_files_only(client, open_api):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert not re.search(r"https?://", html), re.findall(r"https?://\S+", html)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3, assets
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file of the site"
    assert 'url: "/api/schema/' in html
    assert '"validatorUrl": null' in html  # Swagger UI would otherwise send the schema to a public validator


def test_docs_page_says_what_it_needs_without_the_sidecar_app(client, open_api, settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "drf_spectacular_sidecar"]
    response = client.get("/api/docs/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "drf_spectacular_sidecar" in response.json()["message"]
    assert client.get("/api/schema/").status_code == 200


# Each shape declared once ---------------------------------------------------------------------


def test_the_shapes_are_the_serializers_and_schema_py_imports_no_view():
    """Bodies are declared in django_river_ml.serializers only; schema.py only says which answers what."""
    import ast
    import inspect

    from rest_framework.serializers import BaseSerializer

    declared_here = [name for name, value in vars(schema).items()
                     if isinstance(value, type) and issubclass(value, BaseSerializer)]
    assert declared_here == []
    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(schema)))
                if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(ast.parse(inspect.getsource(schema)))
                 if isinstance(node, ast.Import) for alias in node.names}
    assert not [module for module in imported if module and module.startswith("django_river_ml.views")]


def test_batches_are_documented_as_their_serializers_declare_them(client, open_api):
    components = get_schema(client)["components"]["schemas"]
    paths = get_schema(client)["paths"]
    learn = paths["/api/learn/"]["post"]
    assert learn["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LearnBody")
    assert components["LearnBody"]["anyOf"] == [{"$ref": "#/components/schemas/Learn"},
                                                {"$ref": "#/components/schemas/LearnBatch"}]
    assert components["PredictBody"]["oneOf"] == [{"$ref": "#/components/schemas/Predict"},
                                                  {"$ref": "#/components/schemas/PredictBatch"}]
    examples = components["LearnBatch"]["properties"]["examples"]
    assert examples["items"] == {"$ref": "#/components/schemas/LearnExample"} and examples["minItems"] == 1
    assert set(components["LearnExample"]["properties"]) == {"features", "ground_truth", "identifier",
                                                             "idempotency_key"}
    assert components["LearnedBatch"]["required"] == ["learned", "model", "sequence"]
    assert components["PredictedBatch"]["properties"]["predictions"]["items"] == {
        "$ref": "#/components/schemas/BatchPrediction"}
    assert learn["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/LearnOutcome")


def test_limits_come_from_the_rules_and_settings(client, open_api, settings):
    components = get_schema(client)["components"]["schemas"]
    for name in ("Learn", "Predict", "Label", "LearnBatch"):
        assert components[name]["properties"]["model"]["pattern"] == f"^{NAME_PATTERN.pattern}$"
    for name in ("Learn", "Predict", "Label", "LearnExample", "PredictExample"):
        identifier = components[name]["properties"]["identifier"]
        assert (identifier["minLength"], identifier["maxLength"]) == (1, MAX_IDENTIFIER_LENGTH)
    metric = next(p for p in get_schema(client)["paths"]["/api/metrics/"]["get"]["parameters"] if p["name"] == "model")
    assert metric["schema"]["pattern"] == f"^{NAME_PATTERN.pattern}$"
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_FEATURES": 7}
    assert get_schema(client)["components"]["schemas"]["Predict"]["properties"]["features"]["maxProperties"] == 7
    # The metrics each flavor keeps, as the flavors say.
    words = components["Metrics"]["description"]
    for flavor in FLAVORS.values():
        for factory in flavor.metric_factories:
            assert factory.__name__ in words


def test_the_answers_are_what_the_schema_says(client, open_api, backend):
    """The answers, batches included, validated against the schema's components."""
    import jsonschema

    from django_river_ml.client import DjangoClient
    from flavored_models import examples, make_model

    document = get_schema(client)

    def conforms(answer, component):
        jsonschema.validate(answer.json(), {"$ref": f"#/components/schemas/{component}",
                                            "components": document["components"]})

    DjangoClient().upload_model(make_model("regression"), "regression", model_name="shaped")
    rows = [{"features": x, "ground_truth": y} for x, y in examples("regression", 3)]
    conforms(client.post("/api/learn/", {"model": "shaped", "examples": rows}, content_type="application/json"),
             "LearnedBatch")
    conforms(client.post("/api/learn/", {"model": "shaped", **rows[0]}, content_type="application/json"),
             "LearnResult")
    batch = [{"features": rows[0]["features"]}, {"features": rows[1]["features"], "identifier": "kept"}]
    answer = client.post("/api/predict/", {"model": "shaped", "examples": batch}, content_type="application/json")
    conforms(answer, "PredictedBatch")
    predictions = answer.json()["predictions"]
    assert predictions[1]["identifier"] == "kept" and "identifier" not in predictions[0]
    conforms(client.get("/api/metrics/", {"model": "shaped"}), "Metrics")
    conforms(client.get("/api/stats/", {"model": "shaped"}), "Stats")
    refused = client.post("/api/learn/", {"model": "shaped", "examples": [rows[0], {"features": 1}]},
                          content_type="application/json")
    conforms(refused, "Error")
    assert refused.json()["row"] == 1
