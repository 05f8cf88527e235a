"""The benchmark suite: ``make bench``, or ``python -m bench`` from the repository root.

Every benchmark is a module of this package with ``run(ctx) -> list[Row]``; each figure is compared to a
floor measured in the same run (ratio = value / floor), and the issue's goals are marked met or not.
Nothing is asserted: the suite is never part of ``make test`` (tests/test_bench.py only checks, with a
tiny configuration, that it runs and writes its results). The servers are started here, as ``make
serve`` starts the site (example_project/liveserver.py), on 127.0.0.1 with their own data.

Prints the table and writes ``bench-results/results.json`` and ``bench-results/results.md``; a benchmark
that fails is left out and noted, and the exit status is 1. ``python -m bench NAME...`` (or ``python -m
bench.MODULE``) runs some of them and writes ``bench-results/NAME.json`` and ``.md``.

- floors: river's learn_one / predict_one in this process (the small model and the ~100 KB tree).
- single: single learn / predict requests per second, small and ~100 KB model, against a minimal DRF
  view on the same server (itself against a hello-world ASGI app under the same workers).
- batch: batch learn / predict rows per second against in-process learn_one / predict_one (goals
  ≥ 0.3× and ≥ 0.1×), and the server's CPU per 1,000 rows.
- stream: live stream fan-out, 100 subscribers against 1 (goal: p99 < 250 ms, every event delivered once).
- many: 1,000 models of ~100 KB on a 2-worker server: learn+predict latency of the last 100 models against
  the first 100, and the workers' memory.
- upload: upload latency through the sandbox against unpickling in-process.
- rest_throughput: the site under ASGI (``make serve``) against WSGI (gunicorn's sync workers).
- cluster: learn / predict requests per second, two hosts on a Redis Cluster against two on one Redis.

Environment (full run / ``BENCH_QUICK=1``): BENCH_QUICK (a run of a minute or two), BENCH_WORKERS
(``make serve``'s workers: ``make bench`` passes its WORKERS), BENCH_CLIENTS (4), BENCH_SECONDS per
measurement (3 / 1.5), BENCH_ROUNDS (3 / 1), BENCH_BATCH_ROWS (1000), BENCH_MODEL_BYTES (100000),
BENCH_MODELS (1000 / 200), BENCH_BAND (100 / 50), BENCH_PAIRS per model (3 / 2), BENCH_SANDBOXED (200 / 20:
of the models, how many are uploaded through the sandbox), BENCH_MANY_WORKERS (2), BENCH_MANY_REPLICA_BYTES
(128 MiB / 32 MiB: that server's REPLICA_MEMORY_BYTES), BENCH_SUBSCRIBERS (100),
BENCH_LEARNS (200 / 100), BENCH_RATE (stream learns per second; 0: as fast as answered), BENCH_UPLOADS
(10 / 3), BENCH_ONLY (benchmark names, comma separated), BENCH_OUTPUT (bench-results).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from bench.common import Config, Context, Row, row_notes, text_table, write_results

BENCHMARKS = ("floors", "single", "batch", "stream", "many", "upload", "rest_throughput", "cluster")
# Modules whose names differ from the benchmark's.
MODULES = {"upload": "upload_latency", "stream": "stream_fanout"}


def main(names: list[str] | None = None) -> list[Row]:
    config = Config()
    chosen = list(names or config.only or BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; there are {', '.join(BENCHMARKS)}")
    started = time.time()
    print(f"benchmarks: {', '.join(chosen)} ({'quick' if config.quick else 'full'} run; {config.workers} server "
          f"workers like make serve, {config.clients} client processes)", flush=True)
    rows: list[Row] = []
    failed: list[str] = []
    modules = {name: importlib.import_module(f"bench.{MODULES.get(name, name)}") for name in chosen}
    with Context(config) as ctx:
        # Every server the chosen benchmarks use, started at once before anything is measured (idle
        # servers cost nothing meanwhile).
        wanted = [key for key in Context.SERVERS if any(key in module.SERVERS for module in modules.values())]
        print(f"starting servers: {', '.join(wanted) or 'none'}", flush=True)
        began = time.perf_counter()
        ctx.running(*wanted)
        print(f"   ({time.perf_counter() - began:.0f} s)", flush=True)
        for name, module in modules.items():
            began = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                produced = module.run(ctx)
            except Exception as error:  # noqa: BLE001 - one failed benchmark does not lose the others
                traceback.print_exc()
                failed.append(name)
                ctx.notes.append(f"{name} failed: {type(error).__name__}: {error}".splitlines()[0][:500])
                continue
            for row in produced:
                row.benchmark = name
            rows.extend(produced)
            print(text_table(produced), flush=True)
            print(f"   ({time.perf_counter() - began:.0f} s)", flush=True)
        notes = ctx.notes
    stem = "-".join(chosen) if names else "results"
    json_path, md_path = write_results(rows, config, started, notes, stem)
    print(f"\n{text_table(rows)}")
    for note in [*row_notes(rows), *notes]:
        print(f"- {note}")
    print(f"\n{time.time() - started:.0f} s; wrote {json_path} and {md_path}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:] or None)
