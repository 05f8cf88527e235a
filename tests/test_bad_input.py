"""Every bad input the River API can be sent, on both storage backends.

The rule checked throughout: a bad input gets a 4xx answer whose Content-Type is
application/json and whose body is exactly ``{"message": "..."}``, the message naming
what is wrong. Never a 500, never an HTML page, and a refused request leaves every
model as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import subprocess
from urllib.parse import quote, urlencode

import dill
import pytest
import river.stream
from river import anomaly, cluster, linear_model, preprocessing, tree

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import (
    IdentifierNotFound,
    InvalidInput,
    InvalidModel,
    ModelFailed,
    ModelNotFound,
    PayloadTooLarge,
    UnknownFlavor,
)
from django_river_ml.loading import UnsafeModel
from example_project.custom_models import Fragile
from flavored_models import examples, make_model

NAME_ERROR = "Model names may use"


# Helpers -------------------------------------------------------------------------------------


def assert_error(response, status: int, *words: str) -> str:
    """``response`` is a ``status`` answer in JSON ``{"message": ...}`` naming every one of ``words``."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert 400 <= status < 500
    assert response["Content-Type"] == "application/json", (response["Content-Type"], response.content[:200])
    assert b"<html" not in response.content.lower()
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"message"}, body
    message = body["message"]
    assert isinstance(message, str) and message.strip()
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def upload(api, flavor: str, name: str | None = None, model=None, data: bytes | None = None):
    url = f"/api/model/{flavor}/{name}/" if name is not None else f"/api/model/{flavor}/"
    if data is None:
        data = dill.dumps(model if model is not None else make_model(flavor))
    return api.post(url, data=data, content_type="application/octet-stream")


def send(api, method: str, path: str, text: str | bytes, content_type: str = "application/json", **extra):
    """Send ``text`` as the body exactly as given (Python's json would accept NaN; the server must not)."""
    return api.generic(method, path, text, content_type=content_type, **extra)


def post_json(api, path: str, body) -> object:
    return api.post(path, body, format="json")


def get_json_body(api, path: str, body):
    return api.generic("GET", path, json.dumps(body), content_type="application/json")


def learn(api, name: str, features: dict, ground_truth=None):
    return post_json(api, "/api/learn/", {"model": name, "features": features, "ground_truth": ground_truth})


def predict(api, name: str, features: dict):
    return post_json(api, "/api/predict/", {"model": name, "features": features})


def stats(api, name: str) -> dict:
    response = api.get("/api/stats/", {"model": name})
    assert response.status_code == 200, response.content
    return response.json()


def n_learned(api, name: str) -> int:
    return stats(api, name)["learn"]["n_calls"]


def model_names(api) -> list[str]:
    return api.get("/api/models/").json()["models"]


def state(api, name: str, x: dict) -> tuple:
    """What a refused request must not change: learn and label counts, metrics, a prediction."""
    counts = stats(api, name)
    metrics = api.get("/api/metrics/", {"model": name}).json()
    prediction = predict(api, name, x).json()["prediction"]
    return counts["learn"]["n_calls"], counts["label"]["n_calls"], metrics, prediction


# The fixtures' models come from server code (DjangoClient with the object: no sandbox round trip, a
# tenth of the time); uploads of bytes, and what they refuse, are tested on their own below.


@pytest.fixture
def reg(api):
    """A regression model "reg" that has learned a few examples."""
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", "reg")
    for x, y in examples("regression", 5):
        client.learn("reg", x, ground_truth=y)
    return "reg"


@pytest.fixture
def flavored(api):
    """One fresh model per supervised flavor, named after it."""
    for flavor in ("regression", "binary", "multiclass"):
        DjangoClient().upload_model(make_model(flavor), flavor, flavor)
    return ("regression", "binary", "multiclass")


# Malicious pickles: code that would leave a file behind, or river code that would leak data ----


class RunsShell:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


class EvalsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w')",))


class StartsProcess:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.path)],))


class ReadsFile:
    """river.stream.iter_csv(path), read into a list: a model carrying a server file to download."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (list, (_IterCsv(self.path),))


class _IterCsv:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (river.stream.iter_csv, (str(self.path),))


SECRET_KEY_PATH = "__init__.__globals__[typing].sys.modules[django.conf].settings.SECRET_KEY"


class FormatsSecret:
    """str.format walks attribute chains: each way would copy Django's SECRET_KEY into the model."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        river_object = linear_model.LinearRegression()
        if self.how == "bound":
            return ("{0.%s}" % SECRET_KEY_PATH).format, (river_object,)
        if self.how == "unbound":
            return str.format, ("{0.%s}" % SECRET_KEY_PATH, river_object)
        return ("{m.%s}" % SECRET_KEY_PATH).format_map, ({"m": river_object},)


def carried_by_model(payload):
    """A genuine river model with the payload hidden in one of its attributes."""
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    model["LinearRegression"].payload = payload
    return model


# Whole-body problems, on every route that reads a JSON body ------------------------------------

BODY_ROUTES = {
    "learn": ("POST", "/api/learn/"),
    "predict": ("POST", "/api/predict/"),
    "label": ("POST", "/api/label/"),
    "metrics": ("GET", "/api/metrics/"),
    "stats": ("GET", "/api/stats/"),
    "delete": ("DELETE", "/api/model/"),
}


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("body", ["", "{}", "   "], ids=["empty", "empty-object", "blank"])
def test_empty_body_asks_for_the_model(api, reg, route, body):
    method, path = BODY_ROUTES[route]
    if body == "   ":  # whitespace only is not JSON at all
        assert_error(send(api, method, path, body), 400, "JSON parse error")
    else:
        assert_error(send(api, method, path, body), 400, "model", "required")
    assert model_names(api) == ["reg"]


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("text", ['{"model": "reg", ', "{'model': 'reg'}", '{"model": "reg"} trailing', "model=reg"])
def test_malformed_json_is_a_parse_error(api, reg, route, text):
    method, path = BODY_ROUTES[route]
    assert_error(send(api, method, path, text), 400, "JSON parse error")
    assert model_names(api) == ["reg"]


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize(("text", "kind"), [
    ('["reg"]', "an array"),
    ('"reg"', "a string"),
    ("42", "a number"),
    ("1.5", "a number"),
    ("true", "a boolean"),
    ("null", "null"),
])
def test_body_that_is_not_an_object(api, reg, route, text, kind):
    method, path = BODY_ROUTES[route]
    assert_error(send(api, method, path, text), 400, "JSON object", kind)
    assert model_names(api) == ["reg"]


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_body_nested_too_deeply_for_the_parser(api, reg, route):
    method, path = BODY_ROUTES[route]
    text = "[" * 100_000 + "]" * 100_000
    assert_error(send(api, method, path, text), 400, "nested too deeply")


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_body_that_is_not_utf8(api, reg, route):
    method, path = BODY_ROUTES[route]
    assert_error(send(api, method, path, b'{"model": "r\xffeg"}'), 400, "JSON parse error", "utf-8")


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"])
def test_unsupported_content_type(api, reg, route, content_type):
    method, path = BODY_ROUTES[route]
    assert_error(send(api, method, path, '{"model": "reg"}', content_type=content_type), 415,
                 "Unsupported media type", content_type.split(";")[0])


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_form_with_too_many_fields(api, reg, route, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 50
    method, path = BODY_ROUTES[route]
    text = "model=reg&" + "&".join(f"f{i}=1" for i in range(100))
    assert_error(send(api, method, path, text, content_type="application/x-www-form-urlencoded"), 400,
                 "DATA_UPLOAD_MAX_NUMBER_FIELDS")
    assert model_names(api) == ["reg"]


def test_answer_that_cannot_be_json_is_406_in_json(api, reg):
    response = api.get("/api/stats/", {"model": "reg"}, HTTP_ACCEPT="text/html")
    assert_error(response, 406, "Accept")


# Missing and mistyped fields -------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/learn/", {"features": {"a": 1}, "ground_truth": 1.0}, "model"),
    ("/api/learn/", {"model": "reg", "ground_truth": 1.0}, "features"),
    ("/api/predict/", {"features": {"a": 1}}, "model"),
    ("/api/predict/", {"model": "reg"}, "features"),
    ("/api/predict/", {"model": "reg", "identifier": "id-1"}, "features"),
    ("/api/label/", {"identifier": "id-1", "label": 1.0}, "model"),
    ("/api/label/", {"model": "reg", "label": 1.0}, "identifier"),
    ("/api/label/", {"model": "reg", "identifier": "id-1"}, "label"),
])
def test_missing_field(api, reg, path, body, field):
    before = state(api, "reg", {"a": 1})
    assert_error(post_json(api, path, body), 400, field, "required")
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize("path", ["/api/learn/", "/api/predict/", "/api/label/", "/api/metrics/", "/api/stats/",
                                  "/api/model/"])
@pytest.mark.parametrize(("value", "problem"), [
    (None, "may not be null"),
    ("", "may not be blank"),
    (["reg"], "Not a valid string"),
    ({"name": "reg"}, "Not a valid string"),
])
def test_model_field_of_the_wrong_kind(api, reg, path, value, problem):
    method = {"/api/metrics/": "GET", "/api/stats/": "GET", "/api/model/": "DELETE"}.get(path, "POST")
    body = {"model": value, "features": {"a": 1}, "ground_truth": 1.0, "identifier": "id-1", "label": 1.0}
    assert_error(send(api, method, path, json.dumps(body)), 400, "model", problem)
    assert model_names(api) == ["reg"]


@pytest.mark.parametrize("flavor", ["regression", "binary", "multiclass"])
@pytest.mark.parametrize("ground_truth", ["missing", None])
def test_supervised_flavors_need_ground_truth(api, flavored, flavor, ground_truth):
    body = {"model": flavor, "features": {"a": 1.0}}
    if ground_truth != "missing":
        body["ground_truth"] = ground_truth
    assert_error(post_json(api, "/api/learn/", body), 400, "ground_truth", flavor, "none was given")
    assert n_learned(api, flavor) == 0


@pytest.mark.parametrize("flavor", ["cluster", "anomaly"])
def test_unsupervised_flavors_learn_without_ground_truth(api, flavor):
    # The contrast to the test above: ground_truth is only demanded where the flavor needs it.
    assert upload(api, flavor, flavor).status_code == 201
    assert post_json(api, "/api/learn/", {"model": flavor, "features": {"a": 1.0}}).status_code == 201
    assert n_learned(api, flavor) == 1


def test_learn_needs_features_unless_the_identifier_is_known(api, reg):
    response = post_json(api, "/api/learn/", {"model": "reg", "ground_truth": 1.0, "identifier": "never-made"})
    assert_error(response, 404, "never-made", "never made")
    assert n_learned(api, "reg") == 5


@pytest.mark.parametrize("path", ["/api/learn/", "/api/predict/"])
@pytest.mark.parametrize(("features", "words"), [
    ([1, 2, 3], ("features", "object", "list")),
    ([], ("features", "object", "list")),
    ("a=1", ("features", "object", "str")),
    (42, ("features", "object", "int")),
    (4.2, ("features", "object", "float")),
    (True, ("features", "object", "bool")),
    (None, ("features", "null")),
])
def test_features_that_are_not_an_object(api, reg, path, features, words):
    before = state(api, "reg", {"a": 1})
    body = {"model": "reg", "features": features, "ground_truth": 1.0}
    assert_error(post_json(api, path, body), 400, *words)
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize("path", ["/api/learn/", "/api/predict/"])
@pytest.mark.parametrize(("value", "kind"), [
    ({"r": 1, "g": 2}, "dict"),
    ({}, "dict"),
    ([1, 2], "list"),
    ([], "list"),
])
def test_feature_values_that_are_nested(api, reg, path, value, kind):
    before = state(api, "reg", {"a": 1})
    body = {"model": "reg", "features": {"size": 1.0, "color": value}, "ground_truth": 1.0}
    assert_error(post_json(api, path, body), 400, "'color'", kind)
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("path", "template"), [
    ("/api/learn/", '{"model": "reg", "features": {"a": %s}, "ground_truth": 1.0}'),
    ("/api/learn/", '{"model": "reg", "features": {"a": 1.0}, "ground_truth": %s}'),
    ("/api/predict/", '{"model": "reg", "features": {"a": 1.0, "b": %s}}'),
    ("/api/label/", '{"model": "reg", "identifier": "ID", "label": %s}'),
], ids=["learn-features", "learn-ground_truth", "predict-features", "label"])
def test_non_finite_numbers_are_refused(api, reg, constant, path, template):
    identifier = predict(api, "reg", {"a": 1.0}).json()["identifier"]
    before = state(api, "reg", {"a": 1})
    response = send(api, "POST", path, template.replace("ID", identifier) % constant)
    assert_error(response, 400, constant.lstrip("-"), "not JSON compliant")
    assert state(api, "reg", {"a": 1}) == before
    # The identifier was not used up by the refused label.
    assert post_json(api, "/api/label/", {"model": "reg", "identifier": identifier, "label": 1.0}).status_code == 200


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/learn/", '{"model": "reg", "features": {"a": 1e400}, "ground_truth": 1.0}', "features"),
    ("/api/learn/", '{"model": "reg", "features": {"a": 1.0}, "ground_truth": -1e400}', "ground_truth"),
    ("/api/predict/", '{"model": "reg", "features": {"a": 1e999}}', "features"),
    ("/api/label/", '{"model": "reg", "identifier": "x", "label": 1e400}', "label"),
])
def test_numbers_too_large_for_a_float_are_refused(api, reg, path, body, field):
    # Python reads 1e400 as inf without any NaN/Infinity literal in the text.
    before = state(api, "reg", {"a": 1})
    assert_error(send(api, "POST", path, body), 400, field)
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize(("fields", "word"), [
    ({"features": '{"a": NaN}', "ground_truth": "1"}, "features"),
    ({"features": '{"a": 1}', "ground_truth": "NaN"}, "ground_truth"),
    ({"features": '{"a": 1}', "ground_truth": "Infinity"}, "ground_truth"),
    ({"features": '{"a": 1}', "ground_truth": "not json"}, "ground_truth"),
    ({"features": "[1, 2]", "ground_truth": "1"}, "features"),
])
def test_form_encoded_learn_is_checked_like_json(api, reg, fields, word):
    before = state(api, "reg", {"a": 1})
    body = urlencode({"model": "reg", **fields})
    assert_error(send(api, "POST", "/api/learn/", body, content_type="application/x-www-form-urlencoded"), 400, word)
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize("flavor", ["regression", "cluster", "custom"])
@pytest.mark.parametrize("depth", [25, 900])
def test_ground_truth_nested_too_deeply(api, flavor, depth):
    # Unsupervised and custom flavors take any ground_truth: its depth must still be bounded.
    assert upload(api, flavor, "m").status_code == 201
    text = '{"model": "m", "features": {"a": 1.0}, "ground_truth": %s}' % ("[" * depth + "]" * depth)
    assert_error(send(api, "POST", "/api/learn/", text), 400, "ground_truth", "nested")
    form = urlencode({"model": "m", "features": '{"a": 1}', "ground_truth": "[" * 5000 + "]" * 5000})
    assert_error(send(api, "POST", "/api/learn/", form, content_type="application/x-www-form-urlencoded"), 400,
                 "ground_truth", "nested")
    assert n_learned(api, "m") == 0


def test_label_nested_too_deeply(api):
    assert upload(api, "cluster", "clu").status_code == 201
    identifier = predict(api, "clu", {"a": 1.0}).json()["identifier"]
    text = '{"model": "clu", "identifier": "%s", "label": %s}' % (identifier, "[" * 900 + "]" * 900)
    assert_error(send(api, "POST", "/api/label/", text), 400, "label", "nested")
    assert stats(api, "clu")["label"]["n_calls"] == 0
    assert post_json(api, "/api/label/", {"model": "clu", "identifier": identifier, "label": 1}).status_code == 200


# Targets of the wrong kind for the flavor ------------------------------------------------------

WRONG_TARGETS = [
    ("regression", '"12.5"'),
    ("regression", '"abc"'),
    ("regression", "true"),
    ("regression", "[1.0]"),
    ("regression", '{"y": 1.0}'),
    ("regression", "1" + "0" * 400),  # an int no float can hold
    ("binary", '{"label": true}'),
    ("binary", "[true]"),
    ("binary", "{}"),
    ("multiclass", '{"class": "a"}'),
    ("multiclass", '["a", "b"]'),
]


@pytest.mark.parametrize(("flavor", "target"), WRONG_TARGETS)
def test_learn_with_a_target_of_the_wrong_kind(api, flavored, flavor, target):
    metrics_before = api.get("/api/metrics/", {"model": flavor}).json()
    text = '{"model": "%s", "features": {"a": 1.0}, "ground_truth": %s}' % (flavor, target)
    assert_error(send(api, "POST", "/api/learn/", text), 400, "ground_truth", f"for a {flavor} model must be")
    assert n_learned(api, flavor) == 0
    assert api.get("/api/metrics/", {"model": flavor}).json() == metrics_before


@pytest.mark.parametrize(("flavor", "target"), WRONG_TARGETS)
def test_label_with_a_target_of_the_wrong_kind_keeps_the_identifier(api, flavored, flavor, target):
    identifier = predict(api, flavor, {"a": 1.0}).json()["identifier"]
    metrics_before = api.get("/api/metrics/", {"model": flavor}).json()
    text = '{"model": "%s", "identifier": "%s", "label": %s}' % (flavor, identifier, target)
    assert_error(send(api, "POST", "/api/label/", text), 400, f"label for a {flavor} model must be")
    assert stats(api, flavor)["label"]["n_calls"] == 0
    assert api.get("/api/metrics/", {"model": flavor}).json() == metrics_before
    # The prediction is still waiting for its (corrected) label.
    good = {"regression": 2.5, "binary": True, "multiclass": "a"}[flavor]
    response = post_json(api, "/api/label/", {"model": flavor, "identifier": identifier, "label": good})
    assert response.status_code == 200, response.content
    assert stats(api, flavor)["label"]["n_calls"] == 1


def test_label_null_is_refused(api, reg):
    identifier = predict(api, "reg", {"a": 1.0}).json()["identifier"]
    body = {"model": "reg", "identifier": identifier, "label": None}
    assert_error(post_json(api, "/api/label/", body), 400, "label")


def test_label_for_an_unknown_identifier(api, reg):
    body = {"model": "reg", "identifier": "no-such-prediction", "label": 1.0}
    assert_error(post_json(api, "/api/label/", body), 404, "no-such-prediction", "never made")


def test_label_twice_consumes_the_identifier(api, reg):
    identifier = predict(api, "reg", {"a": 1.0}).json()["identifier"]
    body = {"model": "reg", "identifier": identifier, "label": 1.0}
    assert post_json(api, "/api/label/", body).status_code == 200
    assert_error(post_json(api, "/api/label/", body), 404, identifier, "already labelled")


# Identifiers --------------------------------------------------------------------------------

IDENTIFIER_BODIES = {
    "predict": ("/api/predict/", {"model": "reg", "features": {"a": 1.0}}),
    "learn": ("/api/learn/", {"model": "reg", "features": {"a": 1.0}, "ground_truth": 1.0}),
    "label": ("/api/label/", {"model": "reg", "label": 1.0}),
}


@pytest.mark.parametrize("route", IDENTIFIER_BODIES)
@pytest.mark.parametrize(("identifier", "words"), [
    ("i" * 201, ("identifier", "at most 200 characters")),
    ("line\nbreak", ("identifier", "control characters")),
    ("tab\there", ("identifier", "control characters")),
    ("", ("identifier", "may not be blank")),
    ({"id": 1}, ("identifier", "Not a valid string")),
    (["id"], ("identifier", "Not a valid string")),
])
def test_bad_identifier(api, reg, route, identifier, words):
    path, body = IDENTIFIER_BODIES[route]
    before = state(api, "reg", {"a": 1})
    assert_error(post_json(api, path, {**body, "identifier": identifier}), 400, *words)
    assert state(api, "reg", {"a": 1}) == before


def test_identifier_of_the_longest_allowed_length_is_accepted(api, reg):
    # The boundary of the test above: 200 characters are fine.
    response = post_json(api, "/api/predict/", {"model": "reg", "features": {"a": 1.0}, "identifier": "i" * 200})
    assert response.status_code == 201, response.content
    assert response.json()["identifier"] == "i" * 200


# Model names -------------------------------------------------------------------------------


def q(name: str) -> str:
    return quote(name, safe="")


NAME_ROUTES = {
    "learn": lambda api, name: learn(api, name, {"a": 1.0}, 1.0),
    "predict": lambda api, name: predict(api, name, {"a": 1.0}),
    "label": lambda api, name: post_json(api, "/api/label/", {"model": name, "identifier": "id-1", "label": 1.0}),
    "metrics-body": lambda api, name: get_json_body(api, "/api/metrics/", {"model": name}),
    "metrics-query": lambda api, name: api.get("/api/metrics/", {"model": name}),
    "stats-body": lambda api, name: get_json_body(api, "/api/stats/", {"model": name}),
    "stats-query": lambda api, name: api.get("/api/stats/", {"model": name}),
    "delete-json": lambda api, name: api.delete("/api/model/", {"model": name}, format="json"),
    "delete-form": lambda api, name: send(api, "DELETE", "/api/model/", urlencode({"model": name}),
                                          content_type="application/x-www-form-urlencoded"),
    "delete-query": lambda api, name: api.delete(f"/api/model/?{urlencode({'model': name})}"),
    "delete-path": lambda api, name: api.delete(f"/api/model/{q(name)}/"),
    "model-json": lambda api, name: api.get(f"/api/model/{q(name)}/"),
    "download": lambda api, name: api.get(f"/api/model/download/{q(name)}/"),
    "upload": lambda api, name: upload(api, "regression", q(name)),
}

INVALID_NAMES = {
    "space": "my model",
    "unicode": "mödel-ünï",
    "emoji": "model-🚀",
    "too-long": "m" * 101,
    "dot-first": ".hidden",
    "dot-dot": "..",
    "dash-first": "-model",
    "percent": "100%",
    "newline": "model\n",
    "semicolon": "a;b",
}


@pytest.mark.parametrize("route", NAME_ROUTES)
@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
def test_invalid_model_name(api, reg, route, name):
    before = state(api, "reg", {"a": 1})
    assert_error(NAME_ROUTES[route](api, name), 400, NAME_ERROR)
    assert model_names(api) == ["reg"]
    assert state(api, "reg", {"a": 1}) == before


@pytest.mark.parametrize("route", ["metrics-query", "stats-query", "delete-query"])
def test_empty_model_name_in_query(api, reg, route):
    assert_error(NAME_ROUTES[route](api, ""), 400, NAME_ERROR)
    assert model_names(api) == ["reg"]


def test_longest_name_is_accepted(api):
    # The boundary of the too-long case above: 100 characters are fine everywhere.
    name = "m" * 100
    assert upload(api, "regression", name).status_code == 201
    assert learn(api, name, {"a": 1.0}, 1.0).status_code == 201
    assert api.get(f"/api/model/{name}/").status_code == 200
    assert api.delete(f"/api/model/{name}/").status_code == 200


@pytest.mark.parametrize("route", [r for r in NAME_ROUTES if r != "upload"])
def test_unknown_model(api, reg, route):
    assert_error(NAME_ROUTES[route](api, "ghost"), 404, "ghost")
    assert model_names(api) == ["reg"]


def test_delete_twice(api, reg):
    assert api.delete("/api/model/reg/").status_code == 200
    assert_error(api.delete("/api/model/reg/"), 404, "reg")
    assert_error(api.delete("/api/model/", {"model": "reg"}, format="json"), 404, "reg")


# Uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/model/nonsense/", "/api/model/nonsense/named/", "/api/model/Regression/x/",
                                 "/api/model/regression%20/x/"])
def test_upload_with_unknown_flavor(api, url):
    response = api.post(url, data=dill.dumps(make_model("regression")), content_type="application/octet-stream")
    assert_error(response, 400, "Unknown flavor", "regression, binary")
    assert model_names(api) == []


@pytest.mark.parametrize(("data", "words"), [
    (b"", ("empty",)),
    (b"this is not a pickle", ("not a readable pickle",)),
    (random.Random(0).randbytes(256), ("pickle",)),
    (b"\x80\x05" + b"(" * 100_000, ("pickle",)),
    (b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00", ("not a readable pickle",)),
], ids=["empty", "text", "random", "marks", "huge-frame"])
@pytest.mark.parametrize("with_name", [True, False])
def test_upload_of_junk(api, data, words, with_name):
    response = upload(api, "regression", "junk" if with_name else None, data=data)
    assert_error(response, 400, *words)
    assert model_names(api) == []


@pytest.mark.parametrize("dumps", [pickle.dumps, dill.dumps], ids=["pickle", "dill"])
@pytest.mark.parametrize("cut", [1, 10, 0.5, -1])
def test_upload_of_a_truncated_pickle(api, dumps, cut):
    data = dumps(make_model("regression"))
    cut_at = int(len(data) * cut) if isinstance(cut, float) else cut
    assert_error(upload(api, "regression", "cut", data=data[:cut_at]), 400, "pickle")
    assert model_names(api) == []


@pytest.mark.parametrize(("flavor", "model", "words"), [
    ("binary", lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
     ("binary", "predict_proba_one", "LinearRegression")),
    ("binary", linear_model.LinearRegression, ("predict_proba_one", "LinearRegression")),
    ("multiclass", linear_model.LinearRegression, ("LinearRegression", "is a regressor", "regression flavor")),
    ("multiclass", lambda: preprocessing.StandardScaler() | tree.HoeffdingTreeRegressor(),
     ("HoeffdingTreeRegressor", "is a regressor")),
    ("binary", lambda: cluster.KMeans(seed=1), ("predict_proba_one", "KMeans")),
    ("regression", lambda: anomaly.HalfSpaceTrees(seed=1), ("predict_one", "HalfSpaceTrees")),
    ("anomaly", linear_model.LinearRegression, ("score_one", "LinearRegression")),
    ("multiclass", linear_model.LogisticRegression, ("LogisticRegression", "binary classifier")),
    ("multiclass", lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
     ("LogisticRegression", "binary classifier")),
    ("regression", lambda: {"weights": [1.0, 2.0]}, ("learn_one", "dict")),
    ("custom", lambda: 42, ("learn_one", "int")),
    ("cluster", lambda: preprocessing.StandardScaler(), ("predict_one", "StandardScaler")),
])
def test_upload_of_a_model_unfit_for_its_flavor(api, flavor, model, words):
    assert_error(upload(api, flavor, "unfit", model=model()), 400, *words)
    assert model_names(api) == []


@pytest.mark.parametrize("dumps", [pickle.dumps, dill.dumps], ids=["pickle", "dill"])
@pytest.mark.parametrize(("payload", "refused"), [
    (RunsShell, "system"),
    (EvalsCode, "builtins.eval"),
    (StartsProcess, "subprocess.Popen"),
])
@pytest.mark.parametrize("hidden", [False, True], ids=["bare", "inside-a-model"])
def test_upload_of_a_code_running_pickle_is_refused_and_never_runs(api, tmp_path, dumps, payload, refused, hidden):
    created = tmp_path / "pwned"
    evil = payload(created)
    data = dumps(carried_by_model(evil) if hidden else evil)
    assert_error(upload(api, "regression", "evil", data=data), 400, refused, "may not use")
    assert not created.exists()
    assert model_names(api) == []


def test_os_system_pickle_names_the_global(api, tmp_path):
    created = tmp_path / "pwned"
    message = assert_error(upload(api, "custom", data=pickle.dumps(RunsShell(created))), 400)
    assert f"{os.system.__module__}.system" in message  # posix.system, the global the pickle asked for
    assert not created.exists()


@pytest.mark.parametrize("dumps", [pickle.dumps, dill.dumps], ids=["pickle", "dill"])
def test_upload_that_reads_a_server_file_is_refused(api, tmp_path, dumps):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    data = dumps(carried_by_model(ReadsFile(secret)))
    assert_error(upload(api, "regression", "leak", data=data), 400, "river.stream", "may not use")
    assert model_names(api) == []


@pytest.mark.parametrize("dumps", [pickle.dumps, dill.dumps], ids=["pickle", "dill"])
@pytest.mark.parametrize(("how", "refused"), [("bound", "str.format"), ("unbound", "str.format"),
                                              ("format_map", "str.format_map")])
def test_upload_that_formats_out_a_secret_is_refused(api, dumps, how, refused):
    data = dumps(carried_by_model(FormatsSecret(how)))
    assert_error(upload(api, "regression", "leak", data=data), 400, refused, "may not use")
    assert model_names(api) == []


def test_upload_with_a_lambda_is_refused_with_advice(api):
    model = preprocessing.StandardScaler() | (lambda x: {k: v * 2 for k, v in x.items()}) | \
        linear_model.LinearRegression()
    assert_error(upload(api, "regression", "lam", data=dill.dumps(model)), 400, "lambdas")
    assert model_names(api) == []


def test_refused_upload_leaves_the_model_of_that_name_alone(api, tmp_path):
    assert upload(api, "regression", "keep").status_code == 201
    for x, y in examples("regression", 3):
        learn(api, "keep", x, y)
    x0 = examples("regression", 1)[0][0]
    before = state(api, "keep", x0)
    assert_error(upload(api, "regression", "keep", data=b"junk"), 400, "pickle")
    assert_error(upload(api, "binary", "keep", model=linear_model.LinearRegression()), 400, "predict_proba_one")
    assert_error(upload(api, "multiclass", "keep", model=linear_model.LogisticRegression()), 400, "binary classifier")
    assert_error(upload(api, "regression", "keep", data=pickle.dumps(RunsShell(tmp_path / "x"))), 400, "system")
    assert state(api, "keep", x0) == before
    assert model_names(api) == ["keep"]


def test_upload_larger_than_the_limit(api, settings):
    data = dill.dumps(make_model("regression"))
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_UPLOAD_SIZE": len(data) - 1}
    assert_error(upload(api, "regression", "big", data=data), 413, "limit", str(len(data) - 1))
    assert_error(upload(api, "regression", None, data=data), 413, "limit")
    assert model_names(api) == []
    # Exactly at the limit is fine: the 413 above was the size, not the model.
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_UPLOAD_SIZE": len(data)}
    assert upload(api, "regression", "big", data=data).status_code == 201
    assert model_names(api) == ["big"]


def test_upload_that_declares_a_huge_length(api, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_UPLOAD_SIZE": 10_000}
    response = api.post("/api/model/regression/big/", data=b"x" * 10, content_type="application/octet-stream",
                        CONTENT_LENGTH=str(10**12))
    assert_error(response, 413, "limit", "10000")
    assert model_names(api) == []


def test_upload_with_a_content_length_that_is_not_a_number(api):
    response = api.post("/api/model/regression/x/", data=dill.dumps(make_model("regression")),
                        content_type="application/octet-stream", CONTENT_LENGTH="lots")
    assert_error(response, 400, "Content-Length")
    assert model_names(api) == []


# A model that raises while learning ----------------------------------------------------------


def test_model_raising_in_learn_one_is_a_400_and_changes_nothing(api, river_client):
    assert upload(api, "custom", "fragile", model=Fragile()).status_code == 201
    assert learn(api, "fragile", {"a": 1}, 2.0).status_code == 201
    assert learn(api, "fragile", {"a": 1}, 4.0).status_code == 201
    assert predict(api, "fragile", {"a": 1}).json()["prediction"] == 3.0

    # Fragile adds 100 to its mean and then raises: the server must undo that half-done learn.
    response = learn(api, "fragile", {"boom": 1}, 100.0)
    assert_error(response, 400, "ValueError", "cannot learn from boom=1", "unchanged")
    assert predict(api, "fragile", {"a": 1}).json()["prediction"] == 3.0
    assert n_learned(api, "fragile") == 2

    # Through the label route as well.
    identifier = predict(api, "fragile", {"boom": 2}).json()["identifier"]
    response = post_json(api, "/api/label/", {"model": "fragile", "identifier": identifier, "label": 50.0})
    assert_error(response, 400, "ValueError", "boom=2")
    assert predict(api, "fragile", {"a": 1}).json()["prediction"] == 3.0
    assert stats(api, "fragile")["label"]["n_calls"] == 0

    # Good learns go on working, from the state before the failures.
    assert learn(api, "fragile", {"a": 1}, 6.0).status_code == 201
    assert predict(api, "fragile", {"a": 1}).json()["prediction"] == 4.0
    assert n_learned(api, "fragile") == 3

    # Every replica agrees: one rebuilt from the store skips the rejected entries too...
    fresh = DjangoClient(store=river_client.store)
    assert fresh.predict("fragile", {"a": 1})["prediction"] == 4.0
    # ...and the downloaded model has learned exactly the three good targets.
    downloaded = pickle.loads(api.get("/api/model/download/fragile/").content)
    assert downloaded.mean.n == 3
    assert downloaded.predict_one({}) == 4.0


def test_river_model_raising_mid_pipeline_changes_nothing(api, river_client):
    assert upload(api, "regression", "reg").status_code == 201
    data = examples("regression", 30)
    for x, y in data[:20]:
        assert learn(api, "reg", x, y).status_code == 201
    x0, y0 = data[20]
    before = state(api, "reg", x0)

    # StandardScaler has updated some features when the string one makes it raise.
    bad = {**x0, list(x0)[-1]: "not a number"}
    response = learn(api, "reg", bad, y0)
    assert_error(response, 400, "raised on this input", "TypeError", "unchanged")
    assert state(api, "reg", x0) == before

    for x, y in data[21:]:
        assert learn(api, "reg", x, y).status_code == 201
    server = predict(api, "reg", x0).json()["prediction"]
    assert server != before[3]
    assert DjangoClient(store=river_client.store).predict("reg", x0)["prediction"] == server


# HTTP methods --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/api/learn/", "POST"),
    ("PUT", "/api/learn/", "POST"),
    ("DELETE", "/api/learn/", "POST"),
    ("GET", "/api/predict/", "POST"),
    ("PATCH", "/api/predict/", "POST"),
    ("GET", "/api/label/", "POST"),
    ("POST", "/api/metrics/", "GET"),
    ("DELETE", "/api/stats/", "GET"),
    ("POST", "/api/models/", "GET"),
    ("DELETE", "/api/models/", "GET"),
    ("GET", "/api/model/", "DELETE"),
    ("POST", "/api/model/", "DELETE"),
    ("PUT", "/api/model/reg/", "GET"),
    ("PATCH", "/api/model/reg/", "GET"),
    ("POST", "/api/model/download/reg/", "GET"),
    ("DELETE", "/api/model/download/reg/", "GET"),
    ("GET", "/api/model/regression/reg/", "POST"),
    ("PUT", "/api/model/regression/reg/", "POST"),
    ("DELETE", "/api/model/regression/reg/", "POST"),
    ("POST", "/api/", "GET"),
])
def test_wrong_method(api, reg, method, path, allowed):
    before = state(api, "reg", {"a": 1})
    response = api.generic(method, path, json.dumps({"model": "reg"}), content_type="application/json")
    assert_error(response, 405, f'"{method}" not allowed')
    assert allowed in response["Allow"]
    assert model_names(api) == ["reg"]
    assert state(api, "reg", {"a": 1}) == before


# DjangoClient raises the typed exceptions ------------------------------------------------------


def test_client_upload_errors(river_client, tmp_path, settings):
    good = dill.dumps(make_model("regression"))
    with pytest.raises(UnknownFlavor, match="nonsense"):
        river_client.upload_model(good, "nonsense")
    with pytest.raises(InvalidInput, match=NAME_ERROR):
        river_client.upload_model(good, "regression", model_name="../etc")
    with pytest.raises(InvalidModel, match="empty"):
        river_client.upload_model(b"", "regression")
    with pytest.raises(InvalidModel, match="not a readable pickle"):
        river_client.upload_model(good[: len(good) // 2], "regression")
    with pytest.raises(InvalidModel, match="predict_proba_one"):
        river_client.upload_model(linear_model.LinearRegression(), "binary")
    with pytest.raises(InvalidModel, match="binary classifier"):
        river_client.upload_model(linear_model.LogisticRegression(), "multiclass")
    with pytest.raises(UnsafeModel, match="system"):
        river_client.upload_model(pickle.dumps(RunsShell(tmp_path / "pwned")), "regression")
    assert not (tmp_path / "pwned").exists()
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_UPLOAD_SIZE": 16}
    with pytest.raises(PayloadTooLarge, match="limit of 16"):
        DjangoClient().upload_model(good, "regression")
    assert DjangoClient().models() == []
    assert (InvalidModel.status_code, UnknownFlavor.status_code, PayloadTooLarge.status_code) == (400, 400, 413)


def test_client_learn_predict_label_errors(river_client):
    river_client.upload_model(make_model("regression"), "regression", model_name="reg")
    for call in (lambda: river_client.learn("ghost", {"a": 1}, 1.0), lambda: river_client.predict("ghost", {"a": 1}),
                 lambda: river_client.metrics("ghost"), lambda: river_client.stats("ghost"),
                 lambda: river_client.get_model_json("ghost"), lambda: river_client.download_model("ghost"),
                 lambda: river_client.delete_model("ghost")):
        with pytest.raises(ModelNotFound, match="ghost"):
            call()
    with pytest.raises(InvalidInput, match=NAME_ERROR):
        river_client.learn("my model", {"a": 1}, 1.0)
    with pytest.raises(InvalidInput, match="features must be an object"):
        river_client.learn("reg", [1, 2], 1.0)
    with pytest.raises(InvalidInput, match="features must be an object"):
        river_client.learn("reg", None, 1.0)
    with pytest.raises(InvalidInput, match="features must be an object"):
        river_client.predict("reg", "a=1")
    with pytest.raises(InvalidInput, match="Feature 'a' must be"):
        river_client.predict("reg", {"a": {"b": 1}})
    with pytest.raises(InvalidInput, match="Feature 'a' is nan"):
        river_client.learn("reg", {"a": float("nan")}, 1.0)
    with pytest.raises(InvalidInput, match="ground_truth is inf"):
        river_client.learn("reg", {"a": 1.0}, float("inf"))
    with pytest.raises(InvalidInput, match="ground_truth for a regression model"):
        river_client.learn("reg", {"a": 1.0}, "abc")
    with pytest.raises(InvalidInput, match="ground_truth for a regression model"):
        river_client.learn("reg", {"a": 1.0}, 10**400)
    with pytest.raises(InvalidInput, match="ground_truth for a regression model"):
        river_client.learn("reg", {"a": 1.0}, 10**5000)  # too many digits for repr() in the message
    with pytest.raises(InvalidInput, match="ground_truth"):
        river_client.learn("reg", {"a": 1.0})
    with pytest.raises(InvalidInput, match="identifier"):
        river_client.predict("reg", {"a": 1.0}, identifier="i" * 201)
    with pytest.raises(IdentifierNotFound, match="nope"):
        river_client.label(1.0, "nope", "reg")
    identifier = river_client.predict("reg", {"a": 1.0})["identifier"]
    with pytest.raises(InvalidInput, match="label is required"):
        river_client.label(None, identifier, "reg")
    with pytest.raises(InvalidInput, match="label is nan"):
        river_client.label(float("nan"), identifier, "reg")
    with pytest.raises(InvalidInput, match="identifier"):
        river_client.label(1.0, "", "reg")
    assert river_client.label(1.0, identifier, "reg")["identifier"] == identifier
    assert river_client.stats("reg")["learn"]["n_calls"] == 0
    assert (ModelNotFound.status_code, IdentifierNotFound.status_code, InvalidInput.status_code) == (404, 404, 400)


def test_client_model_failure_is_model_failed(river_client):
    river_client.upload_model(Fragile(), "custom", model_name="fragile")
    river_client.learn("fragile", {"a": 1}, 2.0)
    with pytest.raises(ModelFailed, match="boom") as caught:
        river_client.learn("fragile", {"boom": True}, 10.0)
    assert caught.value.status_code == 400
    assert river_client.predict("fragile", {})["prediction"] == 2.0
    assert river_client.stats("fragile")["learn"]["n_calls"] == 1


# Routes that do not exist, bodies that are too big, rows with too many features -------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/api/nope/", "/api/model/a/b/c/", "/api/models/extra/", "/api/learn/extra/"])
def test_unknown_route_under_the_prefix_is_a_json_404(api, method, path):
    assert_error(api.generic(method, path), 404, path)


@pytest.mark.parametrize("path", ["/api/learn", "/api/predict", "/api/label"])
def test_missing_trailing_slash_is_a_json_404_with_advice_not_a_redirect(api, reg, path):
    x, y = examples("regression", 1)[0]
    response = post_json(api, path, {"model": "reg", "features": x, "ground_truth": y})
    assert_error(response, 404, f"{path}/")
    assert n_learned(api, "reg") == 5


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_body_larger_than_djangos_limit_is_a_413(api, reg, settings, content_type):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    padding = "x" * 20_000
    text = (json.dumps({"model": "reg", "features": {"a": padding}, "ground_truth": 1.0})
            if content_type == "application/json" else urlencode({"model": "reg", "features": padding}))
    assert_error(send(api, "POST", "/api/learn/", text, content_type=content_type), 413)
    assert n_learned(api, "reg") == 5


def test_sixteen_megabytes_of_junk_json_is_refused(api, reg):
    assert_error(send(api, "POST", "/api/learn/", b"[" * (16 * 1024 * 1024)), 413)


def test_too_many_features(api, reg, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_FEATURES": 50}
    features = {f"f{i}": 1.0 for i in range(51)}
    assert_error(learn(api, "reg", features, 1.0), 400, "features", "50")
    assert_error(predict(api, "reg", features), 400, "features", "50")
    assert predict(api, "reg", {f"f{i}": 1.0 for i in range(50)}).status_code == 201


def test_client_refuses_targets_nested_too_deeply(river_client):
    river_client.upload_model(Fragile(), "custom", "deep")
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="ground_truth is nested"):
        river_client.learn("deep", {"a": 1.0}, ground_truth=deep)
    identifier = river_client.predict("deep", {"a": 1.0})["identifier"]
    with pytest.raises(InvalidInput, match="label is nested"):
        river_client.label(deep, identifier, "deep")


def test_sixteen_megabytes_of_junk_as_a_model_is_a_400(api):
    junk = random.Random(16).randbytes(16 * 1024 * 1024)
    assert_error(upload(api, "regression", "junk", data=junk), 400, "not a readable pickle")
    assert model_names(api) == []
