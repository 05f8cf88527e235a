"""Live stream fan-out: how long a learn's event takes to reach 100 subscribers, against 1 subscriber.

On the site as ``make serve`` runs it (``make serve``'s workers, the embedded store, authentication on),
two phases after a warm-up (every worker opens a stream and loads the model):

- baseline: 1 subscriber on ``/api/stream/events/?model=stream-base``, then the learns;
- fan-out: ``BENCH_SUBSCRIBERS`` (100) subscribers on ``/api/stream/events/?model=stream-fan``, then the learns.

In each phase ``BENCH_LEARNS`` learns are sent by ``BENCH_CLIENTS`` client processes (so every worker
appends), as fast as they are answered unless ``BENCH_RATE`` (learns per second in all) says otherwise,
each learn's answer time recorded; each subscriber (asyncio, raw HTTP/1.1, SSE parsed here) records when
it saw each learn's event. Delivery latency is event seen minus learn answered (both on this host's
monotonic clock; below 0 when the event came first). The issue's target: every subscriber gets every
event, once, p99 < 250 ms.

``python -m bench.stream_fanout`` runs it alone (and prints the phases in detail).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import time
from collections import Counter

from bench.common import Context, Row, percentile, progress, small_model, upload

NAME = "stream"
SERVERS = ("site",)
RATE = float(os.environ.get("BENCH_RATE", "0"))
# How long subscribers may take to get every event once the learns are answered (then we count).
DRAIN_SECONDS = 30
TARGET_P99_MS = 250

LEARN_EVENT = re.compile(rb'"sequence":(\d+)')


# Learners: client processes, one keep-alive session each.


def _learn(task: tuple[str, dict, str, list[int], float, int]) -> list[tuple[int, float]]:
    """Learn ``indices`` on ``model`` (starting at ``start``, a monotonic time); (sequence, answered at) each."""
    import requests

    url, headers, model, indices, start, clients = task
    session = requests.Session()
    session.trust_env = False
    answered = []
    for n, i in enumerate(indices):
        due = start + n * clients / RATE if RATE else start
        while time.monotonic() < due:
            time.sleep(0.001)
        response = session.post(f"{url}/api/learn/", json={"model": model, "features": {"x": float(i)},
                                                           "ground_truth": float(i % 7)}, headers=headers, timeout=60)
        now = time.monotonic()
        if response.status_code != 201:
            raise RuntimeError(f"learn answered {response.status_code}: {response.text[:300]}")
        answered.append((response.json()["sequence"], now))
    return answered


# Subscribers: asyncio, raw HTTP/1.1 with chunked bodies, SSE parsed here.


class Subscriber:
    def __init__(self, port: int, path: str, headers: dict[str, str]):
        self.port, self.path, self.headers = port, path, headers
        self.seen: dict[int, float] = {}  # learn sequence -> monotonic time first seen
        self.duplicates = 0
        self.resets = 0  # stream-reset events (nothing is trimmed here: there should be none)
        self.opened = asyncio.Event()
        self.local_port = 0
        self.task: asyncio.Task | None = None
        self.failure: str | None = None

    async def run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as error:
            self.failure = str(error)
            self.opened.set()
            return
        self.local_port = writer.get_extra_info("sockname")[1]
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        writer.write(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                     f"Accept: text/event-stream\r\n{extra}\r\n".encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                self.failure = head.decode(errors="replace")
                return
            chunked = b"transfer-encoding: chunked" in head.lower()
            buffer = b""
            while True:
                if chunked:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size + 2)
                    data = data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                now = time.monotonic()
                buffer += data
                *blocks, buffer = buffer.split(b"\n\n")
                for block in blocks:
                    self.event(block, now)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.opened.set()
            writer.close()

    def event(self, block: bytes, now: float) -> None:
        if b"event: stream-open" in block:
            self.opened.set()
        elif block.startswith(b"event: stream-reset\n"):
            self.resets += 1
        elif block.startswith(b"event: learn\n"):
            sequence = int(LEARN_EVENT.search(block).group(1))
            if sequence in self.seen:
                self.duplicates += 1
            else:
                self.seen[sequence] = now


async def phase(server, pool, clients: int, model: str, subscribers: int, learns: int) -> dict:
    """Open the subscribers, send the learns, wait for the events; the figures of this phase."""
    loop = asyncio.get_running_loop()
    headers = getattr(server, "headers", {})
    followers = [Subscriber(server.port, f"/api/stream/events/?model={model}", headers) for _ in range(subscribers)]
    for follower in followers:
        follower.task = asyncio.create_task(follower.run())
    await asyncio.wait_for(asyncio.gather(*(follower.opened.wait() for follower in followers)), 120)
    failed = [follower.failure for follower in followers if follower.failure]
    if failed:
        raise RuntimeError(f"{len(failed)} subscribers could not connect: {failed[0]}")
    holders = len(set(server.connection_owners({follower.local_port for follower in followers}).values()) - {None})

    start = time.monotonic() + 0.2
    tasks = [(server.url, headers, model, list(range(c, learns, clients)), start, clients) for c in range(clients)]
    answers = await asyncio.gather(*(loop.run_in_executor(None, pool.apply, _learn, (task,)) for task in tasks))
    answered = dict(pair for answer in answers for pair in answer)
    sending = max(answered.values()) - start

    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and any(len(follower.seen) < len(answered) for follower in followers):
        await asyncio.sleep(0.05)
    for follower in followers:
        follower.task.cancel()
    await asyncio.gather(*(follower.task for follower in followers), return_exceptions=True)

    latencies = [(follower.seen[sequence] - at) * 1000 for follower in followers
                 for sequence, at in answered.items() if sequence in follower.seen]
    latencies = latencies or [float("nan")]
    return {
        "subscribers": subscribers, "workers": holders, "expected": len(answered) * subscribers,
        "delivered": len([f for f in followers for sequence in answered if sequence in f.seen]),
        "duplicates": sum(follower.duplicates for follower in followers),
        "resets": sum(follower.resets for follower in followers),
        "complete": sum(len(follower.seen) == len(answered) for follower in followers),
        "learns_per_s": len(answered) / sending,
        "p50": percentile(latencies, 0.50), "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99), "max": max(latencies),
        "late_learns": Counter(sequence for follower in followers for sequence, at in answered.items()
                               if sequence in follower.seen and (follower.seen[sequence] - at) * 1000 > TARGET_P99_MS),
    }


async def phases(ctx: Context, server, pool) -> tuple[dict, dict]:
    config = ctx.config
    for name in ("stream-warm", "stream-base", "stream-fan"):
        upload(server, small_model(), name)
    # Warm up: every worker loads the models and starts its fan-out thread (a first stream on each).
    await phase(server, pool, config.clients, "stream-warm", config.workers * 2, min(config.learns, 50))
    progress("stream: warm-up done")
    baseline = await phase(server, pool, config.clients, "stream-base", 1, config.learns)
    progress("stream: 1 subscriber done")
    fanout = await phase(server, pool, config.clients, "stream-fan", config.subscribers, config.learns)
    return baseline, fanout


def detail(baseline: dict, fanout: dict) -> str:
    lines = [f"{'subscribers':>11s} {'on workers':>10s} {'delivered/expected':>19s} {'dups':>5s} {'learns/s':>9s} "
             f"{'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}"]
    for result in (baseline, fanout):
        lines.append(f"{result['subscribers']:11d} {result['workers']:10d} "
                     f"{result['delivered']:>9d}/{result['expected']:<9d} {result['duplicates']:5d} "
                     f"{result['learns_per_s']:9.0f} {result['p50']:7.1f} {result['p95']:7.1f} {result['p99']:7.1f} "
                     f"{result['max']:7.1f}")
    if fanout["late_learns"]:
        late = sorted(fanout["late_learns"].items())
        lines.append(f"learns whose event reached some subscriber over {TARGET_P99_MS} ms after the answer "
                     f"(sequence: subscribers): {len(late)} learns; first {late[:12]}")
    return "\n".join(lines)


def run(ctx: Context) -> list[Row]:
    config = ctx.config
    server = ctx.site()
    with multiprocessing.get_context("fork").Pool(config.clients) as pool:
        baseline, fanout = asyncio.run(phases(ctx, server, pool))
    print(detail(baseline, fanout), flush=True)
    n = config.subscribers
    everything = fanout["delivered"] == fanout["expected"] and not fanout["duplicates"]
    note = (f"{fanout['complete']}/{n} subscribers got every event, {fanout['duplicates']} duplicates, "
            f"{fanout['resets']} stream-resets; {config.learns} learns from {config.clients} clients")
    return [
        Row(f"stream event latency p50, {n} subscribers", fanout["p50"], "ms", "1 subscriber", baseline["p50"]),
        Row(f"stream event latency p99, {n} subscribers", fanout["p99"], "ms", "1 subscriber", baseline["p99"],
            goal=f"< {TARGET_P99_MS} ms", met=fanout["p99"] < TARGET_P99_MS),
        Row(f"stream events delivered, {n} subscribers", fanout["delivered"] / max(1, fanout["expected"]), "of expected",
            "1 subscriber", baseline["delivered"] / max(1, baseline["expected"]), goal="all, once", met=everything,
            note=note),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
