"""Versions: the snapshots of a model that are kept, and which of them go.

Every snapshot of a model is a version: its state at a log position (``sequence``), when it was
written, why (``kind``) and the model's metrics then. A store keeps a version's record beside its
snapshot and numbers the versions of one upload 1, 2, 3, … (the upload itself is version 1).

Snapshots come often (every ``SNAPSHOT_EVERY`` learns, and after each shipped batch), so which
versions stay is a policy, the one of backups: the newest ``VERSIONS_KEPT``, the newest of each of
the last ``VERSIONS_HOURLY`` hours and ``VERSIONS_DAILY`` days, and the newest ``VERSIONS_MARKED``
of those taken on purpose (an upload, ``POST .../versions/``, a rollback, a promotion). The newest
``SNAPSHOTS_KEPT`` are never dropped: replicas start from them (the log before them is trimmed).

>>> day = 86_400
>>> records = [{"sequence": s, "created": t, "kind": k} for s, t, k in
...            [(0, 0, "upload"), (10, 100, "snapshot"), (20, 200, "snapshot"), (30, day + 5, "snapshot")]]
>>> sorted(expired(records, now=day + 10, newest=1, hourly=0, daily=0, marked=1, snapshots_kept=1))
[10, 20]
>>> sorted(expired(records, now=day + 10, newest=1, hourly=0, daily=2, marked=0, snapshots_kept=1))
[0, 10]
"""

from __future__ import annotations

import time
from typing import Iterable

#: Why a version was written. Marked kinds were asked for; the others are the routine snapshots.
SNAPSHOT, UPLOAD, MANUAL, ROLLBACK, PROMOTE, BEFORE_PROMOTE, DRIFT = (
    "snapshot", "upload", "manual", "rollback", "promote", "before-promote", "drift")
MARKED = frozenset({UPLOAD, MANUAL, ROLLBACK, PROMOTE, BEFORE_PROMOTE, DRIFT})

HOUR, DAY = 3600, 86_400


def record(sequence: int, kind: str, metrics: dict, **details) -> dict:
    """A version's record as the store keeps it (the store adds its number, ``version``)."""
    return {"sequence": sequence, "created": time.time(), "kind": kind, "metrics": metrics, **details}


def expired(records: Iterable[dict], *, now: float | None = None, newest: int, hourly: int, daily: int, marked: int,
            snapshots_kept: int) -> set[int]:
    """The sequences of the versions the policy drops (see the module's docstring)."""
    records = sorted(records, key=lambda r: r["sequence"], reverse=True)
    now = time.time() if now is None else now
    kept = {r["sequence"] for r in records[:max(newest, snapshots_kept, 1)]}
    kept.update(r["sequence"] for r in [r for r in records if r.get("kind") in MARKED][:marked])
    for period, count in ((HOUR, hourly), (DAY, daily)):
        seen: set[int] = set()
        for r in records:  # newest first: the first of each period is its newest
            slot = int(r["created"] // period)
            if slot not in seen and slot > int(now // period) - count:
                seen.add(slot)
                kept.add(r["sequence"])
    return {r["sequence"] for r in records} - kept


def expired_now(records: Iterable[dict]) -> set[int]:
    """:func:`expired` under the current settings."""
    from django_river_ml.settings import river_settings

    return expired(records, newest=river_settings.VERSIONS_KEPT, hourly=river_settings.VERSIONS_HOURLY,
                   daily=river_settings.VERSIONS_DAILY, marked=river_settings.VERSIONS_MARKED,
                   snapshots_kept=river_settings.SNAPSHOTS_KEPT)
