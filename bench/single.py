"""Single learn and predict requests per second on a small and a ~100 KB model, against the framework floor.

The site runs as ``make serve`` runs it (gunicorn, uvicorn workers, ``make serve``'s worker count, the
embedded store, authentication on: every request carries a user's API token), with one more route from
bench/site.py: ``/bench/hello/``, a minimal DRF view (token authentication, a JSON body in, a tiny JSON
out) served by the same processes: the **DRF floor**. The **HTTP floor** is a hello-world ASGI app under
the same gunicorn and uvicorn workers (bench/hello.py). Client processes (``BENCH_CLIENTS``, keep-alive
``requests`` sessions) send for ``BENCH_SECONDS`` per measurement; the cases take turns for
``BENCH_ROUNDS`` rounds and each figure is the median. Server CPU per request (Linux /proc) is steadier
than requests per second on a busy machine.

``python -m bench.single`` runs it alone.
"""

from __future__ import annotations

import statistics

from bench.common import (SMALL, Clients, Context, Row, big_model_bytes, json_bodies, progress, small_model,
                          synthetic_rows, trump_rows, upload)

NAME = "single"
SERVERS = ("site", "hello")


def cases(ctx: Context) -> dict[str, tuple]:
    """name: (server, path, bodies) for every measurement, the models uploaded."""
    site, hello = ctx.running(*SERVERS)
    if "single-models" not in ctx.cache:
        upload(site, small_model(), "single-small")
        upload(site, big_model_bytes(ctx.config.model_bytes), "single-big")
        ctx.cache["single-models"] = True
    small = trump_rows()[:500]
    big = synthetic_rows(500, seed=3)
    predict_small = [{"model": "single-small", "features": x} for x, _ in small]
    return {
        "hello": (hello, "/", json_bodies(predict_small)),
        "drf": (site, "/bench/hello/", json_bodies(predict_small)),
        "learn small": (site, "/api/learn/",
                        json_bodies([{"model": "single-small", "features": x, "ground_truth": y} for x, y in small])),
        "predict small": (site, "/api/predict/", json_bodies(predict_small)),
        "learn big": (site, "/api/learn/",
                      json_bodies([{"model": "single-big", "features": x, "ground_truth": y} for x, y in big])),
        "predict big": (site, "/api/predict/", json_bodies([{"model": "single-big", "features": x} for x, _ in big])),
    }


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    measured = cases(ctx)
    results: dict[str, list[dict]] = {name: [] for name in measured}
    failures: list[str] = []
    with Clients(config.clients) as clients:
        for name, (server, path, bodies) in measured.items():  # warm-up: every worker loads the models
            clients.rate(server.url + path, getattr(server, "headers", {}), bodies, min(0.5, config.seconds))
        for turn in range(config.rounds):
            order = list(measured) if turn % 2 == 0 else list(reversed(measured))
            for name in order:
                server, path, bodies = measured[name]
                result = clients.rate(server.url + path, getattr(server, "headers", {}), bodies, config.seconds,
                                      server=server)
                results[name].append(result)
                if result["failures"]:
                    failures.append(f"{name}: {result['failures']} not 2xx ({result['failure']})")
            progress(f"single: round {turn + 1}/{config.rounds}")

    def rate(name: str) -> float:
        return statistics.median(result["requests_per_s"] for result in results[name])

    def cpu_ms(name: str) -> float:
        return statistics.median(1000 * result["cpu_seconds"] / result["requests"] for result in results[name])

    kb = config.model_bytes // 1000
    ctx.notes.extend(f"single: {failure}" for failure in failures)
    return [
        Row("HTTP floor: hello-world ASGI, same workers", rate("hello"), "req/s"),
        Row("DRF floor: minimal APIView, same server", rate("drf"), "req/s", "HTTP floor", rate("hello")),
        Row(f"learn, {SMALL}", rate("learn small"), "req/s", "DRF floor", rate("drf")),
        Row(f"predict, {SMALL}", rate("predict small"), "req/s", "DRF floor", rate("drf")),
        Row(f"learn, ~{kb} KB Hoeffding tree", rate("learn big"), "req/s", "DRF floor", rate("drf")),
        Row(f"predict, ~{kb} KB Hoeffding tree", rate("predict big"), "req/s", "DRF floor", rate("drf")),
        Row(f"server CPU per learn, {SMALL}", cpu_ms("learn small"), "ms", "DRF floor", cpu_ms("drf")),
        Row(f"server CPU per predict, {SMALL}", cpu_ms("predict small"), "ms", "DRF floor", cpu_ms("drf")),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
