"""The MLflow runs view a sweep prints, opened in a real browser: a tiny-model sweep, `make ui`
started as its closing lines say, and headless Chromium (Debian's, driven by Playwright) on the
printed link shows every trial, its delta CI columns and the best trial's flag on screen."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import make_ui, run_steerlab, tiny_args

pytestmark = [pytest.mark.server, pytest.mark.slow]
# the closing lines of a sweep with a local store: how to start the UI, then the runs view
UI_HINT = re.compile(r"MLflow: (make ui.*), then open\n  http://[^/\s]+/(#\S+)  \(every trial")


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("no chromium: apt-get install chromium (make test installs it)")
    return path


def shown(value: float) -> str:
    """A metric as the runs table prints it (steerlab logs 2 decimals, the UI drops zeros)."""
    return format(round(value, 2), "g")


def test_the_printed_runs_view_shows_every_trial_its_ci_and_the_best(tmp_path, tiny_dir):
    browser_path = chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
    )
    done = run_steerlab(*tiny_args(tmp_path, tiny_dir, "search.n_trials=3"))
    assert done.returncode == 0, done.stderr[-3000:]
    hint = UI_HINT.search(done.stdout)
    assert hint, done.stdout[-2000:]
    best = int(re.search(r"best valid: trial (\d+),", done.stdout)[1])
    [trials_json] = (tmp_path / "multirun" / "tiny" / "evil").glob("*/*/trials.json")
    rows = {r["trial"]: r for r in json.loads(trials_json.read_text())}
    assert sorted(rows) == [0, 1, 2]

    make, *args = shlex.split(hint[1])  # make ui ROOT=<tmp_path>, on a free port
    assert make == "make" and args[0] == "ui" and f"ROOT={tmp_path}" in args
    with make_ui(*args[1:]) as base, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path)
        # wide enough for every column of steerlab's view, the tags last
        page = browser.new_page(viewport={"width": 2200, "height": 900})
        try:
            check_runs_view(sync_api.expect, page, f"{base}/{hint[2]}", rows, best)
        except AssertionError:
            page.screenshot(path=tmp_path / "runs_view.png")
            raise
        finally:
            browser.close()


def check_runs_view(expect, page, url: str, rows: dict[int, dict], best: int) -> None:
    page.goto(url)
    trials = page.get_by_role("link", name=re.compile(r"^trial-\d+$"))
    expect(trials).to_have_count(3, timeout=90_000)  # the JS app has fetched the runs
    close = page.get_by_role("button", name="Close", exact=True)  # MLflow's assistant panel
    if close.count():
        close.click()
    for name in ("objective", "coherence", "delta_lo", "delta_hi", "steerlab.best"):
        expect(page.get_by_role("columnheader", name=name, exact=True).first).to_be_in_viewport()
    expect(page.get_by_role("link", name=re.compile(r"^sweep-evil-"))).to_be_in_viewport()
    for number, row in rows.items():
        link = page.get_by_role("link", name=f"trial-{number}", exact=True)
        expect(link).to_be_in_viewport()
        # a row's cells right of the pinned run name: the grid row of the same index
        index = link.locator("xpath=ancestor::*[@role='row'][1]").get_attribute("row-index")
        cells = page.locator(f".ag-center-cols-container [role=row][row-index='{index}']")

        def cell(col: str, cells=cells):
            return cells.locator(f'[role=gridcell][col-id="{col}"]')

        expect(cell("metrics.`delta_lo`")).to_have_text(shown(row["delta_lo"]))
        expect(cell("metrics.`delta_hi`")).to_have_text(shown(row["delta_hi"]))
        flag = cell("tags.`steerlab.best`")
        expect(flag).to_be_in_viewport()
        expect(flag).to_have_text("true" if number == best else "-")
