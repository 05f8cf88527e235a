"""DjangoClient: every River-API operation as a Python call, for views and server code.

All logic lives here; the REST views and management commands only call it.
Errors are raised as the typed exceptions of :mod:`django_river_ml.exceptions`.

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

import math
import pickle
import time
import uuid
from typing import Any

import river

from django_river_ml import events
from django_river_ml.describe import describe_model, to_jsonable
from django_river_ml.exceptions import (
    IdentifierNotFound,
    InvalidInput,
    ModelFailed,
    ModelNotFound,
    PayloadTooLarge,
)
from django_river_ml.flavors import get_flavor
from django_river_ml.loading import load_model
from django_river_ml.names import generate_name, validate_name
from django_river_ml.settings import river_settings
from django_river_ml.specs import build_model
from django_river_ml.state import ModelRegistry, get_registry, pickled
from django_river_ml.storage import Store
from django_river_ml.validation import validate_features, validate_identifier, validate_value
from django_river_ml.version import __version__

STAT_OPERATIONS = ("learn", "predict", "label")


def humanize_ns(nanoseconds: float) -> str:
    """A duration for people: ``humanize_ns(1_500_000)`` is ``'1.50 ms'``."""
    for unit, size in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if nanoseconds >= size:
            return f"{nanoseconds / size:.2f} {unit}"
    return f"{nanoseconds:.0f} ns"


class DjangoClient:
    """The River API for code running inside the Django site.

    ``store`` pins a storage backend; by default the one the settings name is used.
    """

    def __init__(self, store: Store | None = None):
        self._registry = ModelRegistry(store) if store is not None else None

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
            "documentationUrl": "https://github.com/vsoch/django-river-ml",
            "prefix": river_settings.URL_PREFIX,
            "storage": self.store.backend_name,
            "river_version": river.__version__,
            "version": __version__,
        }

    # Models -----------------------------------------------------------------

    def upload_model(self, model: bytes | Any, flavor: str, model_name: str | None = None) -> str:
        """Add a model (pickled bytes from an untrusted caller, or an object) and return its name.

        A model of the same name is replaced, with fresh metrics and stats.
        """
        flavor_ = get_flavor(flavor)
        if model_name is not None:
            validate_name(model_name)
        if isinstance(model, (bytes, bytearray, memoryview)):
            if len(model) > river_settings.MAX_UPLOAD_SIZE:
                raise PayloadTooLarge(f"The model is larger than the limit of {river_settings.MAX_UPLOAD_SIZE} bytes.")
            model = load_model(bytes(model))
        flavor_.check(model)
        name = model_name or generate_name(lambda candidate: self.store.model_info(candidate) is not None)
        self.registry.create(name, flavor_, model)
        events.emit("upload", {"model": name, "flavor": flavor_.name})
        return name

    def upload_spec(self, spec: Any, flavor: str, model_name: str | None = None) -> str:
        """Add a model described in JSON (see :mod:`django_river_ml.specs`): no uploaded code runs."""
        get_flavor(flavor)
        return self.upload_model(build_model(spec), flavor, model_name=model_name)

    def models(self) -> list[str]:
        return self.store.model_names()

    def get_model(self, model_name: str) -> Any:
        """A copy of the model as it is now (every acknowledged learn included)."""
        return pickle.loads(self.download_model(model_name))  # noqa: S301 - made just now by us

    def download_model(self, model_name: str) -> bytes:
        """The model pickled (plain pickle: ``pickle.load`` reads it wherever river is installed)."""
        replica = self.registry.replica(validate_name(model_name))
        with replica.lock:
            return pickled(replica.model)

    def get_model_json(self, model_name: str) -> dict:
        replica = self.registry.replica(validate_name(model_name))
        with replica.lock:
            return describe_model(replica.model)

    def delete_model(self, model_name: str) -> None:
        """Delete the model with its log, snapshots, metrics, stats and identifiers."""
        if not self.store.delete_model(validate_name(model_name)):
            raise ModelNotFound(f"No model named {model_name!r}.")
        self.registry.forget(model_name)
        events.emit("delete", {"model": model_name})

    # Learning and predicting --------------------------------------------------

    def learn(self, model_name: str, features: dict | None = None, ground_truth: Any = None,
              identifier: str | None = None) -> dict:
        """Learn one example; with an identifier, the prediction made for it is scored and consumed."""
        started = time.perf_counter_ns()
        validate_name(model_name)
        identifier = validate_identifier(identifier)
        validate_value("ground_truth", ground_truth)
        prediction_known, prediction, record = False, None, None
        if identifier is not None:
            record = self._take_identifier(model_name, identifier, required=features is None)
            if record is not None:
                features = features if features is not None else record["x"]
                prediction_known, prediction = True, record["p"]
        validate_features(features)

        def make_entry(flavor) -> dict:
            flavor.validate_target(ground_truth)
            entry = {"x": features, "y": ground_truth}
            if prediction_known:
                entry["p"] = prediction
            return entry

        seq, outcome = self._learn(model_name, make_entry, identifier, record)
        result = {"model": model_name, "sequence": seq}
        if outcome.prediction is not None:
            result["prediction"] = to_jsonable(outcome.prediction)
        self._finish("learn", model_name, started, {**result, "features": features, "ground_truth": ground_truth})
        return result

    def label(self, label: Any, identifier: str, model_name: str) -> dict:
        """Learn a past prediction's features with the label that became known."""
        started = time.perf_counter_ns()
        validate_name(model_name)
        if validate_identifier(identifier) is None:
            raise InvalidInput("identifier is required.")
        if label is None:
            raise InvalidInput("label is required.")
        validate_value("label", label)
        record = self._take_identifier(model_name, identifier, required=True)

        def make_entry(flavor) -> dict:
            flavor.validate_target(label, field="label")
            return {"x": record["x"], "y": label, "p": record["p"]}

        seq, _ = self._learn(model_name, make_entry, identifier, record)
        result = {"model": model_name, "identifier": identifier, "sequence": seq}
        self._finish("label", model_name, started,
                     {**result, "features": record["x"], "prediction": record["p"], "label": label})
        return result

    def predict(self, model_name: str, features: dict, identifier: str | None = None) -> dict:
        """Predict; the answer has an ``identifier`` to label later when one was made or given."""
        started = time.perf_counter_ns()
        validate_name(model_name)
        validate_features(features)
        identifier = validate_identifier(identifier)
        prediction = self._predict(model_name, features)
        if identifier is None and river_settings.GENERATE_IDENTIFIERS:
            identifier = str(uuid.uuid4())
        result = {"model": model_name, "prediction": to_jsonable(prediction)}
        if identifier is not None:
            record = pickle.dumps({"x": features, "p": prediction}, protocol=pickle.HIGHEST_PROTOCOL)
            self.store.put_identifier(model_name, identifier, record, river_settings.IDENTIFIER_TTL_SECONDS)
            result["identifier"] = identifier
        self._finish("predict", model_name, started, {**result, "features": features})
        return result

    # Reporting ----------------------------------------------------------------

    def metrics(self, model_name: str) -> dict:
        replica = self.registry.replica(validate_name(model_name))
        with replica.lock:
            return {type(metric).__name__: to_jsonable(metric.get()) for metric in replica.metrics}

    def stats(self, model_name: str) -> dict:
        """Call counts and durations, aggregated over every worker in the store."""
        if self.store.model_info(validate_name(model_name)) is None:
            raise ModelNotFound(f"No model named {model_name!r}.")
        recorded = self.store.call_stats(model_name)
        result = {}
        for operation in STAT_OPERATIONS:
            stats = recorded.get(operation)
            n_calls = stats.n_calls if stats else 0
            mean = int(stats.total_ns / stats.n_calls) if stats and stats.n_calls else 0
            ewm = int(stats.ewm_ns) if stats else 0
            result[operation] = {
                "n_calls": n_calls,
                "mean_duration": mean,
                "mean_duration_human": humanize_ns(mean),
                "ewm_duration": ewm,
                "ewm_duration_human": humanize_ns(ewm),
            }
        return result

    # Internals ----------------------------------------------------------------

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

    def _predict(self, model_name: str, features: dict) -> Any:
        replica = self.registry.replica(model_name)
        if replica.flavor.predictions_change_state:
            _, outcome = self.registry.append(model_name, lambda flavor: {"op": "predict", "x": features})
            return outcome.prediction
        with replica.lock:
            try:
                return replica.flavor.predict(replica.model, dict(features))
            except Exception as error:
                raise ModelFailed(f"The model raised on this input ({type(error).__name__}: {error}).") from None

    def _learn(self, model_name, make_entry, identifier, record):
        try:
            return self.registry.append(model_name, make_entry)
        except Exception:
            if record is not None:  # let the caller try again with a corrected label
                self.store.put_identifier(model_name, identifier, pickle.dumps(record),
                                          river_settings.IDENTIFIER_TTL_SECONDS)
            raise

    def _finish(self, operation: str, model_name: str, started: int, event: dict) -> None:
        duration = time.perf_counter_ns() - started
        self.store.record_call(model_name, operation, duration, float(river_settings.STATS_EWM_ALPHA))
        events.emit(operation, event)

