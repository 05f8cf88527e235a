"""Upload latency through the sandbox, against loading the same bytes in-process (the unsafe floor).

In this process (Django set up with the example site's settings, a scratch data directory): the sandbox
(django_river_ml.sandbox: a confined process that unpickles and tries the upload, and the rebuild from
its model data here) loads the small model's dill pickle and the ~100 KB tree's pickle,
``BENCH_UPLOADS`` times each (median), against ``dill.loads`` of the same bytes.

``python -m bench.upload_latency`` runs it alone.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import SMALL, Context, Row, big_model_bytes, small_model, trump_rows

NAME = "upload"
SERVERS = ()


def timed(function, rounds: int) -> float:
    """Median milliseconds of ``function()`` over ``rounds`` calls."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def setup_django(ctx: Context) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
        os.environ.setdefault("DJANGO_RIVER_ML_DATA_DIR", str(ctx.scratch / "upload-data"))
        django.setup()


def run(ctx: Context) -> list[Row]:
    import dill

    setup_django(ctx)
    from django_river_ml.sandbox import Sandbox

    rounds = ctx.config.uploads
    model = small_model()
    for x, y in trump_rows()[:50]:
        model.learn_one(x, y)
    cases = {SMALL: (dill.dumps(model), "regression"),
             f"~{ctx.config.model_bytes // 1000} KB Hoeffding tree": (big_model_bytes(ctx.config.model_bytes),
                                                                     "regression")}
    sandbox = Sandbox()
    try:
        started = time.perf_counter()
        sandbox.start()
        start_ms = (time.perf_counter() - started) * 1000
        rows = [Row("sandbox start (once per server process)", start_ms, "ms")]
        for name, (data, flavor) in cases.items():
            floor = timed(lambda data=data: dill.loads(data), rounds)  # noqa: S301 - our own bytes, to compare
            sandboxed = timed(lambda data=data, flavor=flavor: sandbox.load(data, flavor), rounds)
            rows.append(Row(f"upload load in the sandbox, {name} ({len(data) // 1000} KB)", sandboxed, "ms",
                            "dill.loads in-process", floor))
    finally:
        sandbox.close()
    return rows


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
