"""STORAGE_BACKEND: "shelve", "redis", or the dotted path of a Store subclass."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from custom_store import CountingStore
from django_river_ml.checks import check_settings
from django_river_ml.client import DjangoClient
from django_river_ml.settings import river_settings
from django_river_ml.storage import get_store, store_class
from django_river_ml.storage.shelve import ShelveStore
from flavored_models import examples, make_model


@pytest.fixture
def custom_store(settings, tmp_path):
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "STORAGE_BACKEND": "custom_store.CountingStore",
                                "DISABLE_AUTHENTICATION": True}
    return get_store()


def test_a_dotted_path_names_a_store_of_the_sites_own(custom_store, tmp_path):
    assert type(custom_store) is CountingStore
    assert custom_store.path == river_settings.shelve_path  # a shelve store gets the store file's path
    assert river_settings.problems() == [] and check_settings() == []
    before = CountingStore.created
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", model_name="counted")
    assert CountingStore.created == before + 1
    api = APIClient()
    (x, y), = examples("regression", 1)
    learned = api.post("/api/learn/", {"model": "counted", "features": x, "ground_truth": y}, format="json")
    assert learned.status_code == 201
    assert api.post("/api/predict/", {"model": "counted", "features": x}, format="json").status_code == 201
    assert client.stats("counted")["learn"]["n_calls"] == 1
    assert api.get("/api/").json()["storage"] == "counting-shelve"


def test_the_names_stay(settings, tmp_path):
    assert store_class("shelve") is ShelveStore
    assert store_class("redis").__name__ == "RedisStore"
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "STORAGE_BACKEND": "shelve"}
    assert type(get_store()) is ShelveStore


@pytest.mark.parametrize(("backend", "words"), [
    ("mongo", ["'mongo'", "shelve, redis", "dotted path"]),
    ("custom_store.NoSuchStore", ["cannot be imported", "NoSuchStore"]),
    ("no_such_module.Store", ["cannot be imported", "no_such_module"]),
    ("custom_store.NotAStore", ["not a subclass of django_river_ml.storage.Store"]),
    ("django_river_ml.storage.base.Store", ["does not implement", "create_model"]),
])
def test_a_store_that_cannot_be_is_a_system_check_error(settings, tmp_path, backend, words):
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "STORAGE_BACKEND": backend}
    errors = check_settings()
    assert [error.id for error in errors] == ["django_river_ml.E001"]
    assert all(word in errors[0].msg for word in words), errors[0].msg
    assert errors[0].msg.startswith(f"STORAGE_BACKEND is {backend!r}")
