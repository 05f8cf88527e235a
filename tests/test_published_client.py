"""The published riverapi 0.0.21 client, unchanged, against a live multi-worker server.

tests/published_client_driver.py makes every call in a subprocess (the published client
shares its import name with our own riverapi, so it runs from its own PYTHONPATH) and
prints one JSON report; the assertions are here. The client exits non-zero on any status
but 200/201, so a zero return code already says every call it made succeeded.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import river

from flavored_models import EXPECTED_METRICS, FLAVORS, MODEL_JSON_STEPS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
BACKENDS = ("shelve", "redis", "redis-cluster")
DRIVER = Path(__file__).resolve().parent / "published_client_driver.py"
N_LEARN = 12
SUPERVISED = ("regression", "binary", "multiclass")
LABELLED = ("regression", "binary", "multiclass", "custom")
# What the published client's users read; the server adds percentiles and rates (docs/monitoring.md).
STAT_FIELDS = {"n_calls", "mean_duration", "mean_duration_human", "ewm_duration", "ewm_duration_human"}
PIPELINE_TYPE = {flavor: "Pipeline" for flavor in FLAVORS} | {"custom": "RunningMean"}


def close(actual, expected) -> bool:
    """Equal JSON values, numbers up to float noise."""
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return actual == expected
    if isinstance(expected, (int, float)):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and math.isclose(
            actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and set(actual) == set(expected) and all(
            close(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            close(a, e) for a, e in zip(actual, expected))
    return actual == expected


def run_driver(server, published_client_path: Path, download_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RIVER_ML_"))}
    env["PYTHONPATH"] = os.pathsep.join(map(str, (published_client_path, ROOT / "tests", EXAMPLE_PROJECT)))
    completed = subprocess.run(
        [sys.executable, str(DRIVER), server.url, "--learn", str(N_LEARN), "--download-dir", str(download_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"The driver exited with {completed.returncode}.\n--- driver stderr ---\n{completed.stderr[-20000:]}"
            f"\n--- server log ---\n{server.log_text()[-20000:]}",
            pytrace=False,
        )
    return json.loads(completed.stdout)


@pytest.fixture(params=BACKENDS)
def report(request, live_server_factory, published_client_path, tmp_path, monkeypatch):
    # KMeans draws a center's coordinates for new features in set-iteration order, which
    # follows the string hash seed: the server and the driver's reference share one seed.
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    server = live_server_factory(request.param, workers=2)
    download_dir = tmp_path / "downloads"
    download_dir.mkdir()
    result = run_driver(server, published_client_path, download_dir)
    result["_backend"] = request.param
    result["_server"] = server
    result["_download_dir"] = download_dir
    return result


@pytest.mark.live
def test_published_client_against_live_server(report, published_client_path):
    server = report["_server"]
    try:
        check_report(report, published_client_path)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{server.log_text()[-10000:]}") from None


def check_report(report: dict, published_client_path: Path) -> None:
    # The driver really ran the published client, not our own riverapi.
    assert report["riverapi_version"] == "0.0.21"
    assert Path(report["riverapi_file"]).resolve().is_relative_to(published_client_path.resolve())

    # info() and check(): check() keeps the URL and prefix the client already had.
    info = report["info"]
    assert info["status"] == "running"
    assert info["storage"] == report["_backend"]
    assert info["prefix"] == "api"
    assert info["river_version"] == river.__version__
    assert info["baseurl"] == report["_server"].url
    assert set(info) >= {"baseurl", "id", "status", "name", "description", "documentationUrl", "prefix", "storage",
                         "river_version", "version"}
    assert report["after_check"] == {"baseurl": report["_server"].url, "prefix": "api",
                                     "apiroot": report["_server"].url + "/api"}

    # Refusals make the client exit non-zero, and create nothing.
    assert report["models_at_start"] == {"models": []}
    assert report["wrong_flavor_exit_code"] == 1
    assert report["unknown_flavor_exit_code"] == 1
    assert report["models_after_refusals"] == {"models": []}

    chosen_names = []
    for flavor in FLAVORS:
        check_flavor(flavor, report["flavors"][flavor])
        chosen_names.append(report["flavors"][flavor]["chosen_name"])

    # Deleting the generated models left exactly the chosen ones; deleting those leaves none.
    assert sorted(report["models_before_cleanup"]["models"]) == sorted(chosen_names)
    assert report["models_at_end"] == {"models": []}
    assert report["deleted_metrics_status"] == 404
    assert report["deleted_delete_status"] == 404


def check_flavor(flavor: str, r: dict) -> None:
    where = f"[{flavor}] "
    generated, chosen = r["generated_name"], r["chosen_name"]

    # Uploads: a generated two-word name, the chosen name as given; both listed.
    assert re.fullmatch(r"[a-z]+-[a-z]+", generated), where + generated
    assert chosen == f"published-{flavor}"
    assert {generated, chosen} <= set(r["models_after_upload"]["models"]), where + str(r["models_after_upload"])

    # Learning: one log entry per learn, the prediction made before learning as the reference made it.
    assert r["n_learn"] == N_LEARN
    assert [answer["model"] for answer in r["learn_answers"]] == [chosen] * N_LEARN
    assert [answer["sequence"] for answer in r["learn_answers"]] == list(range(1, N_LEARN + 1)), where
    if flavor in SUPERVISED:
        server_predictions = [answer.get("prediction") for answer in r["learn_answers"]]
        assert close(server_predictions, r["reference_learn_predictions"]), where + str(server_predictions)
    assert r["generated_learn_answer"]["model"] == generated

    # Predict: an identifier to label later, and the reference model's prediction.
    predicted = r["predict_answer"]
    assert set(predicted) == {"model", "prediction", "identifier"}, where + str(predicted)
    assert predicted["model"] == chosen
    assert predicted["identifier"]
    assert close(predicted["prediction"], r["reference_prediction"]), where + str(predicted)
    prediction = predicted["prediction"]
    if flavor in ("regression", "custom"):
        assert isinstance(prediction, float), where + repr(prediction)
    elif flavor == "anomaly":  # a score in [0, 1]; 0 only before the first window is complete
        assert isinstance(prediction, float) and 0 < prediction <= 1, where + repr(prediction)
    elif flavor == "binary":
        assert set(prediction) == {"true", "false"} and sum(prediction.values()) == pytest.approx(1.0)
    elif flavor == "multiclass":
        assert len(prediction) >= 2 and sum(prediction.values()) == pytest.approx(1.0), where + str(prediction)
    elif flavor == "cluster":
        assert prediction in (0, 1, 2) and not isinstance(prediction, bool), where + repr(prediction)

    # Label (flavors learned with a ground truth): accepted once, the identifier then consumed.
    if flavor in LABELLED:
        assert r["labelled"]
        assert r["label_answer"]["model"] == chosen
        assert r["label_answer"]["identifier"] == predicted["identifier"]
        assert r["relabel_exit_code"] == 1
    else:
        assert "label_answer" not in r

    # Metrics: the names RIVER-API.md gives the flavor, with the values the reference reached
    # (learned examples plus the labelled prediction scored before each was learned).
    metrics = r["metrics"]
    assert set(metrics) == EXPECTED_METRICS[flavor], where + str(metrics)
    assert close(metrics, r["reference_metrics"]), where + f"server {metrics} != reference {r['reference_metrics']}"
    if flavor == "regression":
        assert metrics["MAE"] > 0 and metrics["RMSE"] >= metrics["MAE"]
    if flavor in ("binary", "multiclass"):
        assert 0 < metrics["Accuracy"] <= 1

    # Stats: exact call counts, aggregated over both workers.
    stats = r["stats"]
    assert {"learn", "predict"} <= set(stats), where + str(stats)
    assert stats["learn"]["n_calls"] == N_LEARN, where + str(stats)
    assert stats["predict"]["n_calls"] == 1, where + str(stats)
    if "label" in stats:
        assert stats["label"]["n_calls"] == (1 if flavor in LABELLED else 0), where + str(stats)
    for operation in ("learn", "predict"):
        assert STAT_FIELDS <= set(stats[operation]), where + str(stats[operation])
        assert isinstance(stats[operation]["mean_duration"], int) and stats[operation]["mean_duration"] > 0
        assert isinstance(stats[operation]["ewm_duration"], int) and stats[operation]["ewm_duration"] > 0
        assert re.fullmatch(r"[0-9.]+ (ns|µs|ms|s)", stats[operation]["mean_duration_human"])
    assert r["generated_stats"]["learn"]["n_calls"] == 1
    assert r["generated_stats"]["predict"]["n_calls"] == 0

    # Model JSON: keyed by step class name.
    model_json = r["model_json"]
    assert list(model_json) == MODEL_JSON_STEPS[flavor], where + str(model_json)
    if "StandardScaler" in model_json:
        assert model_json["StandardScaler"]["with_std"] is True
    if flavor == "cluster":
        assert model_json["KMeans"]["n_clusters"] == 3 and model_json["KMeans"]["seed"] == 1
    if flavor == "anomaly":
        assert model_json["HalfSpaceTrees"]["seed"] == 1 and model_json["HalfSpaceTrees"]["window_size"] == 5

    # Download: a pickle of the trained model that predicts what the server (and the reference) predicts.
    assert r["download_dest_returned"] is True
    assert r["downloaded_type"] == PIPELINE_TYPE[flavor]
    assert len(r["comparisons"]) == 4
    for comparison in r["comparisons"]:
        assert close(comparison["server"], comparison["downloaded"]), where + str(comparison)
        assert close(comparison["server"], comparison["reference"]), where + str(comparison)

    # Delete (form body): the generated model is gone, the chosen one stays; reads of it are refused.
    assert r["delete_answer"]["model"] == generated
    assert generated not in r["models_after_delete"]["models"]
    assert chosen in r["models_after_delete"]["models"]
    for call in ("metrics", "stats", "download", "predict"):
        assert r[f"deleted_{call}_exit_code"] == 1, where + call
