"""Shared fixtures: a real redis-server and Redis Cluster, the storage backends, live multi-worker servers."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import liveserver
import pytest
from redisservers import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
# The storage backends every API test runs on, named as service info's "storage" names them.
BACKENDS = ("shelve", "redis", "redis-cluster")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole test session."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster (3 masters, a replica each) on loopback ports, for the whole test session."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


def redis_settings(request, backend: str, prefix: str) -> dict:
    """The settings of a store on ``backend`` ("redis" or "redis-cluster"), under a key prefix of its own."""
    if backend == "redis-cluster":
        return {"REDIS_URL": request.getfixturevalue("redis_cluster").url, "REDIS_CLUSTER": True,
                "REDIS_KEY_PREFIX": f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"}
    return {"REDIS_URL": request.getfixturevalue("redis_url"),
            "REDIS_KEY_PREFIX": f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"}


@pytest.fixture(autouse=True)
def private_throttle_cache(settings):
    """Every test counts rate limits and failed authentications from zero, in this process only
    (the example site's file cache is shared by every process using its data directory)."""
    from django.core.cache import caches

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "tests"}}
    caches["default"].clear()


@pytest.fixture(params=BACKENDS)
def backend(request, settings, tmp_path):
    """Run the test once per storage backend, each with an empty store."""
    from django_river_ml.storage import get_store

    config = {"DATA_DIR": str(tmp_path / "data"), "ALLOWED_MODEL_MODULES": ["example_project.custom_models"],
              "STORAGE_BACKEND": "shelve", "DISABLE_AUTHENTICATION": True}
    if request.param != "shelve":
        config.update(STORAGE_BACKEND="redis", **redis_settings(request, request.param, "test"))
    settings.DJANGO_RIVER_ML = config
    store = get_store()  # empty: a data directory, a key prefix of its own
    yield request.param
    store.flush()


@pytest.fixture
def api(backend):
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def river_client(backend):
    from django_river_ml.client import DjangoClient

    return DjangoClient()


# The example site as `make serve` runs it (gunicorn with uvicorn workers on the ASGI app), on a free port:
# LiveServer(env, workers, workdir) from example_project/liveserver.py, which the benchmarks use too.
LiveServer = liveserver.LiveServer


@pytest.fixture
def live_server_factory(tmp_path, request):
    """Start live servers on a given backend; every one is stopped after the test."""
    servers: list[LiveServer] = []

    def start(backend: str, workers: int = 4, **overrides: str) -> LiveServer:
        # Stats written with every call: tests of other things read exact counts right after their calls
        # from any worker. The default (tallied, written every second) has tests of its own (test_callstats).
        river = {"STORAGE_BACKEND": "shelve", "DISABLE_AUTHENTICATION": "true", "STATS_FLUSH_SECONDS": "0"}
        if backend != "shelve":
            river.update(STORAGE_BACKEND="redis", **{name: str(value).lower() if isinstance(value, bool) else value
                                                    for name, value in redis_settings(request, backend, "live").items()})
        river.update(overrides)
        server = LiveServer(liveserver.site_environment(tmp_path, data_dir=tmp_path / "live-data"), workers, tmp_path,
                            river=river, migrate=str(river["DISABLE_AUTHENTICATION"]) != "true")  # users and tokens
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def published_client_path() -> Path:
    """Where `make test` installed the published riverapi 0.0.21 (kept apart from our own riverapi)."""
    path = Path(sys.prefix) / "published-riverapi"
    if not (path / "riverapi").is_dir():
        pytest.fail(f"The published riverapi 0.0.21 is not installed at {path}; run `make test`.")
    return path


@pytest.fixture
def scratch_dir():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)
