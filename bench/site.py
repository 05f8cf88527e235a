"""The example site's settings plus one route, ``/bench/hello/``: a minimal DRF view, the framework floor
served by the same server (and the same settings, middleware and worker) as the River API."""

from example_project.settings import *  # noqa: F403 - the example site, as `make serve` serves it

ROOT_URLCONF = "bench.urls"
