"""DjangoClient: every River-API operation as a Python call, for views and server code.

All logic lives here; the REST views and management commands only call it.
Errors are raised as the typed exceptions of :mod:`django_river_ml.exceptions`.
Who may do what with a model is decided here too, by :mod:`django_river_ml.access`:
``DjangoClient()`` has full access, ``DjangoClient(user=alice)`` acts as Alice.

>>> from river import linear_model, preprocessing
>>> client = DjangoClient()
>>> name = client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression",
...                            model_name="doc-example")
>>> client.learn(name, {"x": 1.0}, ground_truth=2.0)["model"]
'doc-example'
>>> sorted(client.predict(name, {"x": 1.0}))
['identifier', 'model', 'prediction']
>>> client.stats(name)["learn"]["n_calls"]
1
>>> client.delete_model(name)
"""

from __future__ import annotations

import pickle
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable

import river

from django_river_ml import access, callstats, events, versions
from django_river_ml.access import Caller
from django_river_ml.describe import describe_metrics, describe_model, to_jsonable
from django_river_ml.exceptions import (
    AccessDenied,
    AuthenticationRequired,
    ChallengerNotFound,
    Conflict,
    IdentifierConflict,
    IdentifierNotFound,
    InvalidInput,
    InvalidModel,
    ModelFailed,
    ModelNotFound,
    ModelTooLarge,
    PayloadTooLarge,
    QuotaExceeded,
    RiverMLError,
    VersionNotFound,
)
from django_river_ml.flavors import BoundModel, get_flavor
from django_river_ml.lifecycle import Challenger, DriftWatch
from django_river_ml.names import generate_name, validate_name, validate_new_name
from django_river_ml.sandbox import get_sandbox
from django_river_ml.settings import river_settings
from django_river_ml.timelimit import CallLimitExceeded, ModelCrashed, run_limited
from django_river_ml.state import (CHALLENGERS_FULL, KeysKnown, ModelRegistry, Outcome, Replica, batch_limit,
                                   dump_state, get_registry, load_state, pickled)
from django_river_ml.storage import Access, CallStats, ModelInfo, Store
from django_river_ml.storage.base import OK, OVER_QUOTA
from django_river_ml.validation import (
    validate_features,
    validate_idempotency_key,
    validate_identifier,
    validate_value,
    validate_version,
)
from django_river_ml.version import __version__

STAT_OPERATIONS = ("learn", "predict", "label")
#: Drift detections are counted in the stats as calls of this name (by the worker that reports each).
DRIFTS = "drift"
#: The latency percentiles stats give (``<name>_duration``), from the store's histogram.
STAT_PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def humanize_ns(nanoseconds: float) -> str:
    """A duration for people: ``humanize_ns(1_500_000)`` is ``'1.50 ms'``."""
    for unit, size in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if nanoseconds >= size:
            return f"{nanoseconds / size:.2f} {unit}"
    return f"{nanoseconds:.0f} ns"


#: The fields of one example in a batch (to predict; one to learn may have an idempotency key too).
BATCH_FIELDS = frozenset({"features", "ground_truth", "identifier"})
LEARN_FIELDS = BATCH_FIELDS | {"idempotency_key"}
#: How many times a learn with idempotency keys looks again when another learn with one of its keys raced it.
KEYED_ATTEMPTS = 10


@contextmanager
def _about_row(row: int):
    """Errors raised inside name the example of the batch they are about."""
    try:
        yield
    except RiverMLError as error:
        raise error.at_row(row) if error.row is None else error


def _each_row(rows: list, check: Callable[[Any], Any]) -> None:
    """``check`` on every example of a batch, in one loop; what it raises names the example."""
    row = 0
    try:
        for row, example in enumerate(rows):
            check(example)
    except RiverMLError as error:
        raise error.at_row(row) if error.row is None else error


def _check_example(example: Any, fields: frozenset = BATCH_FIELDS) -> dict:
    if not isinstance(example, dict):
        raise InvalidInput(f"each example must be an object, not {type(example).__name__}.")
    if not example.keys() <= fields:
        unknown = sorted(set(example) - fields)[0]
        raise InvalidInput(f"unknown field {unknown!r} (an example has {', '.join(sorted(fields))}).")
    return example


def _check_learn_example(example: Any) -> None:
    """An example to learn: its features may come from its identifier's stored prediction."""
    _check_example(example, LEARN_FIELDS)
    identifier = validate_identifier(example.get("identifier"))
    validate_idempotency_key(example.get("idempotency_key"))
    validate_value("ground_truth", example.get("ground_truth"))
    if identifier is None or example.get("features") is not None:
        validate_features(example.get("features"))


def _identified_rows(rows: list[dict]) -> list[tuple[int, str]]:
    """(row, identifier) of the examples that carry one; the same identifier twice is refused."""
    identified, seen = [], set()
    for row, example in enumerate(rows):
        identifier = example.get("identifier")
        if identifier is None:
            continue
        if identifier in seen:
            raise InvalidInput(f"identifier {identifier!r} is given to an earlier example of this batch too.").at_row(row)
        seen.add(identifier)
        identified.append((row, identifier))
    return identified


def _batch_keys(batch_key: str | None, rows: list[dict]) -> list[str]:
    """A batch's idempotency keys, its own first; the same key twice is refused."""
    keys = [batch_key] if batch_key is not None else []
    seen = set(keys)
    for row, example in enumerate(rows):
        key = example.get("idempotency_key")
        if key is None:
            continue
        if key in seen:
            raise InvalidInput(f"idempotency_key {key!r} is given to the batch or an earlier example of it "
                               "too.").at_row(row)
        seen.add(key)
        keys.append(key)
    return keys


@contextmanager
def _rows_of(rows: list[int]):
    """Errors about example k of a batch made of some of another's examples name example ``rows[k]`` of that."""
    try:
        yield
    except RiverMLError as error:
        if error.row is None or rows[error.row] == error.row:
            raise
        row, error.message, error.row = rows[error.row], error.message.removeprefix(f"Example {error.row}: "), None
        raise error.at_row(row)


def _key_list(key: Any) -> list[str]:
    """A learn's idempotency keys: none, or the one it has (checked)."""
    return [] if key is None else [validate_idempotency_key(key)]


def _check_predict_example(example: Any) -> None:
    _check_example(example)
    validate_features(example.get("features"))
    validate_identifier(example.get("identifier"))


def _predict_rows(model: BoundModel, features: list[dict]) -> list:
    predictions = []
    for row, x in enumerate(features):
        try:
            predictions.append(model.predict(dict(x)))
        except Exception as error:
            raise ModelFailed(f"The model raised on this input ({type(error).__name__}: {error}).").at_row(row) from None
    return predictions


class DjangoClient:
    """The River API for code running inside the Django site.

    ``store`` pins a storage backend; by default the one the settings name is used.
    Without ``user`` the client has full access (server code: every model, no
    quota, uploads owned by nobody). With a user (``request.user``, an
    ``AnonymousUser`` too) it acts as that user: their models and those shared
    with them, the rest answers ModelNotFound. ``public`` is for a route the site
    left open: every model may be read and used through it.
    """

    def __init__(self, store: Store | None = None, user: Any = None, public: bool = False):
        self._registry = ModelRegistry(store) if store is not None else None
        self.caller = Caller(user, public=public)

    @property
    def registry(self) -> ModelRegistry:
        return self._registry or get_registry()

    @property
    def store(self) -> Store:
        return self.registry.store

    # Service ----------------------------------------------------------------

    def info(self, baseurl: str = "") -> dict:
        baseurl = (river_settings.DOMAIN_URL or baseurl).rstrip("/")
        return {
            "baseurl": baseurl,
            "id": "django_river_ml",
            "status": "running",
            "name": "Django River ML Endpoint",
            "description": "This service provides an API for online machine learning models.",
            "documentationUrl": river_settings.documentation_url(baseurl),
            "prefix": river_settings.URL_PREFIX,
            "storage": self.store.backend_name,
            "river_version": river.__version__,
            "version": __version__,
        }

    # Models -----------------------------------------------------------------

    def upload_model(self, model: bytes | Any, flavor: str, model_name: str | None = None,
                     drift_detector: str | None = None, drift_policy: str | None = None,
                     challenger_of: str | None = None) -> str:
        """Add a model (pickled bytes from an untrusted caller, or an object) and return its name.

        A model of the same name is replaced, with fresh metrics and stats; it keeps its
        owner and sharing. Replacing needs the rights to use that model (else ModelNotFound),
        a new model counts against the uploader's MAX_MODELS_PER_USER. ``drift_detector`` (a
        name of :data:`~django_river_ml.lifecycle.DETECTORS`, ``""`` for none) and ``drift_policy``
        override DRIFT_DETECTOR and DRIFT_POLICY for this model. With ``challenger_of``, the model
        joins that model as a challenger (:meth:`add_challenger`) instead.
        """
        if challenger_of is not None:
            if drift_detector is not None or drift_policy is not None:
                raise InvalidInput("A challenger has no drift detection of its own (its champion's watches the model "
                                   "that serves): send drift_detector and drift_policy without challenger_of.")
            return self.add_challenger(challenger_of, model, flavor, name=model_name)
        flavor_ = get_flavor(flavor)
        if model_name is not None:
            validate_new_name(model_name)
        self._may_upload(model_name)  # before the costly load
        detector = river_settings.DRIFT_DETECTOR if drift_detector is None else (
            None if drift_detector in ("", "none") else drift_detector)
        drift = DriftWatch.new(flavor_.name, detector, drift_policy or river_settings.DRIFT_POLICY)
        model = self._loaded(model, flavor_)
        name, incarnation = self._create(model_name, flavor_, model, drift)
        events.emit("upload", {"model": name, "flavor": flavor_.name}, incarnation=incarnation)
        return name

    def upload_spec(self, spec: Any, flavor: str, model_name: str | None = None, **options: Any) -> str:
        """Add a model described in JSON (see :mod:`django_river_ml.specs`): no uploaded code runs.
        ``options`` as :meth:`upload_model`'s."""
        get_flavor(flavor)
        if model_name is not None:
            validate_name(model_name)
        if options.get("challenger_of") is not None:
            self._writable(options["challenger_of"])  # before the costly build
        else:
            self._may_upload(model_name)
        return self.upload_model(get_sandbox().build(spec, flavor).model, flavor, model_name=model_name, **options)

    def models(self) -> list[str]:
        """The names of the models the caller may see, sorted."""
        if self.caller.unrestricted(public=True):
            return self.store.model_names()
        return [info.name for info in self.store.model_infos() if self.caller.may_use(info.access)]

    def get_model(self, model_name: str) -> Any:
        """A copy of the model as it is now (every acknowledged learn included)."""
        return pickle.loads(self.download_model(model_name))  # noqa: S301 - made just now by us

    def download_model(self, model_name: str, version: int | None = None) -> bytes:
        """The model pickled (plain pickle: ``pickle.load`` reads it wherever river is installed); with
        ``version``, as it was at that version."""
        if version is not None:
            info = self._info(model_name)
            found = self.store.version_snapshot(model_name, info.incarnation, validate_version(version))
            if found is None:
                raise VersionNotFound(f"Model {model_name!r} has no version {version}.")
            return self._pickled(load_state(found[1])["model"])
        replica = self._replica(model_name)
        with replica.lock:  # no learn of another thread changes it while it is pickled
            return self._pickled(replica.model)

    @staticmethod
    def _pickled(model: Any) -> bytes:
        try:
            return run_limited(None, pickled, model)
        except ModelCrashed as error:
            raise ModelFailed(f"The model could not be pickled: {error}.") from None

    def get_model_json(self, model_name: str) -> dict:
        replica = self._replica(model_name)
        with replica.lock:
            try:
                return run_limited(river_settings.CALL_TIME_LIMIT_SECONDS, describe_model, replica.model,
                                   memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
            except (CallLimitExceeded, ModelCrashed) as error:
                raise ModelFailed(f"The model's JSON view could not be made: {error}.") from None

    def delete_model(self, model_name: str) -> None:
        """Delete the model with its log, snapshots, metrics, stats, identifiers and access."""
        validate_name(model_name)
        self._require_identity()
        for _ in range(3):
            info = self._info(model_name, write=True)
            if self.store.delete_model(model_name, incarnation=info.incarnation):
                self.registry.forget(model_name)
                events.emit("delete", {"model": model_name}, incarnation=info.incarnation)
                return
        raise Conflict(f"Model {model_name!r} kept changing while it was being deleted; try again.")

    # Lifecycle (docs/lifecycle.md) -----------------------------------------------

    def versions(self, model_name: str) -> dict:
        """The model's versions, oldest first: ``{version, sequence, created, kind, metrics, …}`` each."""
        info = self._info(model_name)
        return {"model": model_name, "versions": self.store.versions(model_name, info.incarnation)}

    def take_version(self, model_name: str) -> dict:
        """Keep the model as it is now (every acknowledged learn included) as a version; its record."""
        info = self._writable(model_name)
        seq = self.registry.take_version(model_name, info.incarnation)
        record = self._version_at(model_name, info.incarnation, seq)
        events.emit("version", {"model": model_name, **record}, incarnation=info.incarnation)
        return {"model": model_name, **record}

    def rollback(self, model_name: str, version: int) -> dict:
        """Go on from version ``version``: its state serves and learns from here on (a new head; nothing is
        deleted, and the rollback is a version of its own, ``kind: "rollback"``)."""
        info = self._writable(model_name)
        return self._restore(model_name, info.incarnation, validate_version(version))

    def _restore(self, model_name: str, incarnation: str, version: int, reason: str = "asked") -> dict:
        found = self.store.version_snapshot(model_name, incarnation, version)
        if found is None:
            raise VersionNotFound(f"Model {model_name!r} has no version {version} (see its versions: "
                                  "older ones go as VERSIONS_KEPT and the others say).")
        newest, info = (self.store.versions(model_name, incarnation) or [{}])[-1], self.store.model_info(model_name)
        if (info is not None and newest.get("kind") == versions.ROLLBACK and newest.get("from_version") == version
                and newest.get("sequence") == info.head):
            # Back there already, and nothing learned since: the same state again would be one more copy of it.
            return {"model": model_name, "from_version": version, **newest}
        seq, _ = self._append(model_name, lambda flavor: {"op": "restore", "state": found[1], "from_version": version},
                              incarnation=incarnation)
        record = self._version_at(model_name, incarnation, seq)
        events.emit("rollback", {"model": model_name, "sequence": seq, "from_version": version, "reason": reason},
                    incarnation=incarnation)
        return {"model": model_name, "from_version": version, **record}

    def _guard(self, model_name: str, incarnation: str) -> None:
        """The design notes' checkpoint guard (ROLLBACK_MARGIN): back to the best recent version when the
        model's first metric fell more than the margin below it (checked as routine versions are written)."""
        replica = self.registry.replica(model_name)
        with replica.lock:
            if replica.incarnation != incarnation or not replica.metrics:
                return
            metric, seq = replica.metrics[0], replica.seq
            name, now, bigger = type(metric).__name__, metric.get(), metric.bigger_is_better
        if not isinstance(now, (int, float)):
            return
        records = self.store.versions(model_name, incarnation)
        scored = [record for record in records if record["kind"] not in (versions.UPLOAD, versions.ROLLBACK)
                  and record["sequence"] < seq
                  and isinstance(record.get("metrics", {}).get(name), (int, float))]
        if not scored:
            return
        best = max(scored, key=lambda record: record["metrics"][name] * (1 if bigger else -1))
        if any(record.get("from_version") == best["version"] for record in records):
            return  # back there once already: the world changed since, not the model (drift tells more)
        value = best["metrics"][name]
        fell = (value - now) if bigger else (now - value)
        if fell > river_settings.ROLLBACK_MARGIN * abs(value):
            self._restore(model_name, incarnation, best["version"], reason=f"guard: {name} {now:.6g}, was {value:.6g}")

    def challengers(self, model_name: str) -> dict:
        """The model's metrics beside those of each of its challengers (learned on the same examples)."""
        replica = self._replica(model_name)
        with replica.lock:
            return {
                "model": model_name,
                "sequence": replica.seq,
                "metrics": describe_metrics(replica.metrics),
                "challengers": [
                    {"name": name, "metrics": describe_metrics(challenger.metrics), "learned": challenger.learned,
                     "error": challenger.error}
                    for name, challenger in sorted(replica.challengers.items())
                ],
                "drift": replica.drift.describe() if replica.drift else None,
            }

    def add_challenger(self, champion: str, model: bytes | Any, flavor: str, name: str | None = None) -> str:
        """Add a challenger (pickled bytes from an untrusted caller, or an object) to ``champion``; its name.

        It learns every example the champion learns from now on, and is scored on them; a challenger
        of that name is replaced. Challengers are of their champion's flavor, at most MAX_CHALLENGERS.
        """
        info = self._writable(champion)
        flavor_ = get_flavor(flavor)
        if flavor_.name != info.flavor:
            raise InvalidInput(f"Model {champion!r} is a {info.flavor} model: its challengers are {info.flavor} "
                               f"models too, not {flavor_.name}.")
        if name is not None:
            validate_name(name)
        model = self._loaded(model, flavor_)
        replica = self._replica(champion)
        name = name or generate_name(lambda candidate: candidate in replica.challengers)
        if name not in replica.challengers and len(replica.challengers) >= river_settings.MAX_CHALLENGERS:
            raise QuotaExceeded(f"Model {champion!r} has {len(replica.challengers)} challengers, the most "
                                "MAX_CHALLENGERS allows: withdraw one first.")
        try:
            metrics = run_limited(river_settings.CALL_TIME_LIMIT_SECONDS, flavor_.make_metrics, model,
                                  memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
        except (CallLimitExceeded, ModelCrashed) as error:
            raise InvalidModel(f"The model failed while its metrics were chosen: {error}.") from None
        state = pickled(Challenger(model, metrics))
        with replica.lock:  # the champion's state with it must fit in MAX_MODEL_BYTES, as an upload must
            size = len(run_limited(None, dump_state, replica.model, replica.metrics, None, None, None,
                                   {**replica.challengers, name: Challenger(model, metrics)}))
        limit = river_settings.MAX_MODEL_BYTES
        if size > limit:
            raise ModelTooLarge(f"Model {champion!r} with this challenger would be {size} bytes as stored, more than "
                                f"MAX_MODEL_BYTES ({limit}) allows (a model's challengers count in its size).")
        most = river_settings.MAX_CHALLENGERS
        _, outcome = self._append(champion, lambda flavor: {"op": "challenge", "name": name, "state": state,
                                                             "most": most}, incarnation=info.incarnation)
        if outcome.prediction == CHALLENGERS_FULL:  # another worker added one since the count above
            raise QuotaExceeded(f"Model {champion!r} has {most} challengers, the most MAX_CHALLENGERS allows: "
                                "withdraw one first.")
        events.emit("challenger", {"model": champion, "challenger": name}, incarnation=info.incarnation)
        return name

    def withdraw_challenger(self, champion: str, name: str) -> None:
        """Stop challenger ``name`` of ``champion``."""
        info = self._writable(champion)
        if name not in self._replica(champion).challengers:
            raise ChallengerNotFound(f"Model {champion!r} has no challenger named {name!r}.")
        self._append(champion, lambda flavor: {"op": "withdraw", "name": name}, incarnation=info.incarnation)
        events.emit("withdraw", {"model": champion, "challenger": name}, incarnation=info.incarnation)

    def promote(self, champion: str, challenger: str) -> dict:
        """Let ``challenger`` serve as ``champion``, with what it has learned; the champion as it was stays a
        version (``kind: "before-promote"``) to roll back to."""
        info = self._writable(champion)
        if challenger not in self._replica(champion).challengers:
            raise ChallengerNotFound(f"Model {champion!r} has no challenger named {challenger!r}.")
        seq, _ = self._append(champion, lambda flavor: {"op": "promote", "challenger": challenger},
                              incarnation=info.incarnation)
        record = self._version_at(champion, info.incarnation, seq)
        events.emit("promote", {"model": champion, "challenger": challenger, "sequence": seq},
                    incarnation=info.incarnation)
        return {"model": champion, "challenger": challenger, **record}

    def _writable(self, model_name: str) -> ModelInfo:
        """The model, if the caller may change it (as a replacing upload may)."""
        self._require_identity()
        return self._info(model_name, write=True)

    def _version_at(self, model_name: str, incarnation: str, seq: int) -> dict:
        """The record of the version written at ``seq`` (just now); a bare one if its snapshot failed."""
        for record in reversed(self.store.versions(model_name, incarnation)):
            if record["sequence"] == seq:
                return record
        return {"version": None, "sequence": seq}

    def _loaded(self, model: bytes | Any, flavor_) -> Any:
        """An uploaded model: loaded in the sandbox when it comes as bytes, then checked for its flavor."""
        if isinstance(model, (bytes, bytearray, memoryview)):
            if len(model) > river_settings.MAX_UPLOAD_SIZE:
                raise PayloadTooLarge(f"The model is larger than the limit of {river_settings.MAX_UPLOAD_SIZE} bytes.")
            model = get_sandbox().load(bytes(model), flavor_.name).model
        try:  # the check asks the model itself (does it implement predict_proba_one?)
            run_limited(river_settings.CALL_TIME_LIMIT_SECONDS, flavor_.check, model,
                        memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
        except (CallLimitExceeded, ModelCrashed) as error:
            raise InvalidModel(f"The model failed while it was checked: {error}.") from None
        return model

    # Sharing ------------------------------------------------------------------

    def get_access(self, model_name: str) -> dict:
        """``{"owner", "users", "groups"}`` of the model, by name (its owner and staff only)."""
        self._require_identity()
        return access.describe(self._managed(model_name).access)

    def set_access(self, model_name: str, owner: str | None = None, users: list[str] | None = None,
                   groups: list[str] | None = None) -> dict:
        """Change the owner, or whom the model is shared with (by user and group name; None keeps a field).

        Only the owner and staff may share; only staff (and server code) may give a model to
        another owner, who must exist.
        """
        if river_settings.DISABLE_AUTHENTICATION:
            raise InvalidInput("Authentication is disabled (DISABLE_AUTHENTICATION): every model is open to "
                               "everyone, so there is no sharing to set.")
        self._require_identity()
        info = self._managed(model_name)
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise InvalidInput("owner must be a user name.")
        owner_id = access.user_ids([owner], "owner")[0] if owner is not None else None
        if owner_id is not None and owner_id != info.access.owner and not self.caller.unrestricted(public=False):
            # Given models would fill another user's quota and list without their consent.
            raise AccessDenied("Only staff may give a model to another user; share it with them instead.")
        user_ids = access.user_ids(users) if users is not None else None
        group_ids = access.group_ids(groups) if groups is not None else None
        for _ in range(3):
            current = info.access
            new = Access(owner=current.owner if owner_id is None else owner_id,
                         users=current.users if user_ids is None else user_ids,
                         groups=current.groups if group_ids is None else group_ids)
            # Only staff and server code change owners, and they are exempt from the quota.
            if self.store.set_access(model_name, info.incarnation, new, max_owned=None) == OK:
                events.emit("access", {"model": model_name}, incarnation=info.incarnation)
                return access.describe(new)
            info = self._managed(model_name)  # replaced or deleted meanwhile: look again
        raise Conflict(f"Model {model_name!r} kept changing while its access was being set; try again.")

    # Learning and predicting --------------------------------------------------

    def learn(self, model_name: str, features: dict | None = None, ground_truth: Any = None,
              identifier: str | None = None, idempotency_key: str | None = None) -> dict:
        """Learn one example; with an identifier, the prediction made for it is scored and consumed.

        With an ``idempotency_key`` the example is learned once: a learn repeating the key of
        one the model took (within IDEMPOTENCY_SECONDS) learns nothing and answers that learn's
        ``sequence`` with ``"duplicate": True`` (see :meth:`_once`).
        """
        started = time.perf_counter_ns()
        checked = self._check(model_name)  # before an identifier is taken
        identifier = validate_identifier(identifier)
        keys = _key_list(idempotency_key)
        validate_value("ground_truth", ground_truth)

        def learn_once(incarnation: str | None, recorded: dict[str, int]) -> dict:
            if recorded:
                return {"model": model_name, "sequence": recorded[idempotency_key], "duplicate": True}
            x, prediction_known, prediction, record = features, False, None, None
            if identifier is not None:
                record = self._take_identifier(model_name, identifier, required=x is None)
                if record is not None:
                    x = x if x is not None else record["x"]
                    prediction_known, prediction = True, record["p"]
            validate_features(x)

            def make_entry(flavor) -> dict:
                flavor.validate_target(ground_truth)
                entry = {"x": x, "y": ground_truth}
                if prediction_known:
                    entry["p"] = prediction
                return entry

            seq, outcome = self._learn(model_name, make_entry, identifier, record, incarnation, keys)
            result = {"model": model_name, "sequence": seq}
            if outcome.prediction is not None:
                result["prediction"] = to_jsonable(outcome.prediction)
            self._finish("learn", model_name, outcome.incarnation, started,
                         {**result, "features": x, "ground_truth": ground_truth})
            return result

        return self._once(model_name, checked, keys, learn_once)

    def label(self, label: Any, identifier: str, model_name: str, idempotency_key: str | None = None) -> dict:
        """Learn a past prediction's features with the label that became known.

        A label is learned once without a key: the identifier is taken away atomically, and a
        repeated label finds it gone (IdentifierNotFound). With an ``idempotency_key``, a retry
        tells more: the first label's ``sequence`` with ``"duplicate": True`` if it was learned.
        """
        started = time.perf_counter_ns()
        checked = self._check(model_name)  # before the identifier is taken
        if validate_identifier(identifier) is None:
            raise InvalidInput("identifier is required.")
        if label is None:
            raise InvalidInput("label is required.")
        validate_value("label", label)
        keys = _key_list(idempotency_key)

        def label_once(incarnation: str | None, recorded: dict[str, int]) -> dict:
            if recorded:
                return {"model": model_name, "identifier": identifier, "sequence": recorded[idempotency_key],
                        "duplicate": True}
            record = self._take_identifier(model_name, identifier, required=True)

            def make_entry(flavor) -> dict:
                flavor.validate_target(label, field="label")
                return {"x": record["x"], "y": label, "p": record["p"]}

            seq, outcome = self._learn(model_name, make_entry, identifier, record, incarnation, keys)
            result = {"model": model_name, "identifier": identifier, "sequence": seq}
            self._finish("label", model_name, outcome.incarnation, started,
                         {**result, "features": record["x"], "prediction": record["p"], "label": label})
            return result

        return self._once(model_name, checked, keys, label_once)

    def predict(self, model_name: str, features: dict, identifier: str | None = None) -> dict:
        """Predict; the answer has an ``identifier`` to label later when one was made or given.

        A given identifier that is already pending is an IdentifierConflict: the
        pending prediction is never replaced (its label would learn the newcomer's features).
        """
        started = time.perf_counter_ns()
        validate_name(model_name)
        validate_features(features)
        identifier = validate_identifier(identifier)
        replica = self._replica(model_name)
        if identifier is None and river_settings.GENERATE_IDENTIFIERS:
            identifier = str(uuid.uuid4())
        kept_first = identifier is not None and replica.flavor.predictions_change_state
        if kept_first:  # kept before the prediction is logged: a conflict must not change the model
            self._keep(model_name, identifier, features, None)
        try:
            prediction = self._predict(model_name, replica, features)
        except Exception:
            if kept_first:
                self.store.pop_identifier(model_name, identifier)
            raise
        result = {"model": model_name, "prediction": to_jsonable(prediction)}
        if identifier is not None:
            if not kept_first:
                self._keep(model_name, identifier, features, prediction)
            result["identifier"] = identifier
        self._finish("predict", model_name, replica.incarnation, started, {**result, "features": features})
        return result

    # Batches ------------------------------------------------------------------

    def learn_many(self, model_name: str, examples: list[dict], idempotency_key: str | None = None) -> dict:
        """Learn a batch of ``{"features", "ground_truth", "identifier"?, "idempotency_key"?}`` examples, all or
        nothing.

        Every example is checked before anything is written; the batch is one log entry, so
        a model that raises on example k leaves the model as it was, on every worker, and the
        error (a :class:`RiverMLError` with ``row`` = k) says which. An identifier scores its
        stored prediction, as in :meth:`learn`, and is consumed only if the batch is learned.

        Idempotency keys (the batch's, and each example's) are recorded with the entry. A batch
        whose key the model took, or whose every example's key it took, learns nothing; the
        examples whose keys it took are left out of the others. ``duplicates`` counts the
        examples left out (when there are), ``sequence`` is then the log position from which the
        model has learned every example of the batch.
        """
        started = time.perf_counter_ns()
        checked = self._check(model_name)
        rows = self._batch(examples, _check_learn_example)
        batch_key = validate_idempotency_key(idempotency_key)
        keys = _batch_keys(batch_key, rows)

        def learn_once(incarnation: str | None, recorded: dict[str, int]) -> dict:
            result = {"model": model_name, "learned": len(rows)}
            left = [] if batch_key in recorded else [
                row for row, example in enumerate(rows) if example.get("idempotency_key") not in recorded]
            if not left:
                return {**result, "sequence": max(recorded.values()), "duplicates": len(rows)}
            seq, outcome = self._learn_rows(model_name, rows, left, incarnation,
                                            [key for key in keys if key not in recorded])
            result["sequence"] = seq
            if len(left) < len(rows):
                result["duplicates"] = len(rows) - len(left)
            self._finish("learn", model_name, outcome.incarnation, started, result)
            return result

        return self._once(model_name, checked, keys, learn_once)

    def _learn_rows(self, model_name: str, rows: list[dict], left: list[int], incarnation: str | None,
                    keys: list[str]) -> tuple[int, Outcome]:
        """Append examples ``left`` of a batch as one entry, with its idempotency ``keys``; errors name rows of
        the whole batch."""
        entries = {row: {"x": rows[row].get("features"), "y": rows[row].get("ground_truth")} for row in left}
        taken: list[tuple[str, dict]] = []
        try:
            for row in left:
                identifier = rows[row].get("identifier")
                if identifier is None:
                    continue
                with _about_row(row):
                    record = self._take_identifier(model_name, identifier, required=entries[row]["x"] is None)
                if record is not None:
                    taken.append((identifier, record))
                    entries[row]["p"] = record["p"]
                    if entries[row]["x"] is None:
                        entries[row]["x"] = record["x"]
            learned = list(entries.values())

            def make_entry(flavor) -> dict:
                _each_row(learned, lambda entry: flavor.validate_target(entry["y"]))
                return {"op": "learn_many", "rows": learned}

            with _rows_of(left):
                return self._append(model_name, make_entry, incarnation=incarnation, keys=keys)
        except Exception:
            for identifier, record in taken:  # nothing was learned: the predictions stay pending
                self._give_back(model_name, identifier, record)
            raise

    def predict_many(self, model_name: str, examples: list[dict]) -> dict:
        """Predictions for a batch of ``{"features", "identifier"?}`` examples, in order.

        Only examples that carry an identifier are kept for a later label (a batch makes
        none up, whatever GENERATE_IDENTIFIERS says: it would be a store write per example).
        """
        started = time.perf_counter_ns()
        validate_name(model_name)
        rows = self._batch(examples, _check_predict_example)
        replica = self._replica(model_name)
        features = [example["features"] for example in rows]
        identified = _identified_rows(rows)
        # A model that changes when it predicts: identifiers are kept first (a conflict must not
        # change the model); the record's prediction is not needed, since such a model has no metrics.
        kept_first = replica.flavor.predictions_change_state
        if kept_first:
            self._keep_all(model_name, [(row, identifier, features[row], None) for row, identifier in identified])
        try:
            if kept_first:
                _, outcome = self.registry.append(model_name, lambda flavor: {"op": "predict_many", "xs": features},
                                                  incarnation=replica.incarnation)
                predictions = outcome.prediction
            else:
                with replica.lock:
                    try:
                        predictions = run_limited(batch_limit(len(rows)), _predict_rows,
                                                  replica.flavor.bind(replica.model), features,
                                                  memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
                    except CallLimitExceeded as error:
                        raise ModelFailed(f"The model stopped on this batch: {error}.") from None
        except Exception:
            self._drop_all(model_name, [identifier for _, identifier in identified] if kept_first else [])
            raise
        if not kept_first:
            self._keep_all(model_name, [(row, identifier, features[row], predictions[row])
                                        for row, identifier in identified])
        answers = [{"prediction": to_jsonable(prediction)} for prediction in predictions]
        for row, identifier in identified:
            answers[row]["identifier"] = identifier
        result = {"model": model_name, "predictions": answers}
        self._finish("predict", model_name, replica.incarnation, started, {"model": model_name, "predicted": len(rows)})
        return result

    @staticmethod
    def _batch(examples: Any, check: Callable[[Any], None]) -> list[dict]:
        """The batch's examples, each passed through ``check``."""
        if not isinstance(examples, list) or not examples:
            raise InvalidInput("examples must be a non-empty list of examples.")
        limit = river_settings.MAX_BATCH_ROWS
        if len(examples) > limit:
            raise PayloadTooLarge(f"The batch has {len(examples)} examples; MAX_BATCH_ROWS allows {limit}.")
        _each_row(examples, check)
        return examples

    # Reporting ----------------------------------------------------------------

    def metrics(self, model_name: str) -> dict:
        replica = self._replica(model_name)
        with replica.lock:
            return describe_metrics(replica.metrics)

    def stats(self, model_name: str) -> dict:
        """Call counts, durations (ns) and rates, aggregated over every worker in the store.

        ``p50/p95/p99_duration`` come from the latency histogram (:func:`callstats.percentile`);
        ``rate_per_second`` is over the last minute (since the upload, for a younger model). ``drift``
        counts the drifts the model's detector found as its ``n_calls`` (docs/lifecycle.md).
        """
        info = self._info(model_name)
        callstats.flush(self.store)  # this process's own calls are in what it reads
        recorded = self.store.call_stats(model_name)
        now = time.time()
        result = {}
        for operation in (*STAT_OPERATIONS, DRIFTS):
            stats = recorded.get(operation) or CallStats(0, 0, 0.0)
            durations = {"mean": int(stats.total_ns / stats.n_calls) if stats.n_calls else 0, "ewm": int(stats.ewm_ns)}
            durations.update((name, int(callstats.percentile(stats.buckets, q)))
                             for name, q in STAT_PERCENTILES.items())
            result[operation] = {"n_calls": stats.n_calls}
            for name, nanoseconds in durations.items():
                result[operation][f"{name}_duration"] = nanoseconds
                result[operation][f"{name}_duration_human"] = humanize_ns(nanoseconds)
            result[operation]["rate_per_second"] = round(callstats.rate_per_second(stats.slots, now, info.created), 3)
        return result

    # Access -------------------------------------------------------------------

    def _info(self, model_name: str, write: bool = False) -> ModelInfo:
        """The model if the caller may use it (``write``: replace or delete it), else ModelNotFound.

        Missing and forbidden look the same, so a model's existence does not leak.
        """
        info = self.store.model_info(validate_name(model_name))
        if info is None or not self.caller.may_use(info.access, public=not write):
            raise ModelNotFound(f"No model named {model_name!r}.")
        return info

    def _check(self, model_name: str) -> str | None:
        """ModelNotFound unless the caller may use the model (no look-up for full access).

        Returns the incarnation that was checked (None for full access), so that an append
        cannot land in a model someone else uploaded under that name meanwhile.
        """
        validate_name(model_name)
        if self.caller.unrestricted(public=True):
            return None
        return self._info(model_name).incarnation

    def _replica(self, model_name: str) -> Replica:
        """The model's replica, if the caller may use it (the one whose access was checked)."""
        validate_name(model_name)
        if self.caller.unrestricted(public=True):
            return self.registry.replica(model_name)
        for _ in range(3):
            info = self._info(model_name)
            replica = self.registry.replica(model_name)
            if replica.incarnation == info.incarnation:
                return replica
        raise ModelNotFound(f"No model named {model_name!r}.")

    def _managed(self, model_name: str) -> ModelInfo:
        info = self._info(model_name, write=True)
        if not self.caller.may_manage(info.access):
            raise AccessDenied(f"Only the owner of model {model_name!r} or staff may see or change whom it is "
                               "shared with.")
        return info

    def _require_identity(self) -> None:
        if not self.caller.identified:
            raise AuthenticationRequired("Models belong to users: sign in to upload, delete or share one.")

    def _may_upload(self, model_name: str | None) -> None:
        """Who may upload: a signed-in caller; under a taken name, one who may use that model; else within quota."""
        self._require_identity()
        if model_name is not None:
            info = self.store.model_info(model_name)
            if info is not None:
                if not self.caller.may_use(info.access, public=False):
                    raise ModelNotFound(f"No model named {model_name!r}.")
                return  # a replacement: the owner owns no more models than before
        if not self.caller.exempt_from_quotas:
            if self.store.owned_count(self.caller.user_id) >= river_settings.MAX_MODELS_PER_USER:
                raise self._over_quota()

    def _over_quota(self) -> QuotaExceeded:
        limit = river_settings.MAX_MODELS_PER_USER
        return QuotaExceeded(f"You own {limit} models, the most MAX_MODELS_PER_USER allows: delete one first "
                             "(or ask an administrator to raise the limit).")

    def _create(self, model_name: str | None, flavor_, model: Any, drift: DriftWatch | None = None) -> tuple[str, str]:
        """Store the model: a new one owned by the caller, or a replacement keeping its access (compare-and-set)."""
        max_owned = None if self.caller.exempt_from_quotas else river_settings.MAX_MODELS_PER_USER
        for _ in range(5):
            name = model_name or generate_name(lambda candidate: self.store.model_info(candidate) is not None)
            info = self.store.model_info(name) if model_name else None
            if info is not None and not self.caller.may_use(info.access, public=False):
                raise ModelNotFound(f"No model named {name!r}.")
            outcome, incarnation = self.registry.create(
                name, flavor_, model, drift=drift, access=info.access if info else Access(owner=self.caller.user_id),
                expect=info.incarnation if info else None, max_owned=max_owned,
            )
            if outcome == OK:
                return name, incarnation
            if outcome == OVER_QUOTA:
                raise self._over_quota()
            # Created, replaced or deleted by someone else meanwhile: look again.
        raise Conflict(f"Model {model_name!r} kept changing while it was being uploaded; try again.")

    # Internals ----------------------------------------------------------------

    def _once(self, model_name: str, checked: str | None, keys: list[str],
              learn: Callable[[str | None, dict[str, int]], dict]) -> dict:
        """``learn(incarnation, recorded)``, with idempotency ``keys``: whatever a key names is learned once.

        ``recorded`` holds the keys an earlier learn of the model recorded (``{key: sequence of its
        entry}``; see :meth:`ModelRegistry.recorded_keys`): ``learn`` leaves out what they name, or
        answers again without learning. Keys are the model's upload's (``incarnation``); two learns
        racing with one key both get here, the store lets one append, and the other looks again.
        """
        if not keys:
            return learn(checked, {})
        incarnation = checked or self._info(model_name).incarnation
        for _ in range(KEYED_ATTEMPTS):
            try:
                return learn(incarnation, self.registry.recorded_keys(model_name, incarnation, keys))
            except KeysKnown:
                continue
        raise Conflict(f"Learns with the same idempotency keys kept racing for model {model_name!r}; try again.")

    @staticmethod
    def _record(features: dict, prediction: Any) -> bytes:
        """What a pending identifier keeps, refused over MAX_IDENTIFIER_BYTES."""
        record = pickle.dumps({"x": features, "p": prediction}, protocol=pickle.HIGHEST_PROTOCOL)
        limit = river_settings.MAX_IDENTIFIER_BYTES
        if len(record) > limit:
            raise PayloadTooLarge(
                f"The prediction to keep for a later label (features and prediction) takes {len(record)} bytes; "
                f"MAX_IDENTIFIER_BYTES allows {limit}. Send fewer or shorter features, or ask an administrator "
                "to raise the limit."
            )
        return record

    def _take_identifier(self, model_name: str, identifier: str, required: bool) -> dict | None:
        data = self.store.pop_identifier(model_name, identifier)
        if data is None:
            if required:
                raise IdentifierNotFound(
                    f"No pending prediction {identifier!r} for model {model_name!r}: it was never made, "
                    "has expired, or was already labelled."
                )
            return None
        return pickle.loads(data)  # noqa: S301 - written by predict() into our store

    def _predict(self, model_name: str, replica: Replica, features: dict) -> Any:
        if replica.flavor.predictions_change_state:
            _, outcome = self.registry.append(model_name, lambda flavor: {"op": "predict", "x": features},
                                              incarnation=replica.incarnation)
            return outcome.prediction
        with replica.lock:
            try:
                return run_limited(river_settings.CALL_TIME_LIMIT_SECONDS, replica.flavor.predict, replica.model,
                                   dict(features), memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
            except CallLimitExceeded as error:
                raise ModelFailed(f"The model stopped on this input: {error}.") from None
            except Exception as error:
                raise ModelFailed(f"The model raised on this input ({type(error).__name__}: {error}).") from None

    def _learn(self, model_name, make_entry, identifier, record, incarnation: str | None, keys: list[str]):
        try:
            return self._append(model_name, make_entry, incarnation=incarnation, keys=keys)
        except Exception:
            if record is not None:  # let the caller try again with a corrected label
                self._give_back(model_name, identifier, record)
            raise

    def _append(self, model_name: str, make_entry: Callable, incarnation: str | None = None,
                keys: list[str] = ()) -> tuple[int, Any]:
        """Append a learn entry; report the drifts its learns found (this worker appended it: it alone reports)."""
        seq, outcome = self.registry.append(model_name, make_entry, incarnation=incarnation, keys=keys)
        if outcome.drifts:
            for _ in outcome.drifts:
                callstats.count(self.store, model_name, outcome.incarnation, DRIFTS, 0)
            replica = self.registry.replica(model_name)
            events.emit("drift", {"model": model_name, "sequence": seq, "examples": outcome.drifts,
                                  "policy": outcome.drift_policy, **(replica.drift.describe() if replica.drift else {})},
                        incarnation=outcome.incarnation)
        if outcome.snapshot == versions.SNAPSHOT and river_settings.ROLLBACK_MARGIN is not None:
            self._guard(model_name, outcome.incarnation)
        return seq, outcome

    def _keep(self, model_name: str, identifier: str, features: dict, prediction: Any) -> None:
        """Keep a prediction for its label; one already pending under that identifier is never replaced."""
        if not self.store.put_identifier(model_name, identifier, self._record(features, prediction),
                                         river_settings.IDENTIFIER_TTL_SECONDS, river_settings.MAX_PENDING_IDENTIFIERS):
            raise IdentifierConflict(
                f"A prediction is already pending under identifier {identifier!r} for model {model_name!r}: "
                "label it first, or use another identifier."
            )

    def _keep_all(self, model_name: str, kept: list[tuple[int, str, dict, Any]]) -> None:
        """Keep the predictions of a batch's (row, identifier, features, prediction): all of them, or none."""
        done = []
        try:
            for row, identifier, features, prediction in kept:
                with _about_row(row):
                    self._keep(model_name, identifier, features, prediction)
                done.append(identifier)
        except Exception:
            self._drop_all(model_name, done)
            raise

    def _drop_all(self, model_name: str, identifiers: list[str]) -> None:
        for identifier in identifiers:
            self.store.pop_identifier(model_name, identifier)

    def _give_back(self, model_name: str, identifier: str, record: dict) -> None:
        """A taken prediction is pending again (its learn failed)."""
        self.store.put_identifier(model_name, identifier, pickle.dumps(record),
                                  river_settings.IDENTIFIER_TTL_SECONDS, river_settings.MAX_PENDING_IDENTIFIERS)

    def _finish(self, operation: str, model_name: str, incarnation: str, started: int, event: dict) -> None:
        callstats.count(self.store, model_name, incarnation, operation, time.perf_counter_ns() - started)
        events.emit(operation, event, incarnation=incarnation)

