"""The storage interface every backend implements.

A model's state is a snapshot plus an ordered log of learn entries. The store
assigns each entry its sequence number atomically: a successful
:meth:`Store.append` is the commit point of a learn. Everything is keyed by
the model's *incarnation* (a uuid made at upload), so an entry appended for a
model that was deleted or replaced meanwhile is refused instead of landing
in its successor. A learn's idempotency keys are recorded in the same step as
its entry (:meth:`Store.append_keyed`), so a retried learn cannot land twice.

A model's :class:`Access` (owner, users and groups it is shared with) lives
with it, so every worker and host sees the same and deleting the model removes
it. Writes that decide who owns what are compare-and-set (``expect``,
``incarnation``) and count the owner's models in the same step, so two
uploads racing for one name or one quota cannot both win.

Values are opaque bytes; pickling is the caller's business.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django_river_ml.exceptions import NotSupported

if TYPE_CHECKING:
    from django_river_ml.callstats import Tally


#: ``create_model(expect=ANY)`` replaces whatever model has the name (or none).
ANY = "*"

#: Outcomes of the writes that decide who owns what.
OK = "ok"
CONFLICT = "conflict"  # the model is not the one expected (created, replaced or deleted meanwhile)
OVER_QUOTA = "over_quota"  # the owner already owns ``max_owned`` models


@dataclass(frozen=True)
class Access:
    """Who may use a model: its owner and the users and groups it is shared with (primary keys, as strings).

    No owner: a model uploaded by server code or with authentication disabled; only
    full-access callers (server code, staff) reach it while authentication is on.
    """

    owner: str | None = None
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    flavor: str
    incarnation: str
    head: int  # sequence number of the newest log entry (0: none yet)
    created: float
    access: Access = Access()
    # The token of the newest entry ('' before the first; None: the store keeps no chain): see LogEntry.link.
    tip: str | None = None


# Why an entry was rejected (LogEntry.rejected).
REJECTED = 1
FULL = 2  # it took the model past MAX_MODEL_BYTES: the model learns no more from here on


@dataclass(frozen=True)
class LogEntry:
    seq: int
    data: bytes
    rejected: int  # 0: applied; REJECTED: the model raised or ran over a limit; FULL: see growth.py
    # A chain through the log (None: the store keeps none): each entry has a token of its own, and the token of
    # the entry before it. A replica that applied an entry which a failover then lost (Redis replicates
    # asynchronously) sees the chain break where the new master's log goes on without it.
    token: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class CallStats:
    n_calls: int
    total_ns: int
    ewm_ns: float
    buckets: Mapping[int, int] = field(default_factory=dict)  # latency histogram: bucket index -> calls
    slots: Mapping[int, int] = field(default_factory=dict)  # rate slot -> calls, of the last minute or so


class Store(abc.ABC):
    """A backend: models, their logs and snapshots, identifiers and call stats."""

    #: The value of STORAGE_BACKEND that selects this store.
    backend_name: str

    @classmethod
    def from_settings(cls, settings) -> Store:
        """The store the settings (``river_settings``) describe; a store that needs any sets this up."""
        return cls()

    # Models ----------------------------------------------------------------

    @abc.abstractmethod
    def create_model(self, name: str, flavor: str, incarnation: str, snapshot: bytes, access: Access = Access(),
                     expect: str | None = ANY, max_owned: int | None = None, version: dict | None = None) -> str:
        """Store a new model (snapshot at sequence 0, with its ``version`` record) with its access, replacing
        the model of that name.

        ``expect`` makes it a compare-and-set: None, only if no model has the name;
        an incarnation, only if that is the current one (else CONFLICT). With
        ``max_owned``, OVER_QUOTA when the owner already owns that many models
        besides this name. Returns OK when stored.
        """

    @abc.abstractmethod
    def model_info(self, name: str) -> ModelInfo | None:
        """The one cheap look-up done before serving a model."""

    @abc.abstractmethod
    def model_names(self) -> list[str]:
        """Every model's name, sorted."""

    def model_infos(self) -> list[ModelInfo]:
        """Every model's info, sorted by name (for listings filtered by access)."""
        return [info for info in map(self.model_info, self.model_names()) if info is not None]

    @abc.abstractmethod
    def owned_count(self, owner: str) -> int:
        """How many models ``owner`` owns."""

    @abc.abstractmethod
    def set_access(self, name: str, incarnation: str, access: Access, max_owned: int | None = None) -> str:
        """Replace the model's access if ``incarnation`` is current (else CONFLICT).

        A new owner must own fewer than ``max_owned`` models (else OVER_QUOTA). Returns OK when stored.
        """

    @abc.abstractmethod
    def delete_model(self, name: str, incarnation: str | None = None) -> bool:
        """Remove the model with its log, snapshots, identifiers, stats and access; False if absent.

        With ``incarnation``, only that incarnation (False if the name now holds another).
        """

    # Log -------------------------------------------------------------------

    @abc.abstractmethod
    def append(self, name: str, incarnation: str, data: bytes) -> int | None:
        """Append an entry, returning its sequence number; None if that incarnation is gone."""

    @abc.abstractmethod
    def entries(self, name: str, incarnation: str, after: int, upto: int) -> list[LogEntry]:
        """Entries with after < seq <= upto, in order (trimmed ones are absent)."""

    @abc.abstractmethod
    def reject(self, name: str, incarnation: str, seq: int, reason: int = 1) -> None:
        """Mark an entry as rejected (``REJECTED``, or ``FULL``): replicas skip it from now on.

        The idempotency keys recorded with it no longer count (see :meth:`append_keyed`).
        """

    def confirm(self, name: str) -> None:
        """Return once what the store acknowledged for model ``name`` so far would outlive a failover.

        Before a learn is acknowledged again (a retry with its idempotency key), what it wrote must be
        as safe as when it was first acknowledged. Stores without replicas have nothing to wait for.
        """

    # Idempotency keys ------------------------------------------------------

    def append_keyed(self, name: str, incarnation: str, data: bytes, keys: Sequence[str], keep_seconds: float,
                     max_keys: int) -> int | dict[str, int] | None:
        """:meth:`append`, recording the entry's idempotency ``keys`` in the same step, unless one is recorded.

        Returns the new entry's sequence; or, when some of ``keys`` are recorded already,
        ``{key: sequence of its entry}`` of those, and nothing is appended; None if that
        incarnation is gone. So two appends racing with one key cannot both append. A key
        counts for that incarnation only, for ``keep_seconds``; beyond ``max_keys`` keys the
        oldest are forgotten. The keys of a rejected entry do not count: the learn it was may be
        tried again (it had no effect). Stores that record no keys refuse keyed learns.
        """
        raise NotSupported(f"The {self.backend_name} store does not record idempotency keys.")

    def known_keys(self, name: str, incarnation: str, keys: Sequence[str]) -> dict[str, int]:
        """Which of ``keys`` count for ``incarnation`` (see :meth:`append_keyed`): ``{key: sequence}``."""
        raise NotSupported(f"The {self.backend_name} store does not record idempotency keys.")

    # Snapshots -------------------------------------------------------------

    @abc.abstractmethod
    def save_snapshot(self, name: str, incarnation: str, seq: int, data: bytes, keep: int,
                      version: dict | None = None, tip: str | None = None) -> None:
        """Store a snapshot, a version with its ``version`` record (:mod:`django_river_ml.versions`).

        ``tip``: the token of entry ``seq`` the snapshot was made after (:attr:`LogEntry.token`); a store
        that keeps a chain refuses (StorageUnavailable) a snapshot whose entry its log no longer has.

        The newest ``keep`` snapshots stay, and the log they no longer need is trimmed; older ones stay
        while they are versions the retention policy keeps (:func:`~django_river_ml.versions.expired_now`).
        A version's number is the next of its incarnation (a snapshot saved again keeps its number).
        """

    @abc.abstractmethod
    def versions(self, name: str, incarnation: str) -> list[dict]:
        """The version records of an incarnation, oldest first, each with its number (``version``)."""

    @abc.abstractmethod
    def version_snapshot(self, name: str, incarnation: str, version: int) -> tuple[int, bytes] | None:
        """(sequence, bytes) of version ``version``; None if there is no such version (or no longer)."""

    @abc.abstractmethod
    def latest_snapshot(self, name: str, incarnation: str, at_most: int | None = None) -> tuple[int, bytes] | None:
        """(sequence, bytes) of the newest snapshot (with ``at_most``: of sequence ``at_most`` or lower)."""

    @abc.abstractmethod
    def snapshot_seq(self, name: str, incarnation: str, at_most: int | None = None) -> int | None:
        """The sequence of :meth:`latest_snapshot` without its bytes (a cheap look-up to wait on)."""

    # Identifiers -----------------------------------------------------------

    @abc.abstractmethod
    def put_identifier(self, name: str, identifier: str, record: bytes, ttl_seconds: int,
                       max_pending: int | None = None) -> bool:
        """Remember a prediction for a later label, forgotten after ``ttl_seconds``; False if one is pending.

        Atomic insert-if-absent-or-expired: a pending record is never replaced
        (someone else's label would learn the newcomer's features). Beyond
        ``max_pending`` records for the model, the oldest are evicted.
        """

    @abc.abstractmethod
    def pop_identifier(self, name: str, identifier: str) -> bytes | None:
        """Take a remembered prediction away (atomically: two labels cannot both get it)."""

    # Stats -----------------------------------------------------------------

    @abc.abstractmethod
    def record_calls(self, name: str, incarnation: str, operation: str, tally: Tally) -> None:
        """Add a process's calls of one operation to the model's stats (see :mod:`django_river_ml.callstats`).

        Only while ``incarnation`` is the model's: calls of a deleted or replaced model are dropped.
        Counts, histogram buckets and rate slots are added in one step; slots older than
        ``callstats.oldest_slot_kept`` are dropped.
        """

    @abc.abstractmethod
    def recent_models(self, limit: int) -> list[str]:
        """Names of the models called most recently, newest first (those a starting worker loads first)."""

    @abc.abstractmethod
    def call_stats(self, name: str) -> dict[str, CallStats]:
        """Stats per operation name."""

    def record_errors(self, counts: Mapping[tuple[str, int], int]) -> None:
        """Add a process's failed calls, by (route name, HTTP status). A store that keeps none drops them."""

    def error_counts(self) -> dict[tuple[str, int], int]:
        """Failed calls of every worker since the store was made, by (route name, HTTP status)."""
        return {}

    # Lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Release connections (the store may be used again afterwards)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Delete everything this store holds (tests and the demo's reset)."""
