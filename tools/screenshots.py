"""Screenshots of a sweep in the MLflow UI and optuna-dashboard, as a browser shows them.

Starts `make ui ROOT=<root>` on a store made by a sweep (and optuna-dashboard on its study), then
drives headless Chromium over the DevTools protocol: open a page, wait for the JS app to load
its data, close MLflow's assistant side panel, take the screenshot. Writes into --out:

    mlflow_runs.png         the runs table in steerlab's shared view (every trial scored)
    mlflow_parent_run.png   the study's parent run: best.* tags, best_* metrics, params
    mlflow_pareto.png       the parent run's pareto.png artifact in the artifact viewer
    mlflow_layer_coef.png   its layer_coef_map.png
    mlflow_genai_default.png  the same experiment opened without ?workflowType (GenAI view)
    optuna_dashboard.png    optuna-dashboard's study page (best trial, objective name)

    python tools/screenshots.py --root /tmp/sweep --out docs/screenshots

Needs `chromium` and the `websockets` package (`pip install websockets`; not a steerlab
dependency: this tool only makes the README's pictures).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def api(base: str, path: str, body: dict | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Chromium:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, width: int = 1700, height: int = 900) -> None:
        import websockets

        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={self.profile.name}",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pages = f"http://127.0.0.1:{self.port}/json"
        wait_http(pages, 60)
        url = next(
            t for t in json.loads(urllib.request.urlopen(pages).read()) if t["type"] == "page"
        )
        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(
            websockets.connect(url["webSocketDebuggerUrl"], max_size=2**27)
        )
        self.n = 0
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, **params: Any) -> dict:
        self.n += 1
        n = self.n

        async def go() -> dict:
            await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await self.ws.recv())
                if msg.get("id") == n:
                    return msg

        return self.loop.run_until_complete(go())

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("result", {}).get("value")

    def shot(
        self, url: str, path: Path, wait: float = 10.0, until: str | None = None, height: int = 0
    ) -> Path:
        """Open `url` in a fresh document, wait (until the page's text contains `until`, at
        most `wait` s more), close MLflow's assistant panel, and save a screenshot (`height`:
        of the whole page up to that many pixels, else of the window)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)
        time.sleep(wait)
        deadline = time.time() + wait
        text = "document.body.innerText"
        while until and time.time() < deadline and until not in (self.js(text) or ""):
            time.sleep(1)
        self.js(
            "[...document.querySelectorAll('button')]"
            ".filter(b => b.getAttribute('aria-label') === 'Close').forEach(b => b.click())"
        )
        time.sleep(2)
        params: dict[str, Any] = {"format": "png"}
        if height:
            full = min(int(self.js("document.documentElement.scrollHeight") or 0), height)
            width = int(self.js("window.innerWidth"))
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": full, "scale": 1},
            }
        data = self.call("Page.captureScreenshot", **params)["result"]["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"{path}  <- {url}")
        return path

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.proc.terminate()
        self.proc.wait()
        self.profile.cleanup()


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
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/api/2.0/mlflow/experiments/search?max_results=100")
        exps = api(base, "experiments/search", {"max_results": 100})["experiments"]
        for exp in exps:
            if a.experiment and exp["name"] != a.experiment:
                continue
            query = "tags.`steerlab.kind` = 'sweep'"
            found = api(
                base, "runs/search", {"experiment_ids": [exp["experiment_id"]], "filter": query}
            )
            if found.get("runs"):
                parent = found["runs"][0]
                break
        else:
            raise SystemExit(f"no sweep parent run in {a.root}")
        eid, rid = exp["experiment_id"], parent["info"]["run_id"]
        tags = {t["key"]: t["value"] for t in parent["data"].get("tags", [])}
        ml = "workflowType=machine_learning"
        browser = Chromium()
        browser.shot(
            f"{base}/#/experiments/{eid}/runs?{ml}&viewStateShareKey=steerlab",
            a.out / "mlflow_runs.png",
            until="objective",
        )
        browser.shot(f"{base}/#/experiments/{eid}/runs/{rid}?{ml}", a.out / "mlflow_parent_run.png")
        for art, name in (
            ("pareto.png", "mlflow_pareto.png"),
            ("layer_coef_map.png", "mlflow_layer_coef.png"),
        ):
            browser.shot(
                f"{base}/#/experiments/{eid}/runs/{rid}/artifacts/{art}?{ml}", a.out / name
            )
        browser.shot(f"{base}/#/experiments/{eid}", a.out / "mlflow_genai_default.png")
        storage = tags.get("optuna.storage", "")
        if storage.startswith("sqlite:///"):
            dashboard(browser, storage, a.out / "optuna_dashboard.png")
    finally:
        if browser is not None:
            browser.close()
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


def dashboard(browser: Chromium, storage: str, path: Path) -> None:
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
        [study] = json.loads(urllib.request.urlopen(f"{base}/api/studies").read())[
            "study_summaries"
        ]
        page = f"{base}/dashboard/studies/{study['study_id']}"
        browser.shot(page, path, until="Best Trial", height=1400)
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
