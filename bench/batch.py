"""Batch learn and predict rows per second through the server, against river's learn_one and predict_one
in this process on the same rows (the issue's throughput goal: batch learn ≥ 0.3×, batch predict ≥ 0.1×).

The site runs as ``make serve`` runs it (``make serve``'s worker count, ``BENCH_WORKERS`` or the
Makefile's WORKERS; the embedded store; authentication on), on the same machine as the clients:
``BENCH_CLIENTS`` processes, each sending ``BENCH_BATCH_ROWS``-row batches of TrumpApproval rows as JSON
(``{"model", "examples": [...]}``, with ``requests``) to one ``StandardScaler | LinearRegression`` for
``BENCH_SECONDS``, ``BENCH_ROUNDS`` times (median). Also the server's CPU seconds (all its processes,
Linux /proc) per 1,000 rows, against the in-process seconds per 1,000 rows.

``python -m bench.batch`` runs it alone.
"""

from __future__ import annotations

import statistics

from bench import floors
from bench.common import SMALL, Clients, Context, Row, json_bodies, progress, ratio_goal, small_model, trump_rows, upload

NAME = "batch"
SERVERS = ("site",)
MODEL = "batch-small"


def batches(rows: list, size: int, count: int = 4) -> list[list]:
    """``count`` batches of ``size`` rows, each starting further along the rows (cycling)."""
    return [[rows[(start * 250 + i) % len(rows)] for i in range(size)] for start in range(count)]


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    inprocess = floors.inprocess(ctx)["small"]
    site = ctx.site()
    upload(site, small_model(), MODEL)
    chosen = batches(trump_rows(), config.batch_rows)
    learn = json_bodies([{"model": MODEL, "examples": [{"features": x, "ground_truth": y} for x, y in batch]}
                         for batch in chosen])
    predict = json_bodies([{"model": MODEL, "examples": [{"features": x} for x, _ in batch]} for batch in chosen])
    results: dict[str, list[dict]] = {"learn": [], "predict": []}
    with Clients(config.clients) as clients:
        clients.rate(site.url + "/api/learn/", site.headers, learn[:1], min(0.5, config.seconds))  # warm-up
        for turn in range(config.rounds):
            for kind, bodies in (("learn", learn), ("predict", predict)):
                result = clients.rate(f"{site.url}/api/{kind}/", site.headers, bodies, config.seconds,
                                      rows=config.batch_rows, server=site)
                results[kind].append(result)
                if result["failures"]:
                    ctx.notes.append(f"batch {kind}: {result['failures']} not 2xx ({result['failure']})")
            progress(f"batch: round {turn + 1}/{config.rounds}")

    def median(kind: str, key: str) -> float:
        return statistics.median(result[key] for result in results[kind])

    def cpu_per_1000(kind: str) -> float:
        return statistics.median(1000 * result["cpu_seconds"] / result["rows"] for result in results[kind])

    rows_note = f"{config.batch_rows}-row JSON batches, {config.clients} client processes, {config.workers} workers"
    return [
        ratio_goal(Row(f"batch learn, {SMALL}", median("learn", "rows_per_s"), "rows/s", "in-process learn_one",
                       inprocess["learn"], note=rows_note), 0.3),
        ratio_goal(Row(f"batch predict, {SMALL}", median("predict", "rows_per_s"), "rows/s",
                       "in-process predict_one", inprocess["predict"], note=rows_note), 0.1),
        Row("server CPU per 1,000 rows, batch learn", cpu_per_1000("learn"), "s", "in-process learn_one",
            1000 / inprocess["learn"], note="all server processes (a batch is applied once per host: see docs/architecture.md)"),
        Row("server CPU per 1,000 rows, batch predict", cpu_per_1000("predict"), "s", "in-process predict_one",
            1000 / inprocess["predict"]),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
