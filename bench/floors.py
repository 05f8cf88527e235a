"""In-process floors: river's own learn_one and predict_one on the rows the server gets, in this process.

``python -m bench.floors`` runs it alone.
"""

from __future__ import annotations

from bench.common import SMALL, Context, Row, big_model, inprocess_rates, small_model, synthetic_rows, trump_rows

NAME = "floors"
SERVERS = ()


def inprocess(ctx: Context) -> dict[str, dict[str, float]]:
    """Rows per second of learn_one and predict_one, for the small model on TrumpApproval and the ~100 KB
    tree on the synthetic rows (measured once per run, shared by the benchmarks)."""
    if "inprocess" not in ctx.cache:
        config = ctx.config
        seconds = min(1.0, config.seconds / 2)
        size = config.model_bytes
        ctx.cache["inprocess"] = {
            "small": inprocess_rates(small_model, trump_rows(), seconds, config.rounds),
            "big": inprocess_rates(lambda: big_model(size), synthetic_rows(1000, seed=2), seconds, config.rounds),
        }
    return ctx.cache["inprocess"]


def run(ctx: Context) -> list[Row]:
    rates = inprocess(ctx)
    kb = ctx.config.model_bytes // 1000
    return [
        Row(f"in-process learn_one, {SMALL}", rates["small"]["learn"], "rows/s", note="TrumpApproval rows"),
        Row(f"in-process predict_one, {SMALL}", rates["small"]["predict"], "rows/s"),
        Row(f"in-process learn_one, ~{kb} KB Hoeffding tree", rates["big"]["learn"], "rows/s",
            note="synthetic rows, 10 features"),
        Row(f"in-process predict_one, ~{kb} KB Hoeffding tree", rates["big"]["predict"], "rows/s"),
    ]


if __name__ == "__main__":
    from bench.__main__ import main

    main([NAME])
