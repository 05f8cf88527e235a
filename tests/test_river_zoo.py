"""Every river model that can be built without arguments serves in its flavor.

The models are found by walking river's modules, so a river release that adds
or changes one is tested without editing this file. Each goes through upload
(pickled bytes, as clients send them), learn, predict and metrics on both
storage backends, with a few dozen examples. Wrappers are built around a
LogisticRegression (binary), a GaussianNB (multiclass, when the wrapper around a
LogisticRegression is not multiclass) or a LinearRegression (regression); a
class that needs any other argument is skipped, saying which.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import pkgutil

import dill
import pytest
import river
from river import base, datasets, ensemble, linear_model, multiclass, naive_bayes, preprocessing

from django_river_ml.allowlist import module_allowed
from django_river_ml.exceptions import InvalidModel, ModelFailed
from django_river_ml.flavors import get_flavor, implements
from flavored_models import EXPECTED_METRICS

N_ROWS = 30
PROBABILITY_METRICS = {"LogLoss", "CrossEntropy"}
# A required parameter takes a model when its annotation or its name says so.
MODEL_PARAMETER_WORDS = ("Classifier", "Regressor", "Estimator")
MODEL_PARAMETER_NAMES = ("classifier", "regressor", "model", "models")
# Classes whose defaults need more than any flavor passes: the reason, instead of a test.
UNSERVABLE_DEFAULTS = {
    "TextClust": "TextClust with its default real_time_fading=True learns with a timestamp t, which no flavor passes",
}


def river_estimators() -> list[type]:
    """Public, concrete river estimators, each once, in a stable order."""
    found: dict[type, str] = {}
    for info in pkgutil.walk_packages(river.__path__, "river."):
        parts = info.name.split(".")
        if any(part.startswith("_") or part in ("test", "tests", "conftest") for part in parts[1:]) \
                or not module_allowed(info.name):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency river does not require (gymnasium)
            continue
        for class_name in getattr(module, "__all__", ()):
            cls = getattr(module, class_name, None)
            if inspect.isclass(cls) and issubclass(cls, base.Estimator) and not inspect.isabstract(cls):
                found.setdefault(cls, info.name)
    return sorted(found, key=lambda cls: f"{found[cls]}.{cls.__name__}")


def kinds(cls: type) -> list[str]:
    """The flavors a class of this kind is uploaded with (multiclass is decided on the built model)."""
    if cls.__module__.startswith("river.active."):
        return []  # an active learner predicts (prediction, whether to ask for the label): no flavor's shape
    if issubclass(cls, base.Classifier):
        return ["binary", "multiclass"]
    if issubclass(cls, base.Regressor):
        return ["regression"]
    if issubclass(cls, base.Clusterer):
        return ["cluster"]
    if issubclass(cls, (base.AnomalyDetector, base.SupervisedAnomalyDetector)):
        return ["anomaly"]
    return []  # transformers, multi-output models, recommenders, forecasters: no flavor serves them


INNER = {"binary": linear_model.LogisticRegression, "multiclass": linear_model.LogisticRegression,
         "regression": linear_model.LinearRegression}


def build(cls: type, flavor: str, inner: type | None = None):
    """An instance with default arguments, model arguments filled with ``inner``; else the reason it cannot be."""
    missing = [p for p in inspect.signature(cls).parameters.values()
               if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    arguments = {}
    for parameter in missing:
        annotation = "" if parameter.annotation is inspect.Parameter.empty else str(parameter.annotation)
        takes_model = any(word in annotation for word in MODEL_PARAMETER_WORDS) or \
            parameter.name in MODEL_PARAMETER_NAMES
        if inner is None or not takes_model:
            return None, f"needs arguments ({', '.join(p.name for p in missing)})"
        several = annotation.startswith("list") or parameter.name == "models"
        arguments[parameter.name] = [inner(), inner()] if several else inner()
    try:
        return cls(**arguments), None
    except Exception as error:  # noqa: BLE001 - e.g. a model that needs a newer Python
        return None, f"cannot be built here ({type(error).__name__}: {error})"


def cases():
    for cls in river_estimators():
        for flavor in kinds(cls):
            model, reason = build(cls, flavor, INNER.get(flavor))
            if flavor == "multiclass" and model is not None and not model._multiclass:
                model, reason = build(cls, flavor, naive_bayes.GaussianNB)  # the wrapper follows its model
                if model is not None and not model._multiclass:
                    continue  # a binary classifier: the binary case covers it
            case_id = f"{flavor}-{cls.__module__.split('.')[1]}.{cls.__name__}"
            if cls.__name__ in UNSERVABLE_DEFAULTS:
                model, reason = None, UNSERVABLE_DEFAULTS[cls.__name__]
            if model is None:
                reason = reason if reason.startswith(cls.__name__) else f"{cls.__name__} {reason}"
                yield pytest.param(None, flavor, id=case_id, marks=pytest.mark.skip(reason=reason))
            else:
                yield pytest.param(model, flavor, id=case_id)


def rows(flavor: str, supervised: bool) -> list[tuple[dict, object]]:
    if flavor == "binary":
        data = datasets.Phishing()
    elif flavor == "multiclass":  # non-negative, as the count-based naive Bayes models need
        data = ((x, y) for x, y in datasets.ImageSegments() if all(v >= 0 for v in x.values()))
    elif flavor == "regression" or supervised:  # a supervised anomaly detector scores a number
        data = datasets.TrumpApproval()
    else:
        data = ((x, None) for x, _ in datasets.Phishing())
    return [(dict(x), y) for x, y in itertools.islice(data, N_ROWS)]


def check_prediction(flavor: str, prediction, labels: set) -> None:
    if prediction is None:  # a model with nothing to say yet (e.g. no cluster formed)
        return
    if flavor in ("binary", "multiclass"):
        if isinstance(prediction, dict):
            assert set(prediction) <= labels and all(isinstance(p, (int, float)) for p in prediction.values())
        else:
            assert prediction in labels
    else:
        assert isinstance(prediction, (int, float)) and not isinstance(prediction, bool)


def refusal(model, flavor: str) -> str | None:
    """What the upload of a model its flavor cannot serve says (None: it is served)."""
    if flavor == "regression" and isinstance(model, base.MultiTargetRegressor):
        return "several targets"
    if not any(implements(model, method) for method in get_flavor(flavor).predict_methods):
        return "cannot predict"  # river.cluster.ODAC builds a hierarchy and predicts nothing
    return None


def upload(river_client, model, flavor: str) -> str:
    return river_client.upload_model(dill.dumps(model), flavor, model_name=f"zoo-{flavor}")


@pytest.mark.parametrize(("model", "flavor"), list(cases()))
def test_river_model_serves_in_its_flavor(river_client, model, flavor):
    refused = refusal(model, flavor)
    if refused:  # a 400 at upload that says why, rather than a model that fails every call
        with pytest.raises(InvalidModel, match=refused):
            upload(river_client, model, flavor)
        assert river_client.models() == []
        return
    supervised = bool(getattr(model, "_supervised", True))
    data = rows(flavor, supervised)
    name = upload(river_client, model, flavor)
    for x, y in data:
        river_client.learn(name, x, ground_truth=y)

    x = data[-1][0]
    if flavor == "anomaly" and supervised:
        # It scores a ground truth, which a prediction does not carry: a 400 that says so, never a 500.
        with pytest.raises(ModelFailed, match="score_one"):
            river_client.predict(name, x)
    else:
        check_prediction(flavor, river_client.predict(name, x)["prediction"], {y for _, y in data})

    expected = set(EXPECTED_METRICS[flavor])
    if flavor in ("binary", "multiclass") and not implements(model, "predict_proba_one"):
        expected -= PROBABILITY_METRICS
    scores = river_client.metrics(name)
    assert set(scores) == expected
    assert river_client.stats(name)["learn"]["n_calls"] == N_ROWS


# The models of the report, by hand -------------------------------------------------------------

MULTICLASS_LABEL_METRICS = {"Accuracy", "MacroPrecision", "MacroRecall", "MacroF1", "MicroPrecision", "MicroRecall",
                            "MicroF1"}


@pytest.mark.parametrize(("flavor", "expected"), [
    ("multiclass", MULTICLASS_LABEL_METRICS),
    ("binary", {"Accuracy", "Precision", "Recall", "F1"}),
])
def test_classifier_without_probabilities_learns_and_predicts_its_label(api, flavor, expected):
    """StandardScaler | OneVsOneClassifier(LogisticRegression()): river declares predict_proba_one but
    OneVsOne does not implement it. It predicts with predict_one, without the probability metrics."""
    model = preprocessing.StandardScaler() | multiclass.OneVsOneClassifier(linear_model.LogisticRegression())
    response = api.post(f"/api/model/{flavor}/ovo/", data=dill.dumps(model), content_type="application/octet-stream")
    assert response.status_code == 201, response.content
    data = rows(flavor, supervised=True)
    for x, y in data:
        response = api.post("/api/learn/", {"model": "ovo", "features": x, "ground_truth": y}, format="json")
        assert response.status_code == 201, response.content
    labels = {y for _, y in data}
    assert response.json()["prediction"] in labels
    assert api.post("/api/predict/", {"model": "ovo", "features": data[0][0]}, format="json").json()["prediction"] \
        in labels
    scores = api.get("/api/metrics/", {"model": "ovo"}).json()
    assert set(scores) == expected and scores["Accuracy"] > 0


def test_classifier_that_cannot_predict_at_all_is_refused_at_upload(api):
    model = ensemble.BaggingClassifier(multiclass.OneVsOneClassifier(linear_model.LogisticRegression()))
    response = api.post("/api/model/multiclass/bag/", data=dill.dumps(model), content_type="application/octet-stream")
    assert response.status_code == 400
    assert response.json()["message"] == (
        "BaggingClassifier does not implement predict_proba_one or predict_one (it raises NotImplementedError), "
        "so it cannot predict.")
    assert api.get("/api/models/").json()["models"] == []
