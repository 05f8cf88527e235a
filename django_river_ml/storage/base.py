"""The storage interface every backend implements.

A model's state is a snapshot plus an ordered log of learn entries. The store
assigns each entry its sequence number atomically: a successful
:meth:`Store.append` is the commit point of a learn. Everything is keyed by
the model's *incarnation* (a uuid made at upload), so an entry appended for a
model that was deleted or replaced meanwhile is refused instead of landing
in its successor.

Values are opaque bytes; pickling is the caller's business.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    flavor: str
    incarnation: str
    head: int  # sequence number of the newest log entry (0: none yet)
    created: float


@dataclass(frozen=True)
class LogEntry:
    seq: int
    data: bytes
    rejected: bool


@dataclass(frozen=True)
class CallStats:
    n_calls: int
    total_ns: int
    ewm_ns: float


class Store(abc.ABC):
    """A backend: models, their logs and snapshots, identifiers and call stats."""

    #: The value of STORAGE_BACKEND that selects this store.
    backend_name: str

    # Models ----------------------------------------------------------------

    @abc.abstractmethod
    def create_model(self, name: str, flavor: str, incarnation: str, snapshot: bytes) -> None:
        """Store a new model (snapshot at sequence 0), replacing any model of that name."""

    @abc.abstractmethod
    def model_info(self, name: str) -> ModelInfo | None:
        """The one cheap look-up done before serving a model."""

    @abc.abstractmethod
    def model_names(self) -> list[str]:
        """Every model's name, sorted."""

    @abc.abstractmethod
    def delete_model(self, name: str) -> bool:
        """Remove the model with its log, snapshots, identifiers and stats; False if absent."""

    # Log -------------------------------------------------------------------

    @abc.abstractmethod
    def append(self, name: str, incarnation: str, data: bytes) -> int | None:
        """Append an entry, returning its sequence number; None if that incarnation is gone."""

    @abc.abstractmethod
    def entries(self, incarnation: str, after: int, upto: int) -> list[LogEntry]:
        """Entries with after < seq <= upto, in order (trimmed ones are absent)."""

    @abc.abstractmethod
    def reject(self, incarnation: str, seq: int) -> None:
        """Mark an entry as rejected: replicas skip it from now on."""

    # Snapshots -------------------------------------------------------------

    @abc.abstractmethod
    def save_snapshot(self, name: str, incarnation: str, seq: int, data: bytes, keep: int) -> None:
        """Store a snapshot; keep the newest ``keep`` and trim the log they no longer need."""

    @abc.abstractmethod
    def latest_snapshot(self, incarnation: str) -> tuple[int, bytes] | None:
        """(sequence, bytes) of the newest snapshot."""

    # Identifiers -----------------------------------------------------------

    @abc.abstractmethod
    def put_identifier(self, name: str, identifier: str, record: bytes, ttl_seconds: int) -> None:
        """Remember a prediction for a later label; forgotten after ``ttl_seconds``."""

    @abc.abstractmethod
    def pop_identifier(self, name: str, identifier: str) -> bytes | None:
        """Take a remembered prediction away (atomically: two labels cannot both get it)."""

    # Stats -----------------------------------------------------------------

    @abc.abstractmethod
    def record_call(self, name: str, operation: str, duration_ns: int, alpha: float) -> None:
        """Count one call and fold its duration into the total and the EWM."""

    @abc.abstractmethod
    def call_stats(self, name: str) -> dict[str, CallStats]:
        """Stats per operation name."""

    # Lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Release connections (the store may be used again afterwards)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Delete everything this store holds (tests and the demo's reset)."""
