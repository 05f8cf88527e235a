"""What a model's state carries besides the model: its challengers and its drift detector.

Both change only as log entries are applied (:mod:`django_river_ml.state`), alike in every
replica, and both are kept in snapshots:

- A **challenger** learns every example its champion learns, after the champion, and is scored
  progressively on the same stream (its prediction before it learns). It never serves predictions.
  One that raises (or panics, in compiled code) is stopped (``error``) and its champion goes on: a
  challenger's failure is its own. Challengers count in their champion's size (MAX_MODEL_BYTES).
- The **drift detector** (river.drift) is fed each supervised learn's error: the absolute error of
  a number, else 1 for a wrong label and 0 for a right one. Only drifts for the worse count (errors
  that rise; ADWIN also sees them fall as a young model learns). A detection counts in
  :attr:`DriftWatch.detections`; the worker that appended the entry reports it (a ``drift`` event,
  the :data:`~django_river_ml.events.drift_detected` signal, the model's stats). The model's policy
  then acts at the end of the entry: ``reset`` learns on from a fresh copy of the model
  (``clone()``), ``promote`` lets its best challenger serve.

>>> watch = DriftWatch.new("regression", "PageHinkley", "none")
>>> [watch.update(error) for error in [0.0] * 40 + [100.0] * 3].count(True)
1
>>> watch.detections
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django_river_ml.exceptions import InvalidInput
from django_river_ml.timelimit import CallOverMemory, CallTimeout

#: Detectors a model may use, by name: river.drift's, made with fixed seeds (every replica alike).
DETECTORS = {
    "ADWIN": ("river.drift", "ADWIN", {}),
    "PageHinkley": ("river.drift", "PageHinkley", {"mode": "up"}),  # errors rising only
    "KSWIN": ("river.drift", "KSWIN", {"seed": 0}),
    "DDM": ("river.drift.binary", "DDM", {}),
    "EDDM": ("river.drift.binary", "EDDM", {}),
    "FHDDM": ("river.drift.binary", "FHDDM", {}),
    "HDDMA": ("river.drift.binary", "HDDMA", {}),
    "HDDMW": ("river.drift.binary", "HDDMW", {}),
}
#: Detectors of right-or-wrong (0/1) errors: for classifiers only.
BINARY_DETECTORS = frozenset({"DDM", "EDDM", "FHDDM", "HDDMA", "HDDMW"})
#: Flavors whose errors are numbers; classifiers' are 0/1. Other flavors learn without a target to err on.
NUMERIC_FLAVORS = frozenset({"regression"})
LABEL_FLAVORS = frozenset({"binary", "multiclass"})
POLICIES = ("none", "reset", "promote")


def drift_problems(detector: Any, policy: Any) -> list[str]:
    """Why DRIFT_DETECTOR or DRIFT_POLICY cannot work (the settings' system check)."""
    found = []
    if detector is not None and detector not in DETECTORS:
        found.append(f"DRIFT_DETECTOR must be one of {', '.join(DETECTORS)} or None, not {detector!r}")
    if policy not in POLICIES:
        found.append(f"DRIFT_POLICY must be one of {', '.join(POLICIES)}, not {policy!r}")
    return found


def make_detector(name: str) -> Any:
    import importlib

    module, cls, options = DETECTORS[name]
    return getattr(importlib.import_module(module), cls)(**options)


@dataclass
class DriftWatch:
    """A model's drift detector, what it found, and what a detection does."""

    detector_name: str | None
    policy: str
    numeric: bool
    detector: Any = None
    detections: int = 0
    last_at: int | None = None  # the log sequence of the last detection

    @classmethod
    def new(cls, flavor: str, detector: str | None, policy: str) -> DriftWatch:
        """A fresh watch for a model of ``flavor``; InvalidInput for a detector or policy that cannot be."""
        problems = drift_problems(detector, policy)
        if problems:
            raise InvalidInput(problems[0].replace("DRIFT_DETECTOR", "drift_detector")
                               .replace("DRIFT_POLICY", "drift_policy"))
        supervised = flavor in NUMERIC_FLAVORS or flavor in LABEL_FLAVORS
        if detector in BINARY_DETECTORS and flavor not in LABEL_FLAVORS:
            raise InvalidInput(f"The {detector} drift detector watches right-or-wrong answers: it is for "
                               "classifiers (binary, multiclass); choose ADWIN, PageHinkley or KSWIN.")
        if not supervised:
            detector = None
        return cls(detector, policy, flavor in NUMERIC_FLAVORS, make_detector(detector) if detector else None)

    def update(self, error: float) -> bool:
        """Feed one error; True when the detector finds a drift for the worse.

        A detector that tracks the errors' mean (ADWIN's ``estimation``) also finds the errors
        falling as a young model learns: such a change is no drift of the world, and is not counted.
        """
        if self.detector is None:
            return False
        before = getattr(self.detector, "estimation", None)
        self.detector.update(error)
        if not self.detector.drift_detected:
            return False
        after = getattr(self.detector, "estimation", None)
        if isinstance(before, (int, float)) and isinstance(after, (int, float)) and after <= before:
            return False
        self.detections += 1
        return True

    def restarted(self) -> DriftWatch:
        """The watch of another model serving in this one's place (a rollback, a promotion): a fresh
        detector (the errors it saw were another model's), its count of detections kept."""
        return DriftWatch(self.detector_name, self.policy, self.numeric,
                          make_detector(self.detector_name) if self.detector_name else None,
                          self.detections, self.last_at)

    def describe(self) -> dict:
        return {"detector": self.detector_name, "policy": self.policy, "detections": self.detections,
                "last_at": self.last_at}


def prediction_error(numeric: bool, target: Any, prediction: Any) -> float | None:
    """The error the detector is fed (None: nothing to compare)."""
    if target is None or prediction is None or prediction == {}:
        return None
    if isinstance(prediction, dict):  # probabilities: the most likely label
        prediction = max(prediction, key=prediction.get)
    if numeric:
        try:
            error = abs(float(target) - float(prediction))
        except (TypeError, ValueError):
            return None
        return error if math.isfinite(error) else None
    return 0.0 if prediction == target else 1.0


#: What a challenger's learn lets through: the entry's limits (timelimit.py) and the process stopping.
STOPS_THE_ENTRY = (CallTimeout, CallOverMemory, KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass
class Challenger:
    """A model learning beside its champion: its own model, metrics, labels and count of learns."""

    model: Any
    metrics: list
    learned: int = 0
    labels: str | None = None
    error: str | None = None  # why it stopped learning


@dataclass
class EntryWatch:
    """What one log entry's learns did to the lifecycle (drifts found, at which examples)."""

    drifts: list[int] = field(default_factory=list)  # example indices (0 for a single learn)


def learn_challengers(flavor, challengers: dict[str, Challenger], features: dict, target: Any) -> None:
    """Every challenger, in name order: predict (to be scored), score, learn; one that raises stops."""
    for name in sorted(challengers):
        challenger = challengers[name]
        if challenger.error is not None:
            continue
        model = flavor.bind(challenger.model, challenger.metrics, challenger.labels)
        try:
            model.check_label(target)
            prediction = model.predict(dict(features)) if model.scores and target is not None else None
            model.score(target, prediction)
            model.learn(dict(features), target)
        except STOPS_THE_ENTRY:  # the whole entry's time or memory limit, or the process stopping
            raise
        except BaseException as error:  # noqa: BLE001 - a raise or a Rust panic in its own code stops it alone
            challenger.error = f"{type(error).__name__}: {error}"[:500]
            continue
        challenger.labels = model.labels
        challenger.learned += 1


def best_challenger(challengers: dict[str, Challenger]) -> str | None:
    """The challenger whose first metric is best (ties: the first name); None if none is working."""
    best, best_score = None, None
    for name in sorted(challengers):
        challenger = challengers[name]
        if challenger.error is not None or not challenger.metrics or not challenger.learned:
            continue
        metric = challenger.metrics[0]
        value = metric.get()
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        score = value if metric.bigger_is_better else -value
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best
