"""How big a model has grown, measured where every replica measures it: MAX_MODEL_BYTES while learning.

Measuring a model means pickling it, O(its size), so it cannot happen on every
learn. A :class:`GrowthWatch` decides after which log positions to measure:
every ``SNAPSHOT_EVERY`` learns while the model is small, more often as it nears
the limit (from how fast it grew between the last two measurements), after every
learn at the end. The schedule depends only on the sizes measured, which depend
only on the log, so every replica measures at the same positions and finds the
same sizes. The learn after which a measurement finds the model over the limit
is rejected (409) on every replica, marked FULL in the log so that a replica
that starts later learns the same, and so is every learn after it; the model
keeps predicting. The watch travels in snapshots.

Between measurements far from the limit a model may grow past it by what those
learns added; near the limit it is measured after every learn, so the learn that
crosses it is the one rejected.

>>> watch = GrowthWatch.first(size=1_000, seq=0, limit=10_000, every=1_000)
>>> watch.next  # soon, to see how fast it grows
16
>>> watch.measured(size=1_016, seq=16, limit=10_000, every=1_000).next  # 1 byte/learn: far from the limit
1016
>>> watch.measured(size=8_000, seq=1_000, limit=10_000, every=1_000).next  # 7 bytes/learn, 2,000 left
1142
>>> watch.measured(size=10_001, seq=1_142, limit=10_000, every=1_000).full
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FIRST_INTERVAL = 16


@dataclass(frozen=True)
class GrowthWatch:
    size: int   # bytes at the last measurement
    seq: int    # log position of the last measurement
    next: int   # measure before applying this entry
    full: bool = False

    @classmethod
    def first(cls, size: int, seq: int, limit: int, every: int) -> GrowthWatch:
        """The watch of a new model: measured soon (after FIRST_INTERVAL learns) to learn how fast it grows."""
        return cls(size=size, seq=seq, next=seq + min(every, FIRST_INTERVAL), full=size > limit)

    def measured(self, size: int, seq: int, limit: int, every: int) -> GrowthWatch:
        if self.full or size > limit:
            return GrowthWatch(size=size, seq=seq, next=seq + every, full=True)
        return GrowthWatch(size=size, seq=seq, next=seq + _interval(self.size, size, seq - self.seq, limit, every))

    def filled(self, seq: int) -> GrowthWatch:
        """Full from entry ``seq`` on: a replica reading the rejection of the learn that filled the model."""
        return GrowthWatch(size=self.size, seq=seq, next=self.next, full=True)

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
    if entries <= 0:  # no rate seen yet
        return every if size <= limit // 2 else 1
    rate = max(1, (size - previous) // entries)
    return max(1, min(every, (limit - size) // (2 * rate)))
