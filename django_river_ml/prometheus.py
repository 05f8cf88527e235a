"""Prometheus metrics, read from the store: the same numbers whichever worker or host is scraped.

Each worker counts its calls in memory and writes them to the store every ``STATS_FLUSH_SECONDS``
(:mod:`django_river_ml.callstats`), where every worker's counts are added up. So a scrape reads the
store through a custom collector, :class:`StoreCollector`, instead of counting in prometheus_client's
own metric objects. Those live in one process; its multiprocess mode adds up only the processes
that share one directory on one host (each writes files there, to be cleaned up when a worker
dies), while the store already adds up every worker of every host, exactly. Any worker answers a
scrape with the same counters, at most ``STATS_FLUSH_SECONDS`` behind the other workers' calls.

The families, every name starting ``river_ml_`` (docs/monitoring.md says more):

- ``calls_total{model, operation}``: the learn, predict and label calls that succeeded;
- ``call_duration_seconds{model, operation}``: their latencies, in the stats' histogram buckets;
- ``errors_total{route, status}``: calls of every route answered with an error;
- ``models``, ``model_info{model, flavor}``, ``log_head{model}``, ``snapshot_sequence{model}``;
- ``model_metric{model, metric}``: each model's metrics as ``/metrics/`` gives them.

- ``drift_detections_total{model}``: the drifts each model's detector found (docs/lifecycle.md);
- ``challenger_metric{model, challenger, metric}``: each challenger's metrics, beside its model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from django_river_ml import callstats
from django_river_ml.client import DRIFTS, STAT_OPERATIONS, DjangoClient
from django_river_ml.exceptions import RiverMLError
from django_river_ml.settings import river_settings
from django_river_ml.storage import CallStats, ModelInfo


@dataclass(frozen=True)
class Reading:
    """What one scrape read from the store, once, for every family."""

    client: DjangoClient
    models: list[ModelInfo]
    calls: dict[str, dict[str, CallStats]]  # model -> operation -> its stats


def read(client: DjangoClient) -> Reading:
    callstats.flush(client.store)  # this worker's own calls are in
    models = client.store.model_infos()
    return Reading(client, models, {info.name: client.store.call_stats(info.name) for info in models})


def histogram_buckets(buckets: Mapping[int, int]) -> list[tuple[str, int]]:
    """The store's bucket counts as Prometheus' cumulative ``(le, count)`` pairs, in seconds."""
    pairs, total = [], 0
    for index, bound in enumerate(callstats.BUCKET_BOUNDS_NS):
        total += buckets.get(index, 0)
        pairs.append((floatToGoString(bound / 1e9), total))
    pairs.append(("+Inf", total + buckets.get(len(callstats.BUCKET_BOUNDS_NS), 0)))
    return pairs


def drift_families(reading: Reading) -> Iterator[Metric]:
    drifts = CounterMetricFamily("river_ml_drift_detections", "Drifts the model's detector found.", labels=["model"])
    for name, operations in reading.calls.items():
        stats = operations.get(DRIFTS)
        drifts.add_metric([name], stats.n_calls if stats else 0)
    yield drifts


def call_families(reading: Reading) -> Iterator[Metric]:
    calls = CounterMetricFamily("river_ml_calls", "Calls that succeeded, of every worker.",
                                labels=["model", "operation"])
    durations = HistogramMetricFamily("river_ml_call_duration_seconds",
                                      "Time a call spent in the app (DjangoClient), of every worker.",
                                      labels=["model", "operation"])
    for name, operations in reading.calls.items():
        for operation in STAT_OPERATIONS:  # every one, from 0: rate() sees the first call
            stats = operations.get(operation) or CallStats(0, 0, 0.0)
            calls.add_metric([name, operation], stats.n_calls)
            durations.add_metric([name, operation], histogram_buckets(stats.buckets), stats.total_ns / 1e9)
    yield calls
    yield durations


def error_families(reading: Reading) -> Iterator[Metric]:
    errors = CounterMetricFamily("river_ml_errors", "Calls answered with an error, by route name and HTTP status.",
                                 labels=["route", "status"])
    for (route, status), n in sorted(reading.client.store.error_counts().items()):
        errors.add_metric([route, str(status)], n)
    yield errors


def model_families(reading: Reading) -> Iterator[Metric]:
    store = reading.client.store
    yield GaugeMetricFamily("river_ml_models", "Models in the store.", value=len(reading.models))
    info = GaugeMetricFamily("river_ml_model_info", "Each model, with its flavor (always 1).",
                             labels=["model", "flavor"])
    head = GaugeMetricFamily("river_ml_log_head", "Sequence number of the newest entry of the model's learn log.",
                             labels=["model"])
    snapshot = GaugeMetricFamily("river_ml_snapshot_sequence", "Sequence number of the model's newest snapshot "
                                 "(a starting worker replays the log after it).", labels=["model"])
    for model in reading.models:
        info.add_metric([model.name, model.flavor], 1)
        head.add_metric([model.name], model.head)
        seq = store.snapshot_seq(model.name, model.incarnation)
        if seq is not None:  # None: deleted since it was listed
            snapshot.add_metric([model.name], seq)
    yield from (info, head, snapshot)


def metric_families(reading: Reading) -> Iterator[Metric]:
    """Each model's metrics, from this worker's replica caught up with the log (PROMETHEUS_MODEL_METRICS)."""
    if not river_settings.PROMETHEUS_MODEL_METRICS:
        return
    gauge = GaugeMetricFamily("river_ml_model_metric", "The model's metrics (progressive validation), as "
                              "/metrics/ gives them.", labels=["model", "metric"])
    challenger_gauge = GaugeMetricFamily("river_ml_challenger_metric", "Each challenger's metrics, scored on the "
                                         "examples it learned beside its model.", labels=["model", "challenger", "metric"])
    for model in reading.models:
        try:
            found = reading.client.challengers(model.name)
        except RiverMLError:  # deleted since it was listed, or busy: the next scrape has it
            continue
        for labels, metrics, family in ([(model.name,), found["metrics"], gauge], *[
                ((model.name, challenger["name"]), challenger["metrics"], challenger_gauge)
                for challenger in found["challengers"]]):
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):  # None: not defined yet
                    family.add_metric([*labels, metric], value)
    yield gauge
    yield challenger_gauge


#: What a scrape exports: one function a group of families, each reading what it needs from the Reading.
FAMILIES: tuple[Callable[[Reading], Iterator[Metric]], ...] = (call_families, drift_families, error_families,
                                                                model_families, metric_families)


class StoreCollector(Collector):
    """Every family of :data:`FAMILIES`, from one reading of the store."""

    def __init__(self, client: DjangoClient | None = None):
        self.client = client or DjangoClient()

    def collect(self) -> Iterator[Metric]:
        reading = read(self.client)
        for families in FAMILIES:
            yield from families(reading)


def exposition(accept: str = "", client: DjangoClient | None = None) -> tuple[bytes, str]:
    """The scrape's body and content type: the text format, or OpenMetrics when ``accept`` asks for it."""
    encode, content_type = choose_encoder(accept)
    return encode(StoreCollector(client)), content_type
