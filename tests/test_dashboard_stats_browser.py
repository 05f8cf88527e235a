"""The dashboard's stats table shows the stats' rate and latency percentiles, in a real browser.

Uses the browser, users and live site of tests/test_dashboard_browser.py; skips without Chromium.
"""

from __future__ import annotations

import re

import pytest

from test_dashboard_browser import API, PATIENCE_MS, chromium, make_user, screenshot, sign_in, start_site  # noqa: F401

DURATION = re.compile(r"[0-9.]+ (ns|µs|ms|s)")


@pytest.mark.live
def test_the_stats_table_shows_rates_and_percentiles(live_server_factory, chromium):  # noqa: F811 - the fixture
    server = start_site(live_server_factory)
    ada = API(server, make_user(server, "ada"))
    ada.upload("regression", "timed")
    ada.learn("timed", "regression", 12)

    sign_in(chromium, server, "ada")
    row = 'article[data-model="timed"] tr[data-operation="learn"]'
    chromium.wait_for_function(
        "selector => document.querySelector(selector)?.children[1].textContent.trim() === '12'",
        arg=row, timeout=PATIENCE_MS)
    header = [cell.strip() for cell in chromium.locator('article[data-model="timed"] table.stats th').all_inner_texts()]
    assert header == ["calls", "total", "per s", "mean", "p50", "p95", "p99"]
    cells = [cell.strip() for cell in chromium.locator(f"{row} td").all_inner_texts()]
    assert cells[0] == "learn" and cells[1] == "12"
    assert float(cells[2]) > 0  # calls per second over the last minute, from the server
    assert all(DURATION.fullmatch(cell) for cell in cells[3:]), cells
    label = [cell.strip() for cell in chromium.locator(
        'article[data-model="timed"] tr[data-operation="label"] td').all_inner_texts()]
    assert label[1] == "0" and label[3:] == ["–"] * 4  # no calls, no durations
    screenshot(chromium, "dashboard-stats")
    assert not chromium.errors, chromium.errors
