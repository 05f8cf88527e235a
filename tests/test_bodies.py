"""How request bodies are read: their limits, bodies sent in chunks, a leading byte order mark.

- A batch may be up to MAX_BATCH_BYTES, as JSON as well as NDJSON; any other body (a single
  example, a malformed one) up to Django's DATA_UPLOAD_MAX_MEMORY_SIZE.
- A body sent with ``Transfer-Encoding: chunked`` and no Content-Length is read under ASGI (as
  ``make serve`` runs); a WSGI server cannot give it to Django, so there it is a JSON 411, never
  taken for an empty body.
- A leading UTF-8 byte order mark is skipped in JSON as in NDJSON.
"""

from __future__ import annotations

import asyncio
import codecs
import json

import pytest
import requests
from django.core.handlers.asgi import ASGIHandler
from django.test.client import FakePayload

from django_river_ml.client import DjangoClient
from flavored_models import examples, make_model

LEARN, PREDICT = "/api/learn/", "/api/predict/"
DJANGO_SAYS = "Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE."


def rows(n: int, width: int = 5) -> list[dict]:
    return [{"features": {f"f{j}": float(i + j) for j in range(width)}, "ground_truth": float(i)} for i in range(n)]


@pytest.fixture
def model(river_client):
    river_client.upload_model(make_model("regression"), "regression", "m")
    return "m"


def post(api, path: str, body: bytes | str, content_type: str = "application/json", **extra):
    return api.generic("POST", path, body, content_type=content_type, **extra)


class Unreadable:
    def read(self, *args):
        raise AssertionError("the body was read")

    readline = read


def seq(name: str = "m") -> int:
    return DjangoClient().registry.replica(name).seq


# Limits ----------------------------------------------------------------------------------------


def test_a_json_batch_over_djangos_limit_is_learned(api, model):
    body = json.dumps({"model": model, "examples": rows(8000, width=30)})
    assert len(body) > 3_000_000  # over Django's default 2.5 MB, under MAX_BATCH_BYTES
    answer = post(api, LEARN, body)
    assert answer.status_code == 201, answer.content[:300]
    assert answer.json() == {"model": model, "learned": 8000, "sequence": 1}


@pytest.mark.parametrize("route", [LEARN, PREDICT])
def test_only_a_batch_may_be_larger_than_djangos_limit(api, model, settings, route):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5_000
    batch = json.dumps({"model": model, "examples": rows(200)})
    assert len(batch) > 5_000
    assert post(api, route, batch).status_code in (200, 201)
    # A single example, or a body that is no batch at all, keeps Django's limit and words.
    single = json.dumps({"model": model, "features": {f"f{i}": float(i) for i in range(500)}, "ground_truth": 1.0})
    for body in (single, "[" * 10_000, '{"model": "m", "features": ' + " " * 6_000):
        answer = post(api, route, body)
        assert answer.status_code == 413 and answer.json() == {"message": DJANGO_SAYS}, answer.content[:200]


def test_a_batch_over_max_batch_bytes_is_refused_before_it_is_read(api, model, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_BATCH_BYTES": 10_000}
    body = json.dumps({"model": model, "examples": rows(200)}).encode()
    answer = post(api, LEARN, body)
    assert answer.status_code == 413 and "MAX_BATCH_BYTES" in answer.json()["message"]
    # A Content-Length over every limit is refused without reading a byte.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5_000
    answer = post(api, LEARN, b"", CONTENT_LENGTH="20000", CONTENT_TYPE="application/json",
                  **{"wsgi.input": Unreadable()})
    assert answer.status_code == 413 and "MAX_BATCH_BYTES" in answer.json()["message"]
    assert seq() == 0


# Bodies sent in chunks -----------------------------------------------------------------------------


def chunked(api, path: str, body: bytes, content_type: str):
    """What a WSGI server hands Django for a chunked body: no Content-Length (the body is there)."""
    return api.generic("POST", path, b"", CONTENT_TYPE=content_type, HTTP_TRANSFER_ENCODING="chunked",
                       **{"wsgi.input": FakePayload(body)})


@pytest.mark.parametrize(("path", "content_type", "body"), [
    (LEARN, "application/json", json.dumps({"model": "m", "features": {"x": 1.0}, "ground_truth": 1.0})),
    (LEARN + "?model=m", "application/x-ndjson", json.dumps({"features": {"x": 1.0}, "ground_truth": 1.0})),
    (PREDICT, "application/json", json.dumps({"model": "m", "features": {"x": 1.0}})),
    ("/api/model/regression/m2/", "application/json", json.dumps({"class": "linear_model.LinearRegression"})),
    ("/api/model/regression/m2/", "application/octet-stream", "not read"),
    ("/api/label/", "application/json", json.dumps({"model": "m", "identifier": "i", "label": 1.0})),
])
def test_under_wsgi_a_chunked_body_is_a_411_not_an_empty_body(api, model, path, content_type, body):
    answer = chunked(api, path, body.encode(), content_type)
    assert answer.status_code == 411, answer.content
    assert answer["Content-Type"] == "application/json"
    message = answer.json()["message"]
    assert "Transfer-Encoding: chunked" in message and "Content-Length" in message
    assert seq() == 0 and DjangoClient().models() == ["m"]


def asgi_post(path: str, chunks: list[bytes], content_type: str, query: str = "") -> tuple[int, dict]:
    """POST through Django's ASGI handler, the body in chunks and no Content-Length (as uvicorn gives it)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode()),
                    (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(ASGIHandler()(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def pieces(body: bytes, size: int = 7) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def test_under_asgi_chunked_bodies_are_read(model):
    (x, y), = examples("regression", 1)
    status, answer = asgi_post(LEARN, pieces(json.dumps({"model": model, "features": x, "ground_truth": y}).encode()),
                               "application/json")
    assert (status, answer["sequence"]) == (201, 1), answer
    ndjson = b"".join(json.dumps(row).encode() + b"\n" for row in rows(3))
    status, answer = asgi_post(LEARN, pieces(ndjson), "application/x-ndjson", query="model=m")
    assert (status, answer) == (201, {"model": "m", "learned": 3, "sequence": 2})
    status, answer = asgi_post(PREDICT, pieces(json.dumps({"model": model, "examples": rows(2)}).encode()),
                               "application/json")
    assert status == 200 and len(answer["predictions"]) == 2
    status, answer = asgi_post("/api/model/regression/chunked/", pieces(json.dumps(
        {"class": "linear_model.LinearRegression"}).encode()), "application/json")
    assert (status, answer) == (201, {"name": "chunked"})


def test_under_asgi_chunked_bodies_keep_their_limits(model, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    single = json.dumps({"model": model, "features": {f"f{i}": 1.0 for i in range(300)}, "ground_truth": 1.0})
    assert asgi_post(LEARN, pieces(single.encode(), 500), "application/json") == (413, {"message": DJANGO_SAYS})
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_BATCH_BYTES": 3_000}
    batch = json.dumps({"model": model, "examples": rows(100)}).encode()
    status, answer = asgi_post(LEARN, pieces(batch, 500), "application/json")
    assert status == 413 and "MAX_BATCH_BYTES" in answer["message"]
    status, answer = asgi_post(LEARN, [b""], "application/json")  # nothing in the chunks: no data
    assert (status, answer) == (400, {"message": "model: This field is required."})
    assert seq() == 0


@pytest.mark.live
def test_a_live_server_reads_chunked_bodies(live_server_factory):
    server = live_server_factory("shelve", workers=1)
    spec = json.dumps({"class": "linear_model.LinearRegression"}).encode()
    assert requests.post(f"{server.url}/api/model/regression/m/", data=iter([spec]),
                         headers={"Content-Type": "application/json"}, timeout=30).status_code == 201
    lines = [json.dumps(row).encode() + b"\n" for row in rows(50)]
    answer = requests.post(f"{server.url}/api/learn/?model=m", data=iter(lines),  # a generator: sent chunked
                           headers={"Content-Type": "application/x-ndjson"}, timeout=30)
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in answer.request.headers
    assert (answer.status_code, answer.json()) == (201, {"model": "m", "learned": 50, "sequence": 1})
    body = json.dumps({"model": "m", "features": {"f0": 1.0}}).encode()
    answer = requests.post(f"{server.url}/api/predict/", data=iter(pieces(body)),
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 201 and set(answer.json()) == {"model", "prediction", "identifier"}


# A leading byte order mark ----------------------------------------------------------------------------

BOM = codecs.BOM_UTF8


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_a_leading_byte_order_mark_is_skipped_in_json_as_in_ndjson(api, model, content_type):
    batch = rows(3)
    if content_type == "application/json":
        body = json.dumps({"model": model, "examples": batch}).encode()
    else:
        body = b"\n".join(json.dumps(row).encode() for row in batch)
    answer = post(api, LEARN + "?model=m", BOM + body, content_type=content_type)
    assert (answer.status_code, answer.json()) == (201, {"model": "m", "learned": 3, "sequence": 1})


def test_a_byte_order_mark_anywhere_else_is_malformed_in_both(api, model):
    good = json.dumps(rows(1)[0]).encode()
    answer = post(api, LEARN + "?model=m", good + b"\n" + BOM + good, content_type="application/x-ndjson")
    assert answer.status_code == 400 and answer.json()["message"].startswith("Line 2 is not JSON"), answer.content
    answer = post(api, LEARN, b'{"model": ' + BOM + b'"m", "features": {"x": 1}, "ground_truth": 1}')
    assert answer.status_code == 400 and "JSON parse error" in answer.json()["message"]
    answer = post(api, PREDICT, BOM + BOM + b'{"model": "m", "features": {"x": 1}}')
    assert answer.status_code == 400 and "JSON parse error" in answer.json()["message"]
    assert seq() == 0
    answer = post(api, PREDICT, BOM + b'{"model": "m", "features": {"x": 1}}')  # one, leading: fine
    assert answer.status_code == 201


# Bodies are read by orjson where it reads them as Python's json module does (views/api.py, fast_json) ---------


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_an_integer_past_64_bits_stays_an_integer(api, river_client, content_type):
    """orjson would read 10**22 + 1 as the float 1e+22: a classifier would learn another label."""
    river_client.upload_model(make_model("multiclass"), "multiclass", "big")
    label = 10**22 + 1
    examples = [{"features": {"x": 1.0}, "ground_truth": label}, {"features": {"x": 2.0}, "ground_truth": 3}]
    if content_type == "application/json":
        body = json.dumps({"model": "big", "examples": examples})
    else:
        body = "\n".join(json.dumps(example) for example in examples)
    assert post(api, LEARN + "?model=big", body, content_type=content_type).status_code == 201
    answer = post(api, PREDICT, json.dumps({"model": "big", "features": {"x": 1.0}}))
    assert set(answer.json()["prediction"]) == {str(label), "3"}, answer.content


@pytest.mark.parametrize("body", [
    b'{"model": "m", "features": {"x": NaN}, "ground_truth": 1}',           # refused by both
    b'{"model": "m", "features": {"x": 1e999}, "ground_truth": 1}',         # infinity: refused by the checks
    b'{"model": "m", "features": {"\\ud800": 1}, "ground_truth": 1}',       # a lone surrogate: json reads it
    b'{"model": "m", "features": {"x": 1}, "ground_truth": 1',              # cut short
])
def test_what_orjson_refuses_is_answered_as_before(api, model, body):
    answer = post(api, LEARN, body)
    expected = {b"NaN": 400, b"1e999": 400, b"ud800": 201, b"cut": 400}
    key = next((k for k in expected if k in body), b"cut")
    assert answer.status_code == expected[key], (body, answer.status_code, answer.content)
    if answer.status_code == 400:
        assert answer.json()["message"], answer.content
