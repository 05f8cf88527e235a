"""One river model and a few examples per flavor, shared by the API and HTTP tests."""

from __future__ import annotations

import itertools

from river import anomaly, cluster, datasets, linear_model, multiclass, preprocessing, tree

from example_project.custom_models import RunningMean


def make_model(flavor: str):
    return {
        "regression": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "binary": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        "multiclass": lambda: preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression()),
        "cluster": lambda: preprocessing.StandardScaler() | cluster.KMeans(n_clusters=3, seed=1),
        "anomaly": lambda: preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=1),
        "custom": RunningMean,
        "tree": lambda: tree.HoeffdingTreeClassifier(),
    }[flavor]()


def examples(flavor: str, n: int = 30) -> list[tuple[dict, object]]:
    """n (features, ground_truth) pairs that fit the flavor (ground truth None when unsupervised)."""
    if flavor in ("regression", "custom"):
        data = datasets.TrumpApproval()
    elif flavor == "binary":
        data = datasets.Phishing()
    elif flavor == "multiclass":
        data = datasets.ImageSegments()
    else:
        data = ((x, None) for x, _ in datasets.Phishing())
    return [(dict(x), y) for x, y in itertools.islice(data, n)]


FLAVORS = ("regression", "binary", "multiclass", "cluster", "anomaly", "custom")

EXPECTED_METRICS = {
    "regression": {"MAE", "RMSE", "SMAPE"},
    "binary": {"Accuracy", "LogLoss", "Precision", "Recall", "F1"},
    "multiclass": {"Accuracy", "CrossEntropy", "MacroPrecision", "MacroRecall", "MacroF1", "MicroPrecision",
                   "MicroRecall", "MicroF1"},
    "cluster": set(),
    "anomaly": set(),
    "custom": set(),
}

# The keys of GET /api/model/<name>/ for make_model(flavor): one per step, in order.
MODEL_JSON_STEPS = {
    "regression": ["StandardScaler", "LinearRegression"],
    "binary": ["StandardScaler", "LogisticRegression"],
    "multiclass": ["StandardScaler", "OneVsRestClassifier"],
    "cluster": ["StandardScaler", "KMeans"],
    "anomaly": ["MinMaxScaler", "HalfSpaceTrees"],
    "custom": ["RunningMean"],
}
