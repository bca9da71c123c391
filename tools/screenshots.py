"""Screenshots of a sweep in the MLflow UI and optuna-dashboard, as a browser shows them.

Starts `make ui ROOT=<root>` on a store made by a sweep (and optuna-dashboard on its study), then
drives headless Chromium with Playwright: open a page, wait for the JS app to show its data,
close MLflow's assistant side panel, take the screenshot. Writes into --out:

    mlflow_runs.png         the runs table in steerlab's shared view (every trial scored)
    mlflow_parent_run.png   the study's parent run: best.* tags, best_* metrics, params
    mlflow_pareto.png       the parent run's pareto.png artifact in the artifact viewer
    mlflow_layer_coef.png   its layer_coef_map.png
    mlflow_genai_default.png  the same experiment opened without ?workflowType (GenAI view)
    optuna_dashboard.png    optuna-dashboard's study page (best trial, objective name)

    python tools/screenshots.py --root /tmp/sweep --out docs/screenshots

Needs the system's `chromium` (Debian's; `make .venv/.chromium` installs it) and Playwright
(in the `dev` extra; no `playwright install`: it drives that Chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
WAIT_MS = 90_000  # a page's data on a busy machine


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise SystemExit("no chromium: apt-get install chromium (or make .venv/.chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None, timeout: float = 180) -> Any:
    """JSON from `url` (POSTing `body`), retried until the server answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def shot(page: Page, url: str, path: Path, ready: Locator, height: int = 0) -> None:
    """Open `url`, wait until `ready` shows, close MLflow's assistant panel, save a screenshot
    (`height`: of the whole page up to that many pixels, else of the window)."""
    page.goto("about:blank")
    page.goto(url)
    ready.first.wait_for(timeout=WAIT_MS)
    page.locator('button[aria-label="Close"]').evaluate_all("bs => bs.forEach(b => b.click())")
    page.wait_for_timeout(2000)  # the table's columns, the panel's slide, a popover
    clip = None
    if height:
        full = page.evaluate("document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": page.viewport_size["width"], "height": min(full, height)}
    page.screenshot(path=path, full_page=bool(height), clip=clip)
    print(f"{path}  <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="paths.root of a finished sweep")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--experiment", default=None, help="default: the first with a sweep")
    ap.add_argument("--make-flag", action="append", default=[], help="e.g. -o .venv/.installed")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ui = subprocess.Popen(
        ["make", "-s", *a.make_flag, "ui", f"ROOT={a.root.resolve()}", f"PORT={port}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ | {"MAKEFLAGS": ""},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        api = f"{base}/api/2.0/mlflow"
        for exp in get(f"{api}/experiments/search", {"max_results": 100})["experiments"]:
            if a.experiment and exp["name"] != a.experiment:
                continue
            query = {
                "experiment_ids": [exp["experiment_id"]],
                "filter": "tags.`steerlab.kind` = 'sweep'",
            }
            if found := get(f"{api}/runs/search", query).get("runs"):
                parent = found[0]
                break
        else:
            raise SystemExit(f"no sweep parent run in {a.root}")
        eid, rid = exp["experiment_id"], parent["info"]["run_id"]
        tags = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}
        run = f"{base}/#/experiments/{eid}/runs/{rid}"
        ml = "workflowType=machine_learning"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium())
            # wide enough for every column of steerlab's view, the tags included
            page = browser.new_page(viewport={"width": 2150, "height": 900})
            trials = page.get_by_role("link", name=re.compile(r"^trial-\d+$"))
            view = f"{base}/#/experiments/{eid}/runs?{ml}&viewStateShareKey=steerlab"
            shot(page, view, a.out / "mlflow_runs.png", trials)
            page.set_viewport_size({"width": 1700, "height": 900})
            shot(page, f"{run}?{ml}", a.out / "mlflow_parent_run.png", page.get_by_text("best_"))
            for art, name in (
                ("pareto.png", "mlflow_pareto.png"),
                ("layer_coef_map.png", "mlflow_layer_coef.png"),
            ):
                url = f"{run}/artifacts/{art}?{ml}"
                shot(page, url, a.out / name, page.locator('img[src^="blob:"]'))
            overview = page.get_by_text("Overview", exact=True)
            shot(page, f"{base}/#/experiments/{eid}", a.out / "mlflow_genai_default.png", overview)
            storage = tags.get("optuna.storage", "")
            if storage.startswith("sqlite:///"):
                dashboard(page, storage, a.out / "optuna_dashboard.png")
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def dashboard(page: Page, storage: str, path: Path) -> None:
    """optuna-dashboard's page of the sweep's study, served from its WSGI app."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        [study] = get(f"{base}/api/studies")["study_summaries"]
        page_url = f"{base}/dashboard/studies/{study['study_id']}"
        shot(page, page_url, path, page.get_by_text("Best Trial"), height=1400)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
