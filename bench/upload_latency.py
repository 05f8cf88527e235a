"""Upload latency through the sandbox, against loading the same bytes in-process (the unsafe baseline).

Run with ``make bench`` (or ``python bench/upload_latency.py`` from the repository root with the
virtualenv's Python). Prints milliseconds per upload and the ratio to the baseline measured in the same
run; it asserts nothing.
"""

from __future__ import annotations

import os
import pickle
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example_project")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

import django  # noqa: E402

django.setup()

import dill  # noqa: E402
from river import datasets, linear_model, preprocessing, tree  # noqa: E402

from django_river_ml.sandbox import Sandbox  # noqa: E402

ROUNDS = 15


def small_model():
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    for x, y in datasets.TrumpApproval().take(50):
        model.learn_one(x, y)
    return model


def tree_of_about(size: int):
    model = tree.HoeffdingTreeClassifier(grace_period=20)
    for x, y in datasets.Phishing():
        model.learn_one(x, y)
        if len(pickle.dumps(model)) >= size:
            break
    return model


def timed(function, rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    sandbox = Sandbox()
    started = time.perf_counter()
    sandbox.start()
    print(f"sandbox start (once per server process): {1000 * (time.perf_counter() - started):.0f} ms")
    cases = {"small (StandardScaler | LinearRegression)": (small_model(), "regression"),
             "~100 KB Hoeffding tree": (tree_of_about(100_000), "binary")}
    print(f"{'model':45s} {'bytes':>8s} {'in-process ms':>14s} {'sandbox ms':>11s} {'ratio':>7s}")
    for name, (model, flavor) in cases.items():
        data = dill.dumps(model)
        baseline = timed(lambda: dill.loads(data))  # noqa: S301 - our own bytes, the unsafe way, to compare
        sandboxed = timed(lambda: sandbox.load(data, flavor))
        print(f"{name:45s} {len(data):8d} {baseline:14.2f} {sandboxed:11.1f} {sandboxed / baseline:6.0f}x")
    sandbox.close()


if __name__ == "__main__":
    main()
