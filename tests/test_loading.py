"""The restricted unpickler: real river models load, anything else is refused before it runs."""

from __future__ import annotations

import io
import os
import pickle
import pickletools

import dill
import pytest
from river import (anomaly, cluster, datasets, ensemble, facto, feature_extraction, forest, linear_model, multiclass,
                   naive_bayes, neighbors, preprocessing, tree)

from django_river_ml.exceptions import InvalidModel
from django_river_ml.loading import UnsafeModel, load_model


def trained(model, kind):
    for x, y in datasets.Phishing().take(40):
        if kind == "unsupervised":
            model.learn_one(x)
        elif kind == "text":
            model.learn_one({"text": "hello world" if y else "goodbye moon"}, y)
        elif kind == "regression":
            model.learn_one(x, float(y))
        else:
            model.learn_one(x, y)
    return model


REAL_MODELS = {
    "linear-regression": (lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression"),
    "logistic-regression": (lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(), "binary"),
    "gaussian-nb": (naive_bayes.GaussianNB, "binary"),
    "one-vs-one": (lambda: multiclass.OneVsOneClassifier(linear_model.LogisticRegression()), "binary"),
    "kmeans": (lambda: cluster.KMeans(seed=1), "unsupervised"),
    "half-space-trees": (lambda: preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=1), "unsupervised"),
    "hoeffding-tree": (tree.HoeffdingTreeClassifier, "binary"),
    "hoeffding-tree-regressor": (tree.HoeffdingTreeRegressor, "regression"),
    "adaptive-random-forest": (lambda: forest.ARFClassifier(seed=1, n_models=3), "binary"),
    "bagging": (lambda: ensemble.BaggingClassifier(linear_model.LogisticRegression(), seed=1), "binary"),
    "tfidf-naive-bayes": (lambda: feature_extraction.TFIDF(on="text") | naive_bayes.MultinomialNB(), "text"),
    "knn": (neighbors.KNNClassifier, "binary"),
    # Private bound methods, numpy random state, statistics.NormalDist, dill's numpy arrays:
    "passive-aggressive": (linear_model.PARegressor, "regression"),
    "output-code": (lambda: multiclass.OutputCodeClassifier(linear_model.LogisticRegression(), code_size=4,
                                                            seed=1), "binary"),
    "factorization-machine": (lambda: facto.FMRegressor(seed=1), "regression"),
    "adaptive-tree-regressor": (lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=1), "regression"),
    "bayesian-linear-regression": (linear_model.BayesianLinearRegression, "regression"),
}


@pytest.mark.parametrize("dumps", [dill.dumps, pickle.dumps], ids=["dill", "pickle"])
@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_real_river_models_load(name, dumps):
    factory, kind = REAL_MODELS[name]
    model = trained(factory(), kind)
    loaded = load_model(dumps(model))
    assert type(loaded) is type(model)
    x = {"text": "hello world"} if kind == "text" else next(iter(datasets.Phishing()))[0]
    method = "score_one" if name == "half-space-trees" else "predict_one"
    assert getattr(loaded, method)(x) == getattr(model, method)(x)


class CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShell:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class ImportsModule:
    def __reduce__(self):
        return (__import__, ("subprocess",))


@pytest.mark.parametrize(("payload", "refused"), [
    (lambda tmp: CreatesFile(str(tmp / "created")), "io.open"),
    (lambda tmp: RunsShell(), "posix.system"),
    (lambda tmp: ImportsModule(), "builtins.__import__"),
])
@pytest.mark.parametrize("dumps", [dill.dumps, pickle.dumps], ids=["dill", "pickle"])
def test_code_running_pickles_are_refused_without_side_effects(tmp_path, payload, refused, dumps):
    with pytest.raises(UnsafeModel, match=refused.replace(".", r"\.")):
        load_model(dumps(payload(tmp_path)))
    assert not (tmp_path / "created").exists()


def raw_pickle(*ops: bytes) -> bytes:
    """A protocol-2 pickle made of raw opcodes (what an attacker writes by hand)."""
    data = b"\x80\x02" + b"".join(ops) + b"."
    pickletools.dis(io.BytesIO(data), out=io.StringIO())  # well formed
    return data


def test_module_reexported_by_river_is_refused():
    # river.datasets.base imports os; reaching it through river's namespace must not work.
    import river.datasets.base as base

    assert base.os is os
    with pytest.raises(UnsafeModel, match="river.datasets.base.os"):
        load_model(raw_pickle(b"criver.datasets.base\nos\n"))


def test_gated_getattr_refuses_private_attributes():
    # getattr(river.linear_model.LinearRegression, "__init__") would lead on to __globals__.
    payload = raw_pickle(b"cbuiltins\ngetattr\n", b"criver.linear_model\nLinearRegression\n",
                         b"X\x08\x00\x00\x00__init__", b"\x86", b"R")
    with pytest.raises(UnsafeModel, match="__init__"):
        load_model(payload)


def test_dill_load_type_refuses_code_types():
    payload = raw_pickle(b"cdill._dill\n_load_type\n", b"X\x08\x00\x00\x00CodeType", b"\x85", b"R")
    with pytest.raises(UnsafeModel, match="CodeType"):
        load_model(payload)


def test_lambda_in_a_pipeline_is_refused_with_advice():
    model = preprocessing.StandardScaler() | (lambda x: x) | linear_model.LinearRegression()
    with pytest.raises(UnsafeModel, match="lambdas"):
        load_model(dill.dumps(model))


def test_allowed_modules_setting_admits_a_site_class(settings):
    from example_project.custom_models import RunningMean

    data = dill.dumps(RunningMean())
    settings.DJANGO_RIVER_ML = {"ALLOWED_MODEL_MODULES": []}
    with pytest.raises(UnsafeModel, match="example_project.custom_models.RunningMean"):
        load_model(data)
    settings.DJANGO_RIVER_ML = {"ALLOWED_MODEL_MODULES": ["example_project.custom_models"]}
    assert type(load_model(data)) is RunningMean


@pytest.mark.parametrize("data", [b"", b"not a pickle at all", pickle.dumps(linear_model.LinearRegression())[:40],
                                  b"\x80\x05" + b"(" * 100_000])
def test_junk_is_invalid_not_a_crash(data):
    with pytest.raises(InvalidModel):
        load_model(data)
