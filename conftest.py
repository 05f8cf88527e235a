"""Doctests of the app's modules run against a throw-away embedded store."""

import pytest


@pytest.fixture(autouse=True)
def _doctest_store(request):
    if type(request.node).__name__ != "DoctestItem":
        yield
        return
    settings = request.getfixturevalue("settings")
    tmp_path = request.getfixturevalue("tmp_path")
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "ALLOWED_MODEL_MODULES": []}
    yield
