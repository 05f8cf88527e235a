"""Many models: ``BENCH_MODELS`` (1,000) models of ~100 KB each on one server with 2 workers.

The site runs as ``make serve`` runs it but with ``BENCH_MANY_WORKERS`` (2) workers, the embedded store and
authentication on (the user's model quota raised to fit) and ``BENCH_MANY_REPLICA_BYTES`` (128 MiB) as
``REPLICA_MEMORY_BYTES``. A ``HoeffdingTreeRegressor`` is trained on
synthetic rows until it pickles to about ``BENCH_MODEL_BYTES`` (100 KB). ``BENCH_SANDBOXED`` of the models
(200; 20 with BENCH_QUICK; spread evenly over the names) are uploaded with the riverapi client
(``Client.upload_model``) from ``BENCH_CLIENTS`` processes at once: each upload goes through the
sandbox, about half a second of CPU for this tree, so the upload time is reported apart. The others are
created by server code (``DjangoClient(user=...).upload_model`` in one process with the server's
settings, one per core), which stores the same thing an upload stores (a snapshot; no worker keeps a replica), in a
fraction of the time. Then ``BENCH_MANY_WORKERS`` client processes touch the models in order,
``BENCH_PAIRS`` learn+predict pairs each (a pair: a learn request, then a predict request, timed
together; the first pair of a model in a worker loads it). The figure is the p99 of a pair for the last
``BENCH_BAND`` (100) models against the first 100: whether a server holding many models gets slower.
Also the workers' resident memory before the models are made, after the pairs on the first half of the
models and after all of them (Linux /proc): bounded by ``REPLICA_MEMORY_BYTES``, it stops growing.

``python -m bench.many`` runs it alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, Context, Row, big_model_bytes, percentile, progress, river_client, synthetic_rows

NAME = "many"
SERVERS = ("many",)


def _upload_some(task: tuple[str, dict, bytes, list[str]]) -> list[float]:
    """Upload ``blob`` under each name with the riverapi client; the seconds each took."""
    url, headers, blob, names = task
    client = river_client(url, headers)
    took = []
    for name in names:
        started = time.perf_counter()
        client.upload_model(blob, "regression", model_name=name)
        took.append(time.perf_counter() - started)
    return took


# Server code, in a process of its own with the server's settings: DjangoClient as the benchmark's user.
CREATE = """
import json, pickle, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from django_river_ml.client import DjangoClient
blob = open(sys.argv[1], "rb").read()
client = DjangoClient(user=get_user_model().objects.get(username=sys.argv[2]))
for name in json.load(open(sys.argv[3])):
    client.upload_model(pickle.loads(blob), "regression", model_name=name)
"""


def create_directly(ctx: Context, server, blob: bytes, names: list[str]) -> float:
    """Create the models with server code (no sandbox), one process per core; the seconds it took."""
    if not names:
        return 0.0
    path = ctx.scratch / "many-model.pkl"
    path.write_bytes(blob)
    started = time.perf_counter()
    parts = max(1, min(len(names), os.cpu_count() or 1))
    makers = []
    for n in range(parts):
        todo = ctx.scratch / f"many-names-{n}.json"
        todo.write_text(json.dumps(names[n::parts]))
        makers.append(subprocess.Popen([sys.executable, "-c", CREATE, str(path), "bench", str(todo)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       cwd=ROOT / "example_project", env=server.env))
    errors = [maker.communicate(timeout=3600)[1][-3000:] for maker in makers]
    errors = [error for maker, error in zip(makers, errors) if maker.returncode]
    if errors:
        raise RuntimeError(f"creating the models failed:\n{errors[0]}")
    return time.perf_counter() - started


def _touch(task: tuple[str, dict, list[tuple[int, str]], int, list]) -> list[tuple[int, float, int]]:
    """``pairs`` learn+predict pairs on each model in turn; (model index, pair milliseconds, failures) each."""
    import requests

    url, headers, models, pairs, rows = task
    session = requests.Session()
    session.trust_env = False
    timings = []
    for n, (index, name) in enumerate(models):
        for p in range(pairs):
            x, y = rows[(n * pairs + p) % len(rows)]
            started = time.perf_counter()
            learned = session.post(f"{url}/api/learn/", json={"model": name, "features": x, "ground_truth": y},
                                   headers=headers, timeout=60)
            predicted = session.post(f"{url}/api/predict/", json={"model": name, "features": x}, headers=headers,
                                     timeout=60)
            took = (time.perf_counter() - started) * 1000
            timings.append((index, took, (learned.status_code != 201) + (predicted.status_code not in (200, 201))))
    return timings


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    count, band = config.models, min(config.band, max(1, config.models // 2))
    blob = big_model_bytes(config.model_bytes)
    server = ctx.running("many")[0]
    headers = server.headers
    names = [f"many-{i:05d}" for i in range(count)]
    clients = config.clients
    step = max(1, round(count / max(1, min(count, config.sandboxed))))
    sandboxed = names[::step]
    direct = [name for i, name in enumerate(names) if i % step]
    touchers = config.many_workers  # one client per worker: latency, not queueing
    warm = [f"many-warm-{c}" for c in range(touchers)]  # a model of their own for every client, first
    rss_start = server.rss_bytes()
    created_seconds = create_directly(ctx, server, blob, direct + warm)
    progress(f"many: {len(direct)} models made by server code in {created_seconds:.0f} s")
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        started = time.perf_counter()
        uploads = pool.map(_upload_some, [(server.url, headers, blob, sandboxed[c::clients]) for c in range(clients)],
                           chunksize=1)
        upload_seconds = time.perf_counter() - started
    upload_times = [took for part in uploads for took in part]
    progress(f"many: {len(sandboxed)} uploads in {upload_seconds:.0f} s")
    rss_uploaded = server.rss_bytes()
    rows = synthetic_rows(200, seed=4)
    with multiprocessing.get_context("fork").Pool(touchers) as pool:
        # Warm-up: every client's connection, and the worker behind it, serve a model of their own first.
        pool.map(_touch, [(server.url, headers, [(-1, name)], 5, rows) for name in warm], chunksize=1)
        indexed = list(enumerate(names))
        rss_after = []  # after each half: does memory keep growing with the models served?
        touched = []
        for half in (indexed[:count // 2], indexed[count // 2:]):
            touched += pool.map(_touch, [(server.url, headers, half[c::touchers], config.pairs, rows)
                                         for c in range(touchers)], chunksize=1)
            rss_after.append(server.rss_bytes())
    rss_half, rss_end = rss_after
    timings = [timing for part in touched for timing in part]
    failures = sum(failed for _, _, failed in timings)
    if failures:
        ctx.notes.append(f"many: {failures} learn/predict requests not 2xx")
    first = [took for index, took, _ in timings if index < band]
    last = [took for index, took, _ in timings if index >= count - band]

    def mean_mb(sizes: dict[int, int]) -> float:
        return statistics.mean(sizes.values()) / 1e6 if sizes else float("nan")

    kept = set(rss_start) & set(rss_end)
    if kept != set(rss_end):
        ctx.notes.append("many: some workers were restarted during the run (RSS compares different processes)")
    kb = config.model_bytes // 1000
    what = (f"{count} models of {len(blob):,} bytes (pickled), {config.many_workers} workers, {touchers} client "
            f"processes, {config.pairs} learn+predict pairs per model")
    return [
        Row(f"upload of a ~{kb} KB tree (riverapi, sandbox), p50", statistics.median(upload_times), "s",
            note=f"{len(sandboxed)} uploads from {clients} processes in {upload_seconds:.0f} s (the other "
                 f"{len(direct)} models made by server code in {created_seconds:.0f} s); not in the pair latencies"),
        Row(f"learn+predict pair p50, last {band} of {count} models", percentile(last, 0.5), "ms",
            f"first {band} models", percentile(first, 0.5), note=what),
        Row(f"learn+predict pair p99, last {band} of {count} models", percentile(last, 0.99), "ms",
            f"first {band} models", percentile(first, 0.99), note="the figure: last/first p99"),
        Row("worker RSS after uploads and pairs (mean per worker)", mean_mb(rss_end), "MB",
            "worker RSS before", mean_mb(rss_start),
            note=f"after the uploads only: {mean_mb(rss_uploaded):.0f} MB; REPLICA_MEMORY_BYTES "
                 f"{config.many_replica_bytes / 2**20:.0f} MiB"),
        Row(f"worker RSS after pairs on all {count} models (mean per worker)", mean_mb(rss_end), "MB",
            f"after {count // 2}", mean_mb(rss_half), note="bounded by REPLICA_MEMORY_BYTES: about 1× once the "
            "budget is reached"),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
