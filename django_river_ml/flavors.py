"""Flavors: what kind of model, how it predicts, learns and is scored.

A flavor is chosen at upload time and fixes, for the model's life, which
method makes a prediction, whether learning needs a target, and which river
metrics are kept.

>>> from river import linear_model
>>> flavor = get_flavor("regression")
>>> flavor.check(linear_model.LinearRegression())
>>> [type(m).__name__ for m in flavor.make_metrics()]
['MAE', 'RMSE', 'SMAPE']
>>> get_flavor("binary").check(linear_model.LinearRegression())
Traceback (most recent call last):
...
django_river_ml.exceptions.InvalidModel: A binary model needs predict_proba_one, and LinearRegression does not have it.
"""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, Callable

from river import base, metrics

from django_river_ml.exceptions import InvalidInput, InvalidModel, UnknownFlavor


def last_step(model: Any) -> Any:
    """The estimator that answers for a model: a pipeline's final step, else the model."""
    steps = getattr(model, "steps", None)
    if isinstance(steps, dict) and steps:
        return last_step(list(steps.values())[-1])
    return model


def _has(model: Any, method: str) -> bool:
    """Both the model and the step that answers for it have ``method``."""
    return callable(getattr(model, method, None)) and callable(getattr(last_step(model), method, None))


def _declared_only(model: Any, method: str) -> bool:
    """river's base.Classifier declares predict_proba_one raising NotImplementedError."""
    return getattr(type(last_step(model)), method, None) is base.Classifier.predict_proba_one


def implements(model: Any, method: str) -> bool:
    """Whether ``model.method`` answers instead of raising NotImplementedError.

    Having the method proves nothing for a river classifier (see
    :func:`_declared_only`), and a wrapper may forward to a model that lacks it.
    So a copy is asked once, at upload, on an empty example; any other error
    means the method exists and only needs real features.
    """
    if not _has(model, method) or _declared_only(model, method):
        return False
    try:
        getattr(_copy(model), method)({})
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001 - implemented, only not for an empty example
        pass
    return True


def _copy(model: Any) -> Any:
    """A copy to try things on: a pickle round trip (twice as fast as deepcopy), else deepcopy."""
    try:
        return pickle.loads(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301 - made here
    except Exception:  # noqa: BLE001 - not picklable with plain pickle (a dill-only object)
        return copy.deepcopy(model)


# River kinds a classifier flavor refuses, with the flavor to use instead.
_NOT_CLASSIFIERS = (
    (base.Regressor, "a regressor", "regression"),
    (base.Clusterer, "a clusterer", "cluster"),
    (base.AnomalyDetector, "an anomaly detector", "anomaly"),
    (base.SupervisedAnomalyDetector, "an anomaly detector", "anomaly"),
)


def _is_supervised(model: Any) -> bool:
    return bool(getattr(last_step(model), "_supervised", True))


def _is_number(value: Any) -> bool:
    if not isinstance(value, Number) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _is_label(value: Any) -> bool:
    return isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value))


def label_kind(label: Any) -> str:
    """``"boolean"``, ``"number"`` or ``"string"``: JSON's kinds of label."""
    if isinstance(label, bool):
        return "boolean"
    return "string" if isinstance(label, str) else "number"


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut short for a message (an int of 5000 digits has no repr at all)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _most_likely(prediction: Any) -> Any:
    if isinstance(prediction, dict):
        return max(prediction, key=prediction.get) if prediction else None
    return prediction


@dataclass(frozen=True)
class Flavor:
    """One kind of model. ``predict_method`` makes the prediction returned to callers."""

    name: str
    description: str
    predict_method: str
    # Methods the uploaded object must have (beyond learn_one).
    required_methods: tuple[str, ...]
    # None: the target is ignored; else a check and the words for the error.
    target_check: Callable[[Any], bool] | None = None
    target_words: str = ""
    metric_factories: tuple[Callable[[], metrics.base.Metric], ...] = field(default_factory=tuple)
    # Tried in order when the model lacks predict_method or does not implement it (river's
    # base.Classifier declares predict_proba_one raising NotImplementedError).
    fallback_methods: tuple[str, ...] = ()
    # Predicting changes the model (river's clusterers draw random centers for unseen
    # features): such predictions go through the log so every replica changes alike.
    predictions_change_state: bool = False

    @property
    def supervised(self) -> bool:
        return self.target_check is not None

    @property
    def predict_methods(self) -> tuple[str, ...]:
        return (self.predict_method, *self.fallback_methods)

    def check(self, model: Any) -> None:
        """Raise :class:`InvalidModel` saying what the model lacks for this flavor."""
        step = last_step(model)
        name = type(step).__name__
        for method in ("learn_one", *self.required_methods):
            if not _has(model, method):
                raise InvalidModel(f"A {self.name} model needs {method}, and {name} does not have it.")
        if not any(_has(model, method) for method in self.predict_methods):
            raise InvalidModel(f"A {self.name} model needs {self.predict_method}, and {name} does not have it.")
        if self.name in ("binary", "multiclass") and not isinstance(step, base.Classifier):
            # A river regressor's predict_one would pass for the fallback.
            for kind, words, flavor in _NOT_CLASSIFIERS:
                if isinstance(step, kind):
                    raise InvalidModel(f"{name} is {words}: upload it with the {flavor} flavor.")
        if self.name == "multiclass" and getattr(step, "_multiclass", True) is False:
            raise InvalidModel(
                f"{name} is a binary classifier: upload it with the binary flavor, "
                "or wrap it in river.multiclass.OneVsRestClassifier for several classes."
            )
        if self.name == "regression" and isinstance(step, base.MultiTargetRegressor):
            raise InvalidModel(f"{name} predicts several targets and a regression model learns one number: "
                               "upload it with the custom flavor (its ground_truth an object of targets).")
        # Else every learn (which scores a prediction first) or predict would fail.
        if not any(implements(model, method) for method in self.predict_methods):
            raise InvalidModel(
                f"{name} does not implement {' or '.join(self.predict_methods)} (it raises NotImplementedError), "
                "so it cannot predict."
            )

    def make_metrics(self, model: Any = None) -> list[metrics.base.Metric]:
        """Fresh metrics; those that score probabilities are left out for a model that has none.

        Called once, at upload: the list lives in the model's snapshot, so every
        replica keeps the same metrics.
        """
        made = [factory() for factory in self.metric_factories]
        if model is not None and self.fallback_methods and not implements(model, self.predict_method):
            made = [metric for metric in made if getattr(metric, "requires_labels", True)]
        return made

    def validate_target(self, target: Any, field: str = "ground_truth") -> None:
        if self.target_check is None:
            return
        if target is None:
            raise InvalidInput(f"A {self.name} model learns from a {field} ({self.target_words}); none was given.")
        if not self.target_check(target):
            raise InvalidInput(f"{field} for a {self.name} model must be {self.target_words}, not {_shown(target)}.")

    @property
    def one_kind_of_label(self) -> bool:
        """Classifiers: a model that learned ``true`` and then ``"x"`` fails on every later call
        (river sorts its classes), so the first label fixes the kind of every later one."""
        return self.target_check is _is_label

    def bind(self, model: Any, metric_list: list = (), labels: str | None = None) -> "BoundModel":
        """The model with this flavor's methods looked up once (a batch calls them per example).

        ``labels``: the kind of label the model has learned so far (see :func:`label_kind`).
        """
        return BoundModel(self, model, metric_list, labels)

    def predict(self, model: Any, features: dict) -> Any:
        """The first of :attr:`predict_methods` the model implements (the same on every replica)."""
        return self.bind(model).predict(features)

    def learn(self, model: Any, features: dict, target: Any) -> None:
        self.bind(model).learn(features, target)

    def update_metrics(self, metric_list: list, target: Any, prediction: Any) -> None:
        """Score a prediction made before learning; skipped when there is nothing to score."""
        self.bind(None, metric_list).score(target, prediction)


class BoundModel:
    """One model's predict, learn and scoring, resolved for its flavor once.

    Which method predicts and whether ``learn_one`` takes the target depend only on
    the model's structure, so every replica resolves them alike; looking them up once
    per log entry instead of once per example is most of what a batch saves.
    """

    def __init__(self, flavor: Flavor, model: Any, metric_list: list = (), labels: str | None = None):
        self.flavor = flavor
        self.model = model
        self.labels = labels
        if model is not None:
            self._predictors = [getattr(model, m) for m in flavor.predict_methods
                                if _has(model, m) and not _declared_only(model, m)]
            self._learn_one = model.learn_one
            self._supervised = _is_supervised(model)
        self._scorers = [(metric.update, bool(getattr(metric, "requires_labels", False))) for metric in metric_list]

    @property
    def scores(self) -> bool:
        """Whether there are metrics to score predictions with."""
        return bool(self._scorers)

    def check_label(self, target: Any) -> None:
        """A classifier's label must be of the kind it has learned; the first one sets :attr:`labels`."""
        if target is None or not self.flavor.one_kind_of_label:
            return
        kind = label_kind(target)
        if self.labels is None:
            self.labels = kind
        elif kind != self.labels:
            raise InvalidInput(f"The label is a {kind}, but this model has learned {self.labels} labels "
                               "(a classifier's labels are all of one kind).")

    def predict(self, features: dict) -> Any:
        predictors = self._predictors
        for position, predictor in enumerate(predictors, 1):
            try:
                return predictor(features)
            except NotImplementedError:  # a wrapper around a model without it: try the next
                if position == len(predictors):
                    raise
        raise InvalidModel(f"The model has no {self.flavor.predict_method}.")

    def learn(self, features: dict, target: Any) -> None:
        if target is not None and self._supervised:
            self._learn_one(features, target)
        else:
            self._learn_one(features)

    def score(self, target: Any, prediction: Any) -> None:
        """Score a prediction made before learning; skipped when there is nothing to score."""
        if target is None or prediction is None or prediction == {}:
            return
        for update, requires_labels in self._scorers:
            try:
                update(target, _most_likely(prediction) if requires_labels else prediction)
            except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, ArithmeticError):
                # A metric that cannot score this pair skips it (every replica alike).
                continue


FLAVORS: dict[str, Flavor] = {
    flavor.name: flavor
    for flavor in (
        Flavor(
            name="regression",
            description="predict_one gives a number; learns from a numeric ground_truth",
            predict_method="predict_one",
            required_methods=("predict_one",),
            target_check=_is_number,
            target_words="a finite number",
            metric_factories=(metrics.MAE, metrics.RMSE, metrics.SMAPE),
        ),
        Flavor(
            name="binary",
            description="predict_proba_one gives {label: probability} (predict_one the label for a model "
                        "without probabilities); learns from a label",
            predict_method="predict_proba_one",
            fallback_methods=("predict_one",),
            required_methods=("predict_proba_one",),
            target_check=_is_label,
            target_words="a label (boolean, string or number)",
            metric_factories=(metrics.Accuracy, metrics.LogLoss, metrics.Precision, metrics.Recall, metrics.F1),
        ),
        Flavor(
            name="multiclass",
            description="predict_proba_one (or predict_one) gives the class; learns from a label",
            predict_method="predict_proba_one",
            fallback_methods=("predict_one",),
            required_methods=(),
            target_check=_is_label,
            target_words="a label (string, number or boolean)",
            metric_factories=(
                metrics.Accuracy,
                metrics.CrossEntropy,
                metrics.MacroPrecision,
                metrics.MacroRecall,
                metrics.MacroF1,
                metrics.MicroPrecision,
                metrics.MicroRecall,
                metrics.MicroF1,
            ),
        ),
        Flavor(
            name="cluster",
            description="predict_one gives a cluster id; learns from features only",
            predict_method="predict_one",
            required_methods=("predict_one",),
            predictions_change_state=True,
        ),
        Flavor(
            name="anomaly",
            description="score_one gives an anomaly score; learns from features only",
            predict_method="score_one",
            required_methods=("score_one",),
        ),
        Flavor(
            name="custom",
            description="the model's own predict_one; learns with ground_truth when one is given",
            predict_method="predict_one",
            required_methods=("predict_one",),
        ),
    )
}


def get_flavor(name: str) -> Flavor:
    try:
        return FLAVORS[name]
    except (KeyError, TypeError):
        raise UnknownFlavor(f"Unknown flavor {name!r}; choose one of {', '.join(FLAVORS)}.") from None
