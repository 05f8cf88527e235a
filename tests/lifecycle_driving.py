"""Roll a model back while threads learn on it: the one driver of tests/test_lifecycle.py (workers in
process) and tests/test_lifecycle_live.py (a live server), so both check the same story."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable

#: Learns the example tagged ``tag`` (see test_lifecycle.tagged); its sequence.
Learn = Callable[[str], int]


@dataclass
class RolledBack:
    acknowledged: list[tuple[int, str, bool]]  # (sequence, tag, sent after the rollback was acknowledged)
    known: list[tuple[int, str, bool]]  # acknowledged before the version ``middle`` was asked for
    at: int  # the rollback's sequence
    middle: dict  # the version taken while the threads learned on


def roll_back_while_learning(new_learn: Callable[[], Learn], rollback: Callable[[], dict],
                             take_version: Callable[[], dict], *, threads: int, late: int, enough: int) -> RolledBack:
    """``threads`` threads learn (each with its own ``new_learn()``: a worker, a connection); once ``enough``
    learns are acknowledged, ``rollback()``, then ``take_version()`` while they learn on, until each has had
    ``late`` learns sent after the rollback was acknowledged."""
    acknowledged: list[tuple[int, str, bool]] = []
    lock, enough_done, rolled_back, failures = threading.Lock(), threading.Event(), threading.Event(), []

    def learner(k: int) -> None:
        learn, after, i = new_learn(), 0, 0
        try:
            while after < late:
                tag, sent_late = f"w{k}-{i}", rolled_back.is_set()
                seq = learn(tag)
                with lock:
                    acknowledged.append((seq, tag, sent_late))
                    if len(acknowledged) >= enough:
                        enough_done.set()
                after, i = after + sent_late, i + 1
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
            enough_done.set()

    running = [threading.Thread(target=learner, args=(k,)) for k in range(threads)]
    for thread in running:
        thread.start()
    assert enough_done.wait(120)
    at = rollback()["sequence"]
    rolled_back.set()
    with lock:
        known = list(acknowledged)
    middle = take_version()
    for thread in running:
        thread.join(120)
    assert not failures, failures
    return RolledBack(acknowledged, known, at, middle)


def expected_counts(run: RolledBack, before: Iterable[str], counts_at: Callable[[int], dict]) -> dict[str, int]:
    """Check the learns' sequences against the rollback's, and the version taken meanwhile (``counts_at(version)``:
    its StandardScaler's counts); the tags the model must have learned, each once."""
    before = {tag: 1 for tag in before}
    # The version taken meanwhile holds every learn acknowledged before it was asked for, and is exactly the
    # version rolled back to plus the learns up to its sequence.
    assert all(seq <= run.middle["sequence"] for seq, _, _ in run.known)
    assert counts_at(run.middle["version"]) == before | {
        tag: 1 for seq, tag, _ in run.acknowledged if run.at < seq <= run.middle["sequence"]}
    assert all(seq > run.at for seq, _, late in run.acknowledged if late)  # sent after it: after it in the log
    assert any(seq < run.at for seq, _, _ in run.acknowledged), "the rollback came before any concurrent learn"
    return before | {tag: 1 for seq, tag, _ in run.acknowledged if seq > run.at}
