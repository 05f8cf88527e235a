"""How big a model has grown, measured where every replica measures it: MAX_MODEL_BYTES while learning.

Measuring a model means pickling it, O(its size), so it cannot happen on every
learn. A :class:`GrowthWatch` decides at which log positions to measure: every
``SNAPSHOT_EVERY`` entries while the model is small, more often as it nears the
limit (from how fast it grew between the last two measurements), before every
entry at the end. The schedule depends only on the sizes measured, which
depend only on the log, so every replica measures at the same positions, finds
the same sizes and becomes *full* before the same entry: no worker needs to tell
another. The watch travels in snapshots.

A full model keeps predicting; every learn after the measurement that found it
over the limit is rejected (409) on every replica. It may therefore exceed the
limit by what the learns since the previous measurement added, which near the
limit is one learn.

>>> watch = GrowthWatch.first(size=1_000, seq=0, limit=10_000, every=1_000)
>>> watch.next
1000
>>> watch.measured(size=8_000, seq=1_000, limit=10_000, every=1_000).next  # 7 bytes/entry, 2,000 left
1142
>>> watch.measured(size=10_001, seq=1_142, limit=10_000, every=1_000).full
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GrowthWatch:
    size: int   # bytes at the last measurement
    seq: int    # log position of the last measurement
    next: int   # measure before applying this entry
    full: bool = False

    @classmethod
    def first(cls, size: int, seq: int, limit: int, every: int) -> GrowthWatch:
        return cls(size=size, seq=seq, next=seq + _interval(size, size, 0, limit, every), full=size > limit)

    def measured(self, size: int, seq: int, limit: int, every: int) -> GrowthWatch:
        if self.full or size > limit:
            return GrowthWatch(size=size, seq=seq, next=seq + every, full=True)
        return GrowthWatch(size=size, seq=seq, next=seq + _interval(self.size, size, seq - self.seq, limit, every))

    def due(self, seq: int) -> bool:
        return not self.full and seq >= self.next

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None, seq: int) -> GrowthWatch:
        """The watch a snapshot carried; snapshots from before it existed measure at the next entry."""
        if not data:
            return cls(size=0, seq=seq, next=seq + 1)
        return cls(**{key: data[key] for key in ("size", "seq", "next", "full")})


def _interval(previous: int, size: int, entries: int, limit: int, every: int) -> int:
    """Entries until the next measurement: half the headroom at the growth rate seen, within [1, every]."""
    if size <= limit // 2:
        return every
    rate = max(1, (size - previous) // entries) if entries > 0 else max(1, size // max(every, 1))
    return max(1, min(every, (limit - size) // (2 * rate)))
