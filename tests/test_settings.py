"""The settings object: defaults, DJANGO_RIVER_ML dict, environment overrides, system checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core import checks
from django.test import override_settings

import django_river_ml
from django_river_ml.settings import river_settings
from django_river_ml.storage import get_store


@pytest.fixture(autouse=True)
def fresh_settings():
    river_settings.reload()
    yield
    river_settings.reload()


def river_errors():
    return [message for message in checks.run_checks() if message.id == "django_river_ml.E001"]


def test_defaults():
    with override_settings(DJANGO_RIVER_ML={}):
        assert river_settings.URL_PREFIX == "api"
        assert river_settings.STORAGE_BACKEND == "shelve"
        assert river_settings.GENERATE_IDENTIFIERS is True
        assert river_settings.IDENTIFIER_TTL_SECONDS == 86400


def test_override_settings_is_seen_at_once():
    with override_settings(DJANGO_RIVER_ML={"GENERATE_IDENTIFIERS": False}):
        assert river_settings.GENERATE_IDENTIFIERS is False
    assert river_settings.GENERATE_IDENTIFIERS is True


def test_unknown_setting_name_is_an_error():
    with pytest.raises(AttributeError, match="NOT_A_SETTING"):
        river_settings.NOT_A_SETTING


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("STORAGE_BACKEND", "redis", "redis"),
    ("GENERATE_IDENTIFIERS", "false", False),
    ("GENERATE_IDENTIFIERS", "Yes", True),
    ("IDENTIFIER_TTL_SECONDS", "60", 60),
    ("ALLOWED_MODEL_MODULES", "mysite.models, other.models", ["mysite.models", "other.models"]),
    ("REDIS_URL", "redis://127.0.0.1:1/2", "redis://127.0.0.1:1/2"),
])
def test_environment_overrides_settings(monkeypatch, name, raw, expected):
    monkeypatch.setenv(f"DJANGO_RIVER_ML_{name}", raw)
    with override_settings(DJANGO_RIVER_ML={name: "something else"}):
        assert getattr(river_settings, name) == expected


@pytest.mark.parametrize(("name", "raw", "words"), [
    ("GENERATE_IDENTIFIERS", "maybe", "not a boolean"),
    ("IDENTIFIER_TTL_SECONDS", "a day", "not a whole number"),
])
def test_bad_environment_values_fail_the_system_check(monkeypatch, name, raw, words):
    monkeypatch.setenv(f"DJANGO_RIVER_ML_{name}", raw)
    river_settings.reload()
    errors = river_errors()
    assert len(errors) == 1
    assert f"DJANGO_RIVER_ML_{name}" in errors[0].msg and words in errors[0].msg


@pytest.mark.parametrize(("config", "words"), [
    ({"STORAGE_BACKEND": "mongo"}, "STORAGE_BACKEND"),
    ({"IDENTIFIER_TTL_SECONDS": 0}, "IDENTIFIER_TTL_SECONDS"),
    ({"SNAPSHOT_EVERY": "often"}, "SNAPSHOT_EVERY"),
    ({"STATS_EWM_ALPHA": 2}, "STATS_EWM_ALPHA"),
    ({"URL_PREFIX": "/api/"}, "URL_PREFIX"),
    ({"ALLOWED_MODEL_MODULES": "mysite"}, "ALLOWED_MODEL_MODULES"),
])
def test_bad_settings_fail_the_system_check(config, words):
    with override_settings(DJANGO_RIVER_ML=config):
        errors = river_errors()
        assert errors, config
        assert words in errors[0].msg


def test_good_settings_pass_the_system_check():
    with override_settings(DJANGO_RIVER_ML={"STORAGE_BACKEND": "redis", "URL_PREFIX": "ml/v1"}):
        assert river_errors() == []


def test_data_never_goes_into_the_package(settings, tmp_path):
    settings.BASE_DIR = tmp_path
    with override_settings(DJANGO_RIVER_ML={}):
        path = river_settings.shelve_path
        assert path == tmp_path / "river_ml_data" / "river-ml.sqlite3"
        assert Path(django_river_ml.__file__).parent not in path.parents


def test_store_follows_the_settings(tmp_path, redis_url):
    with override_settings(DJANGO_RIVER_ML={"DATA_DIR": str(tmp_path)}):
        store = get_store()
        assert store.backend_name == "shelve"
        assert store.path == tmp_path / "river-ml.sqlite3"
    with override_settings(DJANGO_RIVER_ML={"STORAGE_BACKEND": "redis", "REDIS_URL": redis_url}):
        assert get_store().backend_name == "redis"
        assert get_store().redis.ping()


@pytest.mark.parametrize("config", [
    {"AUTHENTICATED_VIEWS": ["lern"]},
    {"API_VIEWS_ENABLED": ["learn", "predcit"]},
    {"VIEW_RATE_LIMIT": {"lern": "10/second"}},
])
def test_unknown_route_names_fail_the_system_check(config):
    """A typo must not silently leave a route unprotected, unserved or unthrottled."""
    with override_settings(DJANGO_RIVER_ML=config):
        errors = river_errors()
    assert len(errors) == 1, errors
    setting, = config
    assert errors[0].msg.startswith(f"{setting} names ")
    from django_river_ml.urls import ROUTE_NAMES

    assert f"the route names are {', '.join(ROUTE_NAMES)}" in errors[0].msg


def test_a_typo_from_the_environment_stops_manage_py(monkeypatch):
    """DJANGO_RIVER_ML_AUTHENTICATED_VIEWS=lern: `manage.py check` fails instead of opening learn."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    monkeypatch.setenv("DJANGO_RIVER_ML_AUTHENTICATED_VIEWS", "lern")
    river_settings.reload()
    with pytest.raises(SystemCheckError, match="'lern', which is not a route name; the route names are service_info"):
        call_command("check")


def test_every_route_name_may_be_named():
    from django_river_ml.urls import ROUTE_NAMES

    assert {"service_info", "auth_token", "auth_token_realm", "learn", "model_access", "schema", "docs"} <= set(
        ROUTE_NAMES)
    every = list(ROUTE_NAMES)
    with override_settings(DJANGO_RIVER_ML={"AUTHENTICATED_VIEWS": every, "API_VIEWS_ENABLED": every,
                                            "VIEW_RATE_LIMIT": dict.fromkeys(every, "5/second")}):
        assert river_errors() == []


def test_documentation_url_is_this_sites_docs_page_unless_set(client):
    """Service info points at the docs of the version that runs (not an old release's repository)."""
    with override_settings(DJANGO_RIVER_ML={"DISABLE_AUTHENTICATION": True}):
        assert client.get("/api/").json()["documentationUrl"] == "http://testserver/api/docs/"
    with override_settings(DJANGO_RIVER_ML={"DOCUMENTATION_URL": "https://ml.example.com/docs/"}):
        assert client.get("/api/").json()["documentationUrl"] == "https://ml.example.com/docs/"
    with override_settings(DJANGO_RIVER_ML={"DOCUMENTATION_URL": "/handbook/"}):
        assert client.get("/api/").json()["documentationUrl"] == "http://testserver/handbook/"


@pytest.mark.parametrize("value", ["docs.example.com", 42])
def test_a_bad_documentation_url_fails_the_system_check(value):
    with override_settings(DJANGO_RIVER_ML={"DOCUMENTATION_URL": value}):
        errors = river_errors()
    assert len(errors) == 1 and "DOCUMENTATION_URL" in errors[0].msg


def test_documentation_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_RIVER_ML_DOCUMENTATION_URL", "https://ml.example.com/docs/")
    assert river_settings.documentation_url("http://h") == "https://ml.example.com/docs/"
