"""Every error is JSON, with DEBUG on or off, even an unexpected one."""

from __future__ import annotations

import pytest

from django_river_ml.client import DjangoClient


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def assert_json_error(response, status):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"message"}
    assert b"<html" not in response.content.lower()


def test_client_errors_are_json(api, debug):
    assert_json_error(api.get("/api/no-such-route/"), 404)
    assert_json_error(api.post("/api/learn"), 404)
    assert_json_error(api.get("/api/learn/"), 405)
    assert_json_error(api.post("/api/learn/", "{oops", content_type="application/json"), 400)
    assert_json_error(api.get("/api/metrics/", {"model": "ghost"}), 404)
    assert_json_error(api.post("/api/model/no-such-flavor/"), 400)


def test_unexpected_error_is_a_json_500_without_details(api, debug, monkeypatch):
    def broken(self):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(DjangoClient, "models", broken)
    response = api.get("/api/models/")
    assert_json_error(response, 500)
    assert "secret internals" not in response.json()["message"]


@pytest.mark.parametrize("accept", ["text/event-stream", "text/html", "image/png"])
def test_unknown_route_is_a_json_404_whatever_the_accept_header(api, accept):
    assert_json_error(api.get("/api/stream/nothing/", HTTP_ACCEPT=accept), 404)
