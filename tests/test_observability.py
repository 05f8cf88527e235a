"""Latency percentiles and call rates: tallied per process, added up exactly in the store, on both stores.

The live test at the end is the issue's: learns through a live 4-worker server, then the Prometheus
learn counter is exactly their number and the stats' percentiles are ordered and above zero.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter

import dill
import pytest
import requests
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from river import linear_model, preprocessing

from django_river_ml import callstats
from django_river_ml.callstats import BUCKET_BOUNDS_NS, Tally, bucket_of, percentile, slot_of
from django_river_ml.client import DjangoClient
from django_river_ml.storage import get_store
from flavored_models import examples
from test_prometheus import samples, value

QUANTILES = (0.5, 0.95, 0.99)
# Durations from well under the first bound to well past the last one.
DURATIONS = st.integers(1, 2 * BUCKET_BOUNDS_NS[-1])
# Each inner list: one process's calls between two of its writes to the store.
PROCESS_TALLIES = st.lists(st.lists(DURATIONS, min_size=1, max_size=30), min_size=1, max_size=6)


def tallied(durations: list[int]) -> Tally:
    tally = Tally()
    for duration in durations:
        tally.count(duration, 0.3)
    return tally


def exact_quantile(durations: list[int], q: float) -> int:
    """The rank-based quantile: the ceil(q * n)-th smallest duration."""
    ordered = sorted(durations)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def bucket_range(index: int) -> tuple[int, float]:
    lower = BUCKET_BOUNDS_NS[index - 1] if index else 0
    return lower, BUCKET_BOUNDS_NS[index] if index < len(BUCKET_BOUNDS_NS) else math.inf


def regression():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


# The histogram ------------------------------------------------------------------------------------


def test_the_buckets_are_log_spaced_with_sub_millisecond_resolution():
    assert list(BUCKET_BOUNDS_NS) == sorted(set(BUCKET_BOUNDS_NS))
    ratios = [upper / lower for lower, upper in zip(BUCKET_BOUNDS_NS, BUCKET_BOUNDS_NS[1:])]
    assert max(ratios) <= 1.5 and min(ratios) >= 1.3
    assert BUCKET_BOUNDS_NS[0] == 10_000 and BUCKET_BOUNDS_NS[-1] == 100 * 10**9
    assert sum(bound < 1_000_000 for bound in BUCKET_BOUNDS_NS) >= 12  # a dozen below a millisecond
    assert [bucket_of(d) for d in (0, 10_000, 10_001, 15_000, 100 * 10**9, 100 * 10**9 + 1)] == \
        [0, 0, 1, 1, len(BUCKET_BOUNDS_NS) - 1, len(BUCKET_BOUNDS_NS)]


@hypothesis_settings(max_examples=300, deadline=None)
@given(PROCESS_TALLIES)
def test_tallies_fold_into_the_histogram_of_every_call(processes):
    """However the calls were split between processes and writes, the buckets are those of all calls."""
    folded = tallied(processes[0])
    for durations in processes[1:]:
        folded = folded.then(tallied(durations))
    every_call = [d for durations in processes for d in durations]
    assert folded.buckets == tallied(every_call).buckets
    assert sum(folded.buckets.values()) == folded.calls == len(every_call)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(DURATIONS, min_size=1, max_size=200))
def test_percentiles_are_ordered_above_zero_and_in_the_bucket_of_the_exact_one(durations):
    buckets = tallied(durations).buckets
    estimates = [percentile(buckets, q) for q in QUANTILES]
    assert 0 < estimates[0] <= estimates[1] <= estimates[2]
    for q, estimate in zip(QUANTILES, estimates):
        lower, upper = bucket_range(bucket_of(exact_quantile(durations, q)))
        # Within the exact quantile's bucket (whose bounds are at most 1.5 times apart); past the last
        # bound the estimate is that bound, as Prometheus' histogram_quantile says.
        assert lower <= estimate <= min(upper, BUCKET_BOUNDS_NS[-1]), (q, estimate, lower, upper)


def test_no_calls_is_zero_and_one_call_is_within_its_bucket():
    assert percentile({}, 0.5) == 0.0
    for duration in (1, 250_000, 3 * 10**9):
        buckets = tallied([duration]).buckets
        lower, upper = bucket_range(bucket_of(duration))
        assert all(lower < percentile(buckets, q) <= upper for q in QUANTILES)


def test_the_stats_percentiles_are_prometheus_histogram_quantile():
    """Linear inside the bucket: 4 calls in (10 µs, 15 µs] and 4 in (15, 22]: the median is 15 µs, p75 18.5 µs."""
    buckets = {1: 4, 2: 4}
    assert percentile(buckets, 0.5) == 15_000
    assert percentile(buckets, 0.75) == 18_500


# Rates --------------------------------------------------------------------------------------------


def test_the_rate_counts_the_last_minute_of_slots():
    now = 1_000_000.0  # a slot boundary: the current slot has just begun
    current = slot_of(now)
    slots = {current: 30, current - 11: 30, current - 12: 1000, current - 100: 1000}  # the last two: out
    assert callstats.rate_per_second(slots, now) == pytest.approx(60 / 55)
    assert callstats.rate_per_second(slots, now + 4.0) == pytest.approx(60 / 59)
    assert callstats.rate_per_second({}, now) == 0.0


def test_a_young_models_rate_is_over_its_life_and_at_least_a_second():
    now = 1_000_000.0
    slots = {slot_of(now): 20}
    assert callstats.rate_per_second(slots, now, since=now - 4.0) == pytest.approx(5.0)
    assert callstats.rate_per_second(slots, now, since=now - 0.01) == pytest.approx(20.0)  # over 1 s, not 10 ms


# Both stores --------------------------------------------------------------------------------------


def new_model(store) -> str:
    name = f"m-{uuid.uuid4().hex[:12]}"
    store.create_model(name, "regression", str(uuid.uuid4()), b"snapshot")
    return name


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(processes=PROCESS_TALLIES)
def test_the_store_adds_every_processs_histogram_exactly(backend, processes):
    store = get_store()
    name = new_model(store)
    incarnation = store.model_info(name).incarnation
    for durations in processes:
        store.record_calls(name, incarnation, "predict", tallied(durations))
    stored = store.call_stats(name)["predict"]
    every_call = tallied([d for durations in processes for d in durations])
    assert dict(stored.buckets) == dict(every_call.buckets)
    assert stored.n_calls == sum(stored.buckets.values())
    for q in QUANTILES:
        assert percentile(stored.buckets, q) == percentile(every_call.buckets, q)
    assert store.delete_model(name)


def test_the_store_drops_slots_older_than_the_window(backend):
    store = get_store()
    name = new_model(store)
    incarnation = store.model_info(name).incarnation
    now = time.time()
    old = slot_of(now) - callstats.RATE_SLOTS - 5
    refused = tallied([1000] * 7)  # seven calls long ago, in a tally the store refused for a while
    refused.slots = Counter({old: 7})
    store.record_calls(name, incarnation, "learn", refused.then(tallied([1000] * 3)))  # with three calls now
    slots = store.call_stats(name)["learn"].slots
    assert old not in slots and sum(slots.values()) == 3
    assert store.call_stats(name)["learn"].n_calls == 10  # the calls are counted all the same
    store.delete_model(name)
    assert store.call_stats(name) == {}


def test_stats_have_ordered_percentiles_and_rates_on_both_stores(river_client):
    river_client.upload_model(regression(), "regression", model_name="timed")
    for x, y in examples("regression", 40):
        river_client.learn("timed", x, ground_truth=y)
        river_client.predict("timed", x)
    stats = river_client.stats("timed")
    for operation in ("learn", "predict"):
        answer = stats[operation]
        assert answer["n_calls"] == 40
        assert 0 < answer["p50_duration"] <= answer["p95_duration"] <= answer["p99_duration"]
        assert answer["p99_duration_human"].split()[-1] in ("ns", "µs", "ms", "s")
        assert answer["rate_per_second"] > 0
    assert stats["label"]["p50_duration"] == stats["label"]["p99_duration"] == 0
    assert stats["label"]["rate_per_second"] == 0.0
    assert set(stats["learn"]) >= {"n_calls", "mean_duration", "mean_duration_human", "ewm_duration",
                                   "ewm_duration_human"}  # what the published client reads


def test_the_stats_route_answers_the_new_keys(api):
    from django_river_ml.serializers import CallStatsSerializer

    DjangoClient().upload_model(regression(), "regression", model_name="routed")
    x, y = examples("regression", 1)[0]
    assert api.post("/api/learn/", {"model": "routed", "features": x, "ground_truth": y}, format="json").status_code \
        == 201
    learn = api.get("/api/stats/?model=routed").json()["learn"]
    assert set(learn) == set(CallStatsSerializer().fields)
    assert learn["n_calls"] == 1 and 0 < learn["p50_duration"] <= learn["p99_duration"]
    assert learn["rate_per_second"] > 0


def test_errors_are_counted_by_route_and_status_on_both_stores(api, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STATS_FLUSH_SECONDS": 30}  # held, then flushed
    store = get_store()
    statuses = [api.post("/api/learn/", {"model": "nowhere", "features": {"x": 1.0}, "ground_truth": 1.0},
                         format="json").status_code for _ in range(3)]
    statuses.append(api.post("/api/predict/", {"model": 5}, format="json").status_code)
    assert statuses[:3] == [404] * 3 and statuses[3] == 400
    callstats.flush(store)
    counts = get_store().error_counts()
    assert counts[("learn", 404)] == 3
    assert counts[("predict", 400)] == 1
    assert all(status >= 400 for _, status in counts)


# The live test -----------------------------------------------------------------------------

LEARNERS = 4
LEARNS_EACH = 50
FAILED_LEARNS = 5


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    answer = requests.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


@pytest.mark.live
@pytest.mark.parametrize("backend", ["shelve", "redis"])
def test_after_n_learns_on_four_workers_the_counter_is_n_and_percentiles_are_ordered(live_server_factory,
                                                                                     backend):
    # The default flush interval, not the live fixture's 0: tallies held by four workers, written by their threads.
    server = live_server_factory(backend, workers=4, STATS_FLUSH_SECONDS="1.0",
                                 PROMETHEUS_ALLOWED_ADDRESSES="127.0.0.1")
    assert requests.post(f"{server.url}/api/model/regression/counted/", data=dill.dumps(regression()),
                         timeout=60).status_code == 201
    acknowledged, failures = [0] * LEARNERS, []

    def learner(index: int) -> None:
        session = requests.Session()
        for i, (x, y) in enumerate(examples("regression", LEARNS_EACH)):
            answer = session.post(f"{server.url}/api/learn/",
                                  json={"model": "counted", "features": {**x, "from": float(index)}, "ground_truth": y},
                                  timeout=30)
            if answer.status_code == 201:
                acknowledged[index] += 1
            else:
                failures.append(f"{answer.status_code}: {answer.text[:200]}")
        for _ in range(FAILED_LEARNS if index == 0 else 0):
            session.post(f"{server.url}/api/learn/", json={"model": "nowhere", "features": {"x": 1.0},
                                                           "ground_truth": 1.0}, timeout=30)

    threads = [threading.Thread(target=learner, args=(index,)) for index in range(LEARNERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not failures, failures[:5]
    learned = sum(acknowledged)
    assert learned == LEARNERS * LEARNS_EACH

    # Each worker writes its tallies within a second: wait for all of them (never more than the learns).
    deadline = time.monotonic() + 60
    while True:
        found = scrape(server.url)
        counter = value(found, "river_ml_calls_total", model="counted", operation="learn")
        errors = value(found, "river_ml_errors_total", route="learn", status="404")
        if (counter, errors) == (learned, FAILED_LEARNS) or time.monotonic() > deadline:
            break
        assert counter is None or counter <= learned
        time.sleep(0.2)
    assert counter == learned
    assert errors == FAILED_LEARNS
    assert value(found, "river_ml_call_duration_seconds_count", model="counted", operation="learn") == learned
    assert value(found, "river_ml_call_duration_seconds_bucket", model="counted", operation="learn",
                 le="+Inf") == learned
    assert value(found, "river_ml_log_head", model="counted") == learned
    assert value(found, "river_ml_model_metric", model="counted", metric="MAE") is not None

    stats = requests.get(f"{server.url}/api/stats/", params={"model": "counted"}, timeout=30).json()["learn"]
    assert stats["n_calls"] == learned
    assert 0 < stats["p50_duration"] <= stats["p95_duration"] <= stats["p99_duration"]
    assert stats["rate_per_second"] > 0
