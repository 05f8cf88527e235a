"""``manage.py river_ingest``: a Redis stream learned exactly once per entry, on both model stores.

The stream lives on the suite's redis-server whatever the store. In-process tests drive
:class:`~django_river_ml.ingest.Ingester` a step at a time (a crash between learning and acknowledging,
regrouped batches, bad entries, store outages); the others run the real command in subprocesses and
kill them.
"""

from __future__ import annotations

import bisect
import json
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import ModelFailed, NotSupported, StorageUnavailable
from django_river_ml.ingest import Ingester, Stopped, example_of, idempotency_key
from django_river_ml.storage.base import Store
from django_river_ml.storage.shelve import ShelveStore
from example_project.custom_models import Fragile, RunningMean
from liveserver import SITE, site_environment, wait_until

SUMMARY = re.compile(r"stopped: learned (\d+), duplicates (\d+), failed (\d+)")


@pytest.fixture
def stream(redis_url):
    """A stream of its own on the suite's redis-server (deleted after the test), and the client to it."""
    client = redis.Redis.from_url(redis_url)
    name = f"ingest-{uuid.uuid4().hex[:12]}"
    yield name, client
    client.delete(name, f"{name}:dead")


def produce(client: redis.Redis, stream: str, entries: list[dict]) -> list[str]:
    """XADD each entry (values that are not strings as JSON), in order; their ids."""
    pipe = client.pipeline(transaction=False)
    for entry in entries:
        pipe.xadd(stream, {k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()})
    return [entry_id.decode() for entry_id in pipe.execute()]


def examples(model: str, n: int, start: int = 0) -> list[dict]:
    return [{"model": model, "features": {"x": i}, "ground_truth": float(i)} for i in range(start, start + n)]


def learned(client: DjangoClient, model: str) -> int:
    """How many examples the model has learned, from its own state (RunningMean counts them)."""
    replica = client.registry.replica(model)
    with replica.lock:
        return int(replica.model.mean.n)


def pending(client: redis.Redis, stream: str, group: str) -> int:
    return client.xpending(stream, group)["pending"]


def ingester(stream_name: str, client: redis.Redis, consumer: str = "c1", **options) -> Ingester:
    return Ingester(client, stream_name, "g", consumer, block_ms=10, report=lambda line: None, **options)


# In-process: one step at a time ------------------------------------------------------------


def test_entries_are_learned_in_batches_and_acknowledged(river_client, stream):
    name, client = stream
    river_client.upload_model(RunningMean(), "custom", "a")
    river_client.upload_model(RunningMean(), "custom", "b")
    produce(client, name, examples("a", 30) + examples("b", 5) + examples("a", 10, start=30))
    worker = ingester(name, client, batch=100)
    worker._create_group()
    assert worker.step(worker._read(">")) == 45
    assert (learned(river_client, "a"), learned(river_client, "b")) == (40, 5)
    assert pending(client, name, "g") == 0
    assert (worker.counts.learned, worker.counts.duplicates, worker.counts.failed) == (45, 0, 0)
    # Three runs of one model, three batches: a's log has two entries, b's one.
    assert river_client.store.model_info("a").head == 2 and river_client.store.model_info("b").head == 1


def test_an_ingester_killed_before_it_acknowledges_does_not_learn_twice(river_client, stream, monkeypatch):
    name, client = stream
    river_client.upload_model(RunningMean(), "custom", "m")
    produce(client, name, examples("m", 50))
    first = ingester(name, client, batch=20)
    first._create_group()

    def killed(reads):
        raise SystemExit("killed between learning and XACK")

    monkeypatch.setattr(first, "_acknowledge", killed)
    with pytest.raises(SystemExit):
        first.step(first._read(">"))
    assert learned(river_client, "m") == 20 and pending(client, name, "g") == 20  # learned, not acknowledged

    again = ingester(name, client, batch=20)  # the same consumer, restarted: its pending entries first
    assert again.step(again._read("0")) == 20
    assert (again.counts.learned, again.counts.duplicates) == (0, 20)
    assert learned(river_client, "m") == 20 and pending(client, name, "g") == 0
    while again.step(again._read(">")):
        pass
    assert learned(river_client, "m") == 50 and again.counts.learned == 30


def test_another_consumer_takes_over_stale_entries_and_learns_each_once(river_client, stream):
    name, client = stream
    river_client.upload_model(RunningMean(), "custom", "m")
    produce(client, name, examples("m", 30))
    dead = ingester(name, client, consumer="dead", batch=30)
    dead._create_group()
    assert len(dead._read(">")) == 30
    # It had learned the first ten, as a batch of their own, when it died.
    river_client.learn_many("m", [example_of(name, entry_id.decode(), fields)[1]
                                  for entry_id, fields in client.xrange(name, count=10)])
    assert learned(river_client, "m") == 10 and pending(client, name, "g") == 30

    other = ingester(name, client, consumer="other", batch=100, claim_idle_ms=1)
    time.sleep(0.01)
    assert other.step(other._claimed()) == 30  # cut into one batch of 30: the ten learned are left out
    assert (other.counts.learned, other.counts.duplicates) == (20, 10)
    assert learned(river_client, "m") == 30 and pending(client, name, "g") == 0


def test_bad_entries_go_to_the_dead_letters_and_the_others_are_learned(river_client, stream):
    name, client = stream
    river_client.upload_model(Fragile(), "custom", "m")
    entries = examples("m", 3) + [
        {"model": "m", "features": {"boom": 1}, "ground_truth": 1.0},   # the model raises: its batch is refused
        {"model": "nobody", "features": {"x": 1}, "ground_truth": 1.0},  # no such model
        {"model": "m", "features": "{not json", "ground_truth": "1"},
        {"model": "m", "features": {"x": 1}, "ground_truth": "NaN"},   # JSON refuses NaN
        {"model": "m", "features": {"x": 1}, "ground_truth": 1.0, "colour": "red"},  # unknown field
        {"features": {"x": 1}, "ground_truth": 1.0},  # no model
        {"model": "m", "features": [1, 2], "ground_truth": 1.0},  # features not an object
        {"model": "m", "ground_truth": 1.0, "identifier": "never-predicted"},  # no such prediction to learn
    ] + examples("m", 3, start=3)
    ids = produce(client, name, entries)
    client.xadd(name, {"model": "m", "features": b"\xff", "ground_truth": "1"})  # not UTF-8
    worker = ingester(name, client, batch=100)
    worker._create_group()
    worker.step(worker._read(">"))
    assert learned(river_client, "m") == 6 and worker.counts.learned == 6 and worker.counts.failed == 9
    assert pending(client, name, "g") == 0  # every entry acknowledged, the failed ones too
    dead = {fields[b"entry"].decode(): fields[b"error"].decode() for _, fields in client.xrange(f"{name}:dead")}
    assert set(dead) == set(ids[3:11]) | {client.xrevrange(name, count=1)[0][0].decode()}
    assert "cannot learn from boom=1" in dead[ids[3]] and "No model named 'nobody'" in dead[ids[4]]
    assert "not JSON" in dead[ids[5]] and "not JSON" in dead[ids[6]] and "unknown field 'colour'" in dead[ids[7]]
    assert "no model field" in dead[ids[8]] and "features must be an object" in dead[ids[9]]
    assert "No pending prediction 'never-predicted'" in dead[ids[10]]
    assert all(not message.startswith("Example") for message in dead.values())  # about the entry, not a batch row
    original = client.xrange(f"{name}:dead", count=1)[0][1]
    assert original[b"model"] == b"m" and json.loads(original[b"features"]) == {"boom": 1}  # the entry, as it was


def test_a_batch_refused_without_naming_an_entry_is_learned_entry_by_entry(river_client, stream, monkeypatch):
    """Another worker may find first that the model raises on a batch: this one learns only that it was rejected,
    not which entry made it. Each entry is then learned on its own, and only the bad one fails."""
    name, client = stream
    river_client.upload_model(Fragile(), "custom", "m")
    produce(client, name, examples("m", 2) + [{"model": "m", "features": {"boom": 1}, "ground_truth": 1.0}]
            + examples("m", 2, start=2))
    worker = ingester(name, client)
    worker._create_group()
    real = worker.client.learn_many

    def rejected_elsewhere(model, rows):
        if len(rows) > 1 and any("boom" in (row.get("features") or {}) for row in rows):
            raise ModelFailed("The model raised on this input (RejectedElsewhere: another worker found that the "
                              "model raises on it); it was left unchanged.")
        return real(model, rows)

    monkeypatch.setattr(worker.client, "learn_many", rejected_elsewhere)
    worker.step(worker._read(">"))
    assert (worker.counts.learned, worker.counts.failed) == (4, 1) and learned(river_client, "m") == 4
    assert b"cannot learn from boom=1" in client.xrange(f"{name}:dead")[0][1][b"error"]


def test_a_rejected_entry_is_tried_again_after_a_crash_and_fails_again(river_client, stream, monkeypatch):
    """The keys of a learn the model rejected do not count: after a crash the entry is learned anew (and fails)."""
    name, client = stream
    river_client.upload_model(Fragile(), "custom", "m")
    produce(client, name, examples("m", 2) + [{"model": "m", "features": {"boom": 1}, "ground_truth": 1.0}])
    first = ingester(name, client, batch=10)
    first._create_group()
    monkeypatch.setattr(first, "_acknowledge", lambda reads: None)
    first.step(first._read(">"))
    assert learned(river_client, "m") == 2 and first.counts.learned == 2
    again = ingester(name, client, batch=10)
    again.step(again._read("0"))
    assert (again.counts.learned, again.counts.duplicates, again.counts.failed) == (0, 2, 1)
    assert learned(river_client, "m") == 2 and client.xlen(f"{name}:dead") == 1


def test_a_store_outage_is_waited_out_and_nothing_is_acknowledged_before(river_client, stream, monkeypatch):
    name, client = stream
    river_client.upload_model(RunningMean(), "custom", "m")
    produce(client, name, examples("m", 5))
    worker = ingester(name, client)
    worker._create_group()
    real, calls = worker.client.learn_many, []

    def flaky(model, rows):
        calls.append(pending(client, name, "g"))
        if len(calls) < 3:
            raise StorageUnavailable("The model store (Redis) cannot be reached.")
        return real(model, rows)

    monkeypatch.setattr(worker.client, "learn_many", flaky)
    monkeypatch.setattr("django_river_ml.ingest.RETRY_SECONDS", (0.01,))
    worker.step(worker._read(">"))
    assert calls == [5, 5, 5] and learned(river_client, "m") == 5 and pending(client, name, "g") == 0

    produce(client, name, examples("m", 5, start=5))  # told to stop while it waits: the batch stays pending
    calls.clear()
    monkeypatch.setattr(worker.client, "learn_many", lambda model, rows: (worker.stop.set(), flaky(model, rows))[1])
    with pytest.raises(Stopped):
        worker.step(worker._read(">"))
    assert learned(river_client, "m") == 5 and pending(client, name, "g") == 5


def test_a_store_that_records_no_keys_is_refused_at_once(stream, tmp_path, settings):
    class Keyless(ShelveStore):
        backend_name = "keyless"
        append_keyed, known_keys = Store.append_keyed, Store.known_keys

    name, client = stream
    with pytest.raises(NotSupported, match="keyless"):
        Ingester(client, name, "g", "c", client=DjangoClient(store=Keyless(tmp_path / "keyless.sqlite3")))


def test_keys_name_the_stream_and_the_entry(stream):
    name, client = stream
    assert idempotency_key(name, "1-0") == f"{name}:1-0"
    with pytest.raises(Exception, match="visible ASCII"):
        Ingester(client, "a stream with spaces", "g", "c")
    with pytest.raises(Exception, match="at most|1 to"):
        Ingester(client, "s" * 200, "g", "c")


# The command, in subprocesses -----------------------------------------------------------------


def command(stream_name: str, redis_url: str, consumer: str, *extra: str) -> list[str]:
    return [sys.executable, "manage.py", "river_ingest", "--redis-url", redis_url, "--stream", stream_name,
            "--group", "g", "--consumer", consumer, "--block", "100", "--report", "0", *extra]


class Ingesters:
    """``manage.py river_ingest`` subprocesses with the test's store settings; every one is ended after the test."""

    def __init__(self, backend: str, settings, workdir: Path):
        river = settings.DJANGO_RIVER_ML
        self.env = site_environment(workdir, data_dir=river["DATA_DIR"])
        self.env.update({f"DJANGO_RIVER_ML_{key}": str(river[key]) for key in
                         ("STORAGE_BACKEND", "REDIS_URL", "REDIS_KEY_PREFIX", "REDIS_CLUSTER") if key in river})
        self.workdir, self.processes = workdir, []

    def start(self, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"ingest-{len(self.processes)}.log", "w+")
        process = subprocess.Popen(args, cwd=SITE, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        process.log = log
        self.processes.append(process)
        return process

    @staticmethod
    def output(process: subprocess.Popen) -> str:
        process.log.flush()
        return Path(process.log.name).read_text()

    def stop(self, process: subprocess.Popen) -> tuple[int, int, int]:
        """SIGTERM; it must exit 0 with its summary line: (learned, duplicates, failed)."""
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, self.output(process)
        found = SUMMARY.search(self.output(process))
        assert found, self.output(process)
        return tuple(map(int, found.groups()))

    def wait(self, check, what: str, timeout: float = 60) -> None:
        """``wait_until``, failing with what the ingesters wrote."""
        try:
            wait_until(check, timeout, what)
        except RuntimeError as error:
            logs = "\n".join(f"--- ingester {i} ---\n{self.output(p)[-3000:]}" for i, p in enumerate(self.processes))
            raise AssertionError(f"{error}\n{logs}") from None

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            process.log.close()


@pytest.fixture
def ingesters(backend, settings, tmp_path):
    started = Ingesters(backend, settings, tmp_path)
    yield started
    started.close()


def acknowledged(client: redis.Redis, stream: str, ids: list[str]) -> int:
    """Entries of ``ids`` (the stream's, in order) the group has delivered and had acknowledged (Redis 6.2 has
    no entries-read)."""
    group = next(g for g in client.xinfo_groups(stream) if g["name"] == b"g")
    last = tuple(map(int, group["last-delivered-id"].decode().split("-")))
    delivered = bisect.bisect_right([tuple(map(int, entry_id.split("-"))) for entry_id in ids], last)
    return delivered - group["pending"]


def stopped(process: subprocess.Popen) -> bool:
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "Tt"


def kill_between_learning_and_acknowledging(ingesters, process, river_client, client, stream, ids, model,
                                            at_least) -> bool:
    """SIGKILL ``process`` once the model has learned ``at_least`` examples, at a moment when it has learned
    entries it has not acknowledged (looked at while it is stopped); True if such a moment was found."""
    ingesters.wait(lambda: learned(river_client, model) >= at_least, f"{at_least} examples learned")
    for _ in range(400):
        process.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(process), 5, "the ingester to stop", interval=0.001)
        if learned(river_client, model) > acknowledged(client, stream, ids):
            process.kill()
            process.wait(10)
            return True
        process.send_signal(signal.SIGCONT)
        time.sleep(random.uniform(0, 0.01))
    process.kill()
    process.wait(10)
    return False


def test_ten_thousand_entries_learned_exactly_once_through_two_sigkills(river_client, stream, ingesters, redis_url):
    name, client = stream
    total = 10_000
    river_client.upload_model(RunningMean(), "custom", "counted")
    ids = produce(client, name, examples("counted", total))
    args = ("--batch", "250", "--claim-idle", "300")

    first = ingesters.start(command(name, redis_url, "first", *args))
    hits = [kill_between_learning_and_acknowledging(ingesters, first, river_client, client, name, ids, "counted",
                                                    2_000)]
    # Restarted under its name: it reads its own pending entries again at once.
    second = ingesters.start(command(name, redis_url, "first", *args))
    hits.append(kill_between_learning_and_acknowledging(ingesters, second, river_client, client, name, ids, "counted",
                                                        6_000))
    # Another name: the dead consumer's pending entries are taken over after --claim-idle (XAUTOCLAIM).
    third = ingesters.start(command(name, redis_url, "third", *args))
    ingesters.wait(lambda: acknowledged(client, name, ids) == total and pending(client, name, "g") == 0,
                   "every entry acknowledged")
    learned_by_third, _, failed = ingesters.stop(third)

    assert any(hits), "no SIGKILL landed between a learn and its XACK: the test proved nothing"
    assert learned(river_client, "counted") == total
    assert learned(DjangoClient(store=river_client.store), "counted") == total  # a fresh replica, from the store
    assert failed == 0 and 0 < learned_by_third < total
    assert client.xlen(f"{name}:dead") == 0


def test_several_ingesters_split_one_stream(river_client, stream, ingesters, redis_url):
    name, client = stream
    river_client.upload_model(Fragile(), "custom", "shared")
    entries = examples("shared", 3_000)
    entries[1_234] = {"model": "shared", "features": {"boom": 1}, "ground_truth": 1.0}
    running = [ingesters.start(command(name, redis_url, f"worker-{i}", "--batch", "50")) for i in range(3)]
    for process in running:  # all reading before the entries come, so that the group splits them
        ingesters.wait(lambda: "reading" in ingesters.output(process), "an ingester to start")
    ids = produce(client, name, entries)
    ingesters.wait(lambda: acknowledged(client, name, ids) == len(entries) and pending(client, name, "g") == 0,
                   "every entry acknowledged")
    summaries = [ingesters.stop(process) for process in running]
    assert learned(river_client, "shared") == len(entries) - 1
    assert sum(learned for learned, _, _ in summaries) == len(entries) - 1
    assert sum(failed for _, _, failed in summaries) == 1 and client.xlen(f"{name}:dead") == 1
    assert all(learned > 0 for learned, _, _ in summaries), summaries  # the group split the stream
    consumers = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(name, "g")}
    assert consumers == {f"worker-{i}": 0 for i in range(3)}


@pytest.mark.parametrize("backend", ["shelve"], indirect=True)
def test_sigterm_and_sigint_stop_an_ingester_cleanly(river_client, stream, ingesters, redis_url):
    name, client = stream
    river_client.upload_model(RunningMean(), "custom", "m")
    running = {signal.SIGTERM: ingesters.start(command(name, redis_url, "term")),
               signal.SIGINT: ingesters.start(command(name, redis_url, "int"))}
    for process in running.values():
        ingesters.wait(lambda: "reading" in ingesters.output(process), "an ingester to start")
    ids = produce(client, name, examples("m", 20))
    ingesters.wait(lambda: acknowledged(client, name, ids) == len(ids) and pending(client, name, "g") == 0,
                   "learning")
    for signum, process in running.items():
        process.send_signal(signum)
    for process in running.values():
        assert process.wait(30) == 0
        assert SUMMARY.search(ingesters.output(process)), ingesters.output(process)
    assert learned(river_client, "m") == 20


@pytest.mark.parametrize("backend", ["shelve"], indirect=True)
def test_bad_options_are_refused(ingesters, redis_url):
    refused = {}
    for args, words in ((["--batch", "0"], "--batch"), (["--batch", "100000"], "MAX_BATCH_ROWS"),
                        (["--block", "0"], "milliseconds"), (["--stream", "has space"], "visible ASCII")):
        stream_args = [] if "--stream" in args else ["--stream", "s"]
        refused[words] = ingesters.start([sys.executable, "manage.py", "river_ingest", "--redis-url", redis_url,
                                          *stream_args, *args])
    for words, process in refused.items():
        assert process.wait(120) != 0
        assert words in ingesters.output(process)
