"""REST throughput under ASGI (gunicorn + uvicorn workers, as ``make serve`` runs the site) against WSGI
(gunicorn's sync workers, as it ran before), measured in the same run.

Both servers serve the same site (bench/site.py: the example site plus the DRF floor ``/bench/hello/``)
with ``make serve``'s worker count, the embedded store and authentication on. The clients send single
learns and predicts to a ``StandardScaler | LinearRegression``, and requests to the DRF floor; the servers
take turns for ``BENCH_ROUNDS`` rounds of ``BENCH_SECONDS`` (median). Ratio = ASGI / WSGI, for requests per
second and for the server's CPU time per request (Linux /proc; steadier on a busy machine).

``python -m bench.rest_throughput`` runs it alone.
"""

from __future__ import annotations

import statistics

from bench.common import Clients, Context, Row, json_bodies, progress, small_model, trump_rows, upload

NAME = "rest_throughput"
SERVERS = ("site", "wsgi")
MODEL = "rest-small"


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    asgi, wsgi = ctx.running(*SERVERS)
    servers = {"ASGI": asgi, "WSGI": wsgi}
    for server in servers.values():
        upload(server, small_model(), MODEL)
    rows = trump_rows()[:500]
    predict = json_bodies([{"model": MODEL, "features": x} for x, _ in rows])
    cases = {"learn": ("/api/learn/", json_bodies([{"model": MODEL, "features": x, "ground_truth": y} for x, y in rows])),
             "predict": ("/api/predict/", predict), "DRF floor": ("/bench/hello/", predict)}
    results: dict[tuple[str, str], list[dict]] = {}
    with Clients(config.clients) as clients:
        for server in servers.values():
            for path, bodies in cases.values():
                clients.rate(server.url + path, server.headers, bodies, min(0.5, config.seconds))
        for turn in range(config.rounds):
            for case, (path, bodies) in cases.items():
                for name in sorted(servers, reverse=turn % 2 == 1):  # each goes first in turn
                    server = servers[name]
                    result = clients.rate(server.url + path, server.headers, bodies, config.seconds, server=server)
                    results.setdefault((case, name), []).append(result)
                    if result["failures"]:
                        ctx.notes.append(f"rest_throughput {name} {case}: {result['failures']} not 2xx "
                                         f"({result['failure']})")
            progress(f"rest_throughput: round {turn + 1}/{config.rounds}")

    def rate(case: str, name: str) -> float:
        return statistics.median(result["requests_per_s"] for result in results[(case, name)])

    def cpu_ms(case: str, name: str) -> float:
        return statistics.median(1000 * result["cpu_seconds"] / result["requests"] for result in results[(case, name)])

    return [row for case in cases for row in (
        Row(f"{case} under ASGI", rate(case, "ASGI"), "req/s", "WSGI (sync workers)", rate(case, "WSGI")),
        Row(f"server CPU per {case} request under ASGI", cpu_ms(case, "ASGI"), "ms", "WSGI (sync workers)",
            cpu_ms(case, "WSGI")),
    )]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
