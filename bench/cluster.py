"""Learn and predict requests per second with two app hosts on a Redis Cluster, against the same on one Redis.

Two hosts of the site (as ``make serve`` runs it: ``make serve``'s workers, authentication on) share one
redis-server; two more share a Redis Cluster of 3 masters with a replica each, whose writes are
acknowledged after a replica has them (``REDIS_WAIT_REPLICAS`` 1, the cluster's default; one Redis waits
for none). The client processes (``BENCH_CLIENTS``) alternate between the two hosts, single learns and
predicts spread over 8 ``StandardScaler | LinearRegression`` models (so on the cluster they live on
every master). The two stores take turns for ``BENCH_ROUNDS`` rounds of ``BENCH_SECONDS`` (median);
ratio = cluster / one Redis. On one machine the hosts, the nodes and the clients share its cores: the
figures show what the cluster costs a request, not what more machines would add.

``python -m bench.cluster`` runs it alone.
"""

from __future__ import annotations

import statistics

from bench.common import Clients, Context, Row, json_bodies, progress, small_model, trump_rows, upload

NAME = "cluster"
SERVERS = ("redis-a", "redis-b", "cluster-a", "cluster-b")
MODELS = [f"spread-{i}" for i in range(8)]


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    one_a, one_b, cluster_a, cluster_b = ctx.running(*SERVERS)
    stores = {"one Redis": (one_a, one_b), "Redis Cluster": (cluster_a, cluster_b)}
    for host, _ in stores.values():
        for name in MODELS:
            upload(host, small_model(), name)
    rows = trump_rows()[:496]
    cases = {
        "learn": ("/api/learn/", json_bodies([{"model": MODELS[i % len(MODELS)], "features": x, "ground_truth": y}
                                              for i, (x, y) in enumerate(rows)])),
        "predict": ("/api/predict/", json_bodies([{"model": MODELS[i % len(MODELS)], "features": x}
                                                  for i, (x, _) in enumerate(rows)])),
    }
    results: dict[tuple[str, str], list[dict]] = {}
    with Clients(config.clients) as clients:
        for hosts in stores.values():  # warm-up: every worker of both hosts loads the models
            for path, bodies in cases.values():
                clients.rate([host.url + path for host in hosts], hosts[0].headers, bodies, min(0.5, config.seconds))
        for turn in range(config.rounds):
            for case, (path, bodies) in cases.items():
                for store in sorted(stores, reverse=turn % 2 == 1):  # each goes first in turn
                    hosts = stores[store]
                    result = clients.rate([host.url + path for host in hosts], hosts[0].headers, bodies,
                                          config.seconds, server=list(hosts))
                    results.setdefault((case, store), []).append(result)
                    if result["failures"]:
                        ctx.notes.append(f"cluster {store} {case}: {result['failures']} not 2xx ({result['failure']})")
            progress(f"cluster: round {turn + 1}/{config.rounds}")

    def rate(case: str, store: str) -> float:
        return statistics.median(result["requests_per_s"] for result in results[(case, store)])

    def cpu_ms(case: str, store: str) -> float:
        return statistics.median(1000 * result["cpu_seconds"] / result["requests"]
                                 for result in results[(case, store)])

    return [row for case in cases for row in (
        Row(f"{case}, two hosts on a Redis Cluster (3+3, WAIT 1)", rate(case, "Redis Cluster"), "req/s",
            "two hosts on one Redis", rate(case, "one Redis")),
        Row(f"hosts' CPU per {case}, Redis Cluster", cpu_ms(case, "Redis Cluster"), "ms", "one Redis",
            cpu_ms(case, "one Redis")),
    )]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
