"""Drive a live server with the published ``riverapi`` 0.0.21 client and print one JSON report.

Run by tests/test_published_client.py in a subprocess whose PYTHONPATH puts the published
client (installed apart, under the same import name as our own ``riverapi``) first, then
``tests/`` (for ``flavored_models``) and ``example_project/`` (for the custom model class):

    python tests/published_client_driver.py http://127.0.0.1:8000 --learn 12

The client calls ``sys.exit`` on any status but 200/201, so a run that gets through every
call has had only successful answers; the refusals it must meet are caught as SystemExit
and reported. Next to what the server answered, the report carries a local reference: the
uploaded model trained here on the same examples, scored the way the API documents
(the prediction made before learning is scored against the ground truth, then learned).
Progress goes to stderr, the report alone to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import sys
import tempfile
from typing import Any, Callable

import dill
import requests
from river import metrics as river_metrics

from flavored_models import EXPECTED_METRICS, FLAVORS, examples, make_model

# What the server calls to predict, per flavor (RIVER-API.md "Flavors and their metrics").
PREDICT_METHOD = {
    "regression": "predict_one",
    "binary": "predict_proba_one",
    "multiclass": "predict_proba_one",
    "cluster": "predict_one",
    "anomaly": "score_one",
    "custom": "predict_one",
}
# Flavors whose examples carry a ground truth, and so are learned with one and labelled.
WITH_TARGET = ("regression", "binary", "multiclass", "custom")
# Held-out examples (after the learned ones) the downloaded model is compared on.
N_COMPARE = 3


def step(message: str) -> None:
    print(f"[driver] {message}", file=sys.stderr, flush=True)


def as_json(value: Any) -> Any:
    """The value as it looks after a trip through JSON (bool dict keys become "true"/"false")."""
    return json.loads(json.dumps(value))


def exit_code(call: Callable[[], Any]) -> int | None:
    """The code the client exited with, or None when the call succeeded."""
    try:
        call()
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else 1
    return None


def most_likely(prediction: Any) -> Any:
    if isinstance(prediction, dict):
        return max(prediction, key=prediction.get) if prediction else None
    return prediction


class Reference:
    """The model trained locally exactly as the server is asked to train it."""

    def __init__(self, flavor: str, model: Any):
        self.flavor = flavor
        self.model = dill.loads(dill.dumps(model))  # the bytes the server received
        self.metrics = [getattr(river_metrics, name)() for name in sorted(EXPECTED_METRICS[flavor])]

    def predict(self, x: dict) -> Any:
        return getattr(self.model, PREDICT_METHOD[self.flavor])(dict(x))

    def learn(self, x: dict, y: Any, prediction: Any = None) -> Any:
        """Score (the given or a fresh) prediction, then learn; returns the scored prediction."""
        if y is not None and self.metrics:
            if prediction is None:
                prediction = self.predict(x)
            # As river's progressive validation does: nothing predicted yet is nothing to score
            # (an untrained OneVsRestClassifier gives {}).
            for metric in self.metrics if prediction not in (None, {}) else ():
                scored = most_likely(prediction) if getattr(metric, "requires_labels", False) else prediction
                metric.update(y, scored)
        if y is not None:
            self.model.learn_one(dict(x), y)
        else:
            self.model.learn_one(dict(x))
        return prediction

    def metric_values(self) -> dict:
        return {type(metric).__name__: metric.get() for metric in self.metrics}


def model_for(flavor: str) -> Any:
    """The flavor's model from flavored_models; HalfSpaceTrees with a short window, so that the
    few examples learned here complete windows and its scores are not all 0."""
    if flavor == "anomaly":
        from river import anomaly, preprocessing

        return preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=1, window_size=5)
    return make_model(flavor)


def upload(client: Client, flavor: str, model: Any, name: str | None = None) -> str:
    """The client's upload_model; the anomaly flavor (unknown to check_flavor) by its low-level post."""
    if flavor == "anomaly":
        url = f"/model/{flavor}/{name}/" if name else f"/model/{flavor}/"
        return client.post(url, data=dill.dumps(model))["name"]
    return client.upload_model(model, flavor, model_name=name)


def drive_flavor(client: Client, flavor: str, n_learn: int, download_dir: str) -> dict:
    data = examples(flavor, n_learn + 1 + N_COMPARE)
    learn_data, (x_held, y_held), compare_data = data[:n_learn], data[n_learn], data[n_learn + 1:]
    report: dict[str, Any] = {"n_learn": n_learn, "labelled": flavor in WITH_TARGET}

    step(f"{flavor}: upload without and with a name")
    generated = upload(client, flavor, model_for(flavor))
    chosen_model = model_for(flavor)
    chosen = upload(client, flavor, chosen_model, name=f"published-{flavor}")
    report["generated_name"], report["chosen_name"] = generated, chosen
    report["models_after_upload"] = client.models()

    step(f"{flavor}: learn {n_learn} examples on {chosen}")
    reference = Reference(flavor, chosen_model)
    report["learn_answers"], report["reference_learn_predictions"] = [], []
    for x, y in learn_data:
        report["learn_answers"].append(client.learn(chosen, x, y))
        report["reference_learn_predictions"].append(as_json(reference.learn(x, y)))

    step(f"{flavor}: one learn on {generated}")
    report["generated_learn_answer"] = client.learn(generated, *learn_data[0])

    step(f"{flavor}: predict")
    predicted = client.predict(chosen, x_held)
    report["predict_answer"] = predicted
    reference_prediction = reference.predict(x_held)
    report["reference_prediction"] = as_json(reference_prediction)

    if flavor in WITH_TARGET:
        step(f"{flavor}: label {predicted['identifier']}")
        report["label_answer"] = client.label(y_held, predicted["identifier"], chosen)
        reference.learn(x_held, y_held, prediction=reference_prediction)
        # The identifier is consumed: labelling it again is refused.
        report["relabel_exit_code"] = exit_code(lambda: client.label(y_held, predicted["identifier"], chosen))

    step(f"{flavor}: metrics, stats, model json")
    report["metrics"] = client.metrics(chosen)
    report["reference_metrics"] = as_json(reference.metric_values())
    report["stats"] = client.stats(chosen)
    report["generated_stats"] = client.stats(generated)
    report["model_json"] = client.get_model_json(chosen)

    step(f"{flavor}: download and compare predictions")
    dest = os.path.join(download_dir, f"{chosen}.pkl")
    report["download_dest_returned"] = client.download_model(chosen, dest=dest) == dest
    with open(dest, "rb") as fd:
        downloaded = pickle.load(fd)  # noqa: S301 - the model we just uploaded and trained
    report["downloaded_type"] = type(downloaded).__name__
    report["comparisons"] = [
        {
            "server": client.predict(chosen, x)["prediction"],
            "downloaded": as_json(getattr(downloaded, PREDICT_METHOD[flavor])(dict(x))),
            "reference": as_json(reference.predict(x)),
        }
        for x, _ in [(x_held, y_held), *compare_data]
    ]

    step(f"{flavor}: delete {generated}")
    report["delete_answer"] = client.delete_model(generated)
    report["models_after_delete"] = client.models()
    report["deleted_metrics_exit_code"] = exit_code(lambda: client.metrics(generated))
    report["deleted_stats_exit_code"] = exit_code(lambda: client.stats(generated))
    report["deleted_download_exit_code"] = exit_code(
        lambda: client.download_model(generated, dest=os.path.join(download_dir, "deleted.pkl")))
    report["deleted_predict_exit_code"] = exit_code(lambda: client.predict(generated, x_held))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--learn", type=int, default=12, help="examples learned per flavor")
    parser.add_argument("--download-dir", help="where downloaded models go (default: a temporary directory)")
    args = parser.parse_args()

    # Imported here, not at the top: pytest's doctest collection imports this module too, where
    # ``riverapi`` is missing or is our own distribution rather than the published one.
    import riverapi
    import riverapi.version
    from riverapi.main import Client

    report_out = sys.stdout
    result: dict[str, Any] = {
        "riverapi_file": riverapi.__file__,
        "riverapi_version": riverapi.version.__version__,
    }
    with contextlib.redirect_stdout(sys.stderr), contextlib.ExitStack() as stack:
        download_dir = args.download_dir or stack.enter_context(tempfile.TemporaryDirectory())
        client = Client(args.url, quiet=True)

        step("info and check")
        result["info"] = client.info()
        client.check()  # prints what it updates; stdout is stderr here
        result["after_check"] = {"baseurl": client.baseurl, "prefix": client.prefix, "apiroot": client.apiroot}
        result["models_at_start"] = client.models()

        step("an upload that does not fit its flavor is refused")
        from river import linear_model

        result["wrong_flavor_exit_code"] = exit_code(
            lambda: client.upload_model(linear_model.LinearRegression(), "binary", model_name="wrong-flavor"))
        result["unknown_flavor_exit_code"] = exit_code(
            lambda: client.post("/model/no-such-flavor/", data=dill.dumps(linear_model.LinearRegression())))
        result["models_after_refusals"] = client.models()

        result["flavors"] = {flavor: drive_flavor(client, flavor, args.learn, download_dir) for flavor in FLAVORS}

        step("delete every remaining model")
        result["models_before_cleanup"] = client.models()
        for report in result["flavors"].values():
            client.delete_model(report["chosen_name"])
        result["models_at_end"] = client.models()
        # The same quirky requests the client makes, to see the status a refusal carries.
        gone = result["flavors"]["regression"]["chosen_name"]
        result["deleted_metrics_status"] = requests.get(
            client.apiroot + "/metrics/", json={"model": gone}, timeout=10).status_code
        result["deleted_delete_status"] = requests.delete(
            client.apiroot + "/model/", data={"model": gone}, timeout=10).status_code

    json.dump(result, report_out)
    report_out.write("\n")


if __name__ == "__main__":
    main()
