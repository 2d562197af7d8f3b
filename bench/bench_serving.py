"""Online serving speed: tidal beside `mlflow models serve` and BentoML, the same model, the same load.

Target of the issue "Registry and serving at full depth": with request validation and
prediction logging on, single-row requests per second at concurrency 1 and 8 at least 25x
MLflow's and 10x BentoML's; p99 at concurrency 8 <= 5 ms; server CPU time per request
<= 0.25 ms; a 1,000-row request <= 4 ms.

One run, on this machine, one server at a time:

- the model: LightGBM, 100 trees of up to 31 leaves on 24 features (V1..V23, Amount) of the
  credit-card fraud data (../shared/data/creditcard_fraud_ulb.parquet), trained by tidal
  (ingest, train, promote). Its bundle's model.txt is then loaded by MLflow
  (``mlflow.lightgbm.save_model``, bench/mlflow_save.py) and by BentoML
  (bench/bentoml_service.py), so all three serve the identical booster; the script checks
  that the three answer the same probabilities as the booster in-process;
- the servers, each with its default worker count (one process): ``python -m tidal.cli serve``
  (pydantic validation, every prediction logged to the lake); ``mlflow models serve
  --env-manager local`` (signature enforcement; MLflow's local server has no prediction log);
  ``bentoml serve`` (pydantic validation, every prediction logged with ``bentoml.monitor``).
  Access logs are off in all three. MLflow and BentoML live in their own venvs
  (.venv-mlflow, .venv-bentoml, created from bench/requirements-*.txt on first run: a few
  minutes, once);
- the load: wrk (``apt-get install wrk``; POST of one JSON record through a Lua script),
  3 s of warm-up, then 10 s at concurrency 1 (``-t1 -c1``) and 10 s at concurrency 8
  (``-t2 -c8``). Without wrk, a Python keep-alive load generator in separate processes
  (``--loadgen python``; slower than wrk, so a lower ceiling for every server);
- server CPU per request: utime + stime of the server's whole process tree (/proc) across the
  concurrency-8 run (plus 1.5 s for the last log flush), divided by the requests served;
- the 1,000-row request: 50 sequential requests after 3 warm-ups (http.client, body encoded once), and the
  server's CPU time per request over them (its process tree, its log flush included); then the same
  request back to back for 3 s ("sustained": hundreds of thousands of rows a second to log, whose
  flushes and commits share the 2 cores with the requests and the client); for tidal also the same
  1,000 rows as Open Inference Protocol v2 binary tensors (as tritonclient sends them).

Afterwards tidal's server is profiled under the same concurrency-8 load with py-spy, if
installed (``.venv/bin/pip install py-spy``; ``--no-profile`` skips it); the profile is not
part of the measured runs. The machine is shared: the load average is printed before and after.

Run: ``.venv/bin/python bench/bench_serving.py`` (about 3-4 minutes once the venvs exist).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "creditcard_fraud_ulb.parquet"
sys.path.insert(0, str(ROOT / "src"))

from tidal.errors import TidalError  # noqa: E402
from tidal.project import Project  # noqa: E402

FEATURES = [f"V{i}" for i in range(1, 24)] + ["Amount"]
TREES, LEAVES = 100, 31
SPEC = {
    "name": "fraud24", "task": "binary", "target": "Class",
    "features": {name: {"type": "numeric"} for name in FEATURES},
    # early stopping never fires before round 100 (patience > rounds); a learning rate of 0.02
    # keeps the validation loss falling to the last round, so the bundle keeps all 100 trees
    "training": {"num_boost_round": TREES, "early_stopping_rounds": TREES + 1,
                 "params": {"learning_rate": 0.02, "num_leaves": LEAVES, "min_data_in_leaf": 20}},
}
TARGETS = {"vs_mlflow": 25.0, "vs_bentoml": 10.0, "p99_ms": 5.0, "cpu_ms": 0.25, "batch_ms": 4.0}
PEER_VENVS = {"mlflow": ROOT / ".venv-mlflow", "bentoml": ROOT / ".venv-bentoml"}
QUIET_ENV = {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "True",
             "UVICORN_ACCESS_LOG": "false", "PYTHONUNBUFFERED": "1"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- environments and tools

def peer_python(name: str) -> Path:
    """The interpreter of MLflow's or BentoML's venv, created (or brought to its requirements) first if needed."""
    venv, requirements = PEER_VENVS[name], HERE / f"requirements-{name}.txt"
    python, stamp = venv / "bin" / "python", venv / ".tidal-requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"{name}: installing {venv.name} from bench/{requirements.name} (first run only; a few minutes) ...",
          flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                    str(requirements)], check=True)
    stamp.write_text(wanted)
    return python


def find_wrk() -> str | None:
    """wrk's path, installing Debian's package first when running as root; None if it cannot be had."""
    if path := shutil.which("wrk"):
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk: not found; apt-get install -y wrk ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    return shutil.which("wrk")


def version_of(python: Path, module: str) -> str:
    out = subprocess.run([str(python), "-c", f"import {module}; print({module}.__version__)"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- process trees

def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of one process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and of every process descending from it, by pid."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo.extend(children.get(pid, []))
    return out


# ---------------------------------------------------------------- load generators

@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx responses and socket errors

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def parse_wrk(out: str) -> Load:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    if not done:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return Load(requests=int(done.group(1)), seconds=_ms(done.group(2) + done.group(3)) / 1e3,
                p50_ms=_ms(latency["50"]), p99_ms=_ms(latency["99"]), errors=errors)


def _python_connection(port: int, path: str, body: bytes, seconds: float, queue: Any) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    latencies, errors = [], 0
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        errors += not 200 <= response.status < 300
    conn.close()
    queue.put((latencies, errors))


class LoadGenerator:
    """wrk when available, else one Python process per connection (keep-alive http.client)."""

    def __init__(self, *, wrk: str | None, folder: Path) -> None:
        self.wrk = wrk
        self.folder = folder

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "python (one http.client keep-alive process per connection)"

    def run(self, port: int, path: str, body: bytes, *, connections: int, seconds: float) -> Load:
        if self.wrk:
            return self._wrk(port, path, body, connections, seconds)
        return self._python(port, path, body, connections, seconds)

    def _wrk(self, port: int, path: str, body: bytes, connections: int, seconds: float) -> Load:
        body_file = self.folder / f"body-{port}-{len(body)}.json"
        body_file.write_bytes(body)
        script = self.folder / f"post-{port}-{len(body)}.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
        threads = min(2, connections)
        out = subprocess.run([self.wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                              "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return parse_wrk(out)

    def _python(self, port: int, path: str, body: bytes, connections: int, seconds: float) -> Load:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_python_connection, args=(port, path, body, seconds, queue))
                 for _ in range(connections)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        results = [queue.get(timeout=seconds + 30) for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - started
        latencies = sorted(x for lat, _ in results for x in lat)
        return Load(requests=len(latencies), seconds=elapsed, p50_ms=statistics.median(latencies) * 1e3,
                    p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3, errors=sum(e for _, e in results))


# ---------------------------------------------------------------- the servers

@dataclass
class Server:
    """How to start one server and speak to it."""

    name: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    ready_path: str
    path: str  # single-row route
    body: Callable[[list[dict[str, float]]], bytes]  # records -> request body
    probabilities: Callable[[Any], list[float]]  # decoded response -> probabilities
    batch_path: str | None
    batch_body: Callable[[list[dict[str, float]]], bytes] | None
    logging: str  # how it logs predictions
    validation: str
    tensor_batch: Callable[[list[dict[str, float]]], tuple[str, bytes, dict[str, str]]] | None = None  # OIP binary
    port: int = 0
    proc: subprocess.Popen | None = None
    log_file: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, folder: Path, timeout: float = 180.0) -> None:
        self.log_file = folder / f"{self.name}.log"
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def records_body(records: list[dict[str, float]]) -> bytes:
    return json.dumps(records[0] if len(records) == 1 else records).encode()


def oip_binary_request(records: list[dict[str, float]]) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of an Open Inference Protocol v2 request with Triton's binary tensor
    extension: one FP64 tensor per feature, as tritonclient sends it."""
    inputs, blobs = [], []
    for name in records[0]:
        blob = np.array([r[name] for r in records], dtype="<f8").tobytes()
        inputs.append({"name": name, "shape": [len(records)], "datatype": "FP64",
                       "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps({"inputs": inputs, "outputs": [{"name": "probability"}]}).encode()
    return (f"/v2/models/{SPEC['name']}/infer", head + b"".join(blobs),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})


def tidal_server(env: dict[str, str], spec_path: Path) -> Server:
    return Server(
        name="tidal", command=[sys.executable, "-m", "tidal.cli", "serve", "--spec", str(spec_path),
                               "--port", str(port := free_port())],
        cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT / "src")), ready_path="/readyz", port=port,
        path="/v1/predict", body=records_body, probabilities=lambda r: [p["probability"] for p in r["predictions"]],
        batch_path="/v1/predict", batch_body=records_body, tensor_batch=oip_binary_request,
        logging="every prediction to the lake (always on)", validation="pydantic record model from the spec")


def mlflow_server(env: dict[str, str], model_txt: Path, columns: list[str], folder: Path) -> Server:
    python = peer_python("mlflow")
    model_dir = folder / "mlflow-model"
    save = subprocess.run([str(python), str(HERE / "mlflow_save.py"), str(model_txt), str(model_dir)],
                          capture_output=True, text=True, env=env, check=False)
    if save.returncode:
        raise RuntimeError(f"mlflow_save.py failed:\n{save.stderr[-3000:]}")

    def split(records: list[dict[str, float]]) -> bytes:
        return json.dumps({"dataframe_split": {"columns": columns,
                                               "data": [[r[c] for c in columns] for r in records]}}).encode()

    return Server(
        name="mlflow", command=[str(python.parent / "mlflow"), "models", "serve", "-m", str(model_dir),
                                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port := free_port())],
        cwd=folder, env=dict(env, PATH=f"{python.parent}{os.pathsep}{env['PATH']}"), ready_path="/ping",
        port=port, path="/invocations", body=split, probabilities=lambda r: r["predictions"],
        batch_path="/invocations", batch_body=split,
        logging="none (its local scoring server has no prediction log)",
        validation="model signature (24 double columns) enforced")


def bentoml_server(env: dict[str, str], model_txt: Path, folder: Path) -> Server:
    python = peer_python("bentoml")
    service_dir = folder / "bentoml-service"
    service_dir.mkdir()
    shutil.copy(HERE / "bentoml_service.py", service_dir / "bentoml_service.py")
    return Server(
        name="bentoml", command=[str(python.parent / "bentoml"), "serve", "bentoml_service:Svc",
                                 "--host", "127.0.0.1", "--port", str(port := free_port())],
        cwd=service_dir, ready_path="/readyz", port=port,
        env=dict(env, BENCH_MODEL_FILE=str(model_txt), PATH=f"{python.parent}{os.pathsep}{env['PATH']}"),
        path="/predict", body=lambda recs: json.dumps(recs[0]).encode(),
        probabilities=lambda r: [r] if isinstance(r, float) else r,
        batch_path="/predict_batch", batch_body=lambda recs: json.dumps({"rows": recs}).encode(),
        logging="every prediction with bentoml.monitor (JSON lines files)",
        validation="pydantic model of the 24 fields (input_spec)")


def make_servers(*, model_txt: Path, spec_path: Path, columns: list[str], folder: Path,
                 which: list[str]) -> tuple[list[Server], list[str]]:
    """The servers asked for, and a note for each that could not be set up (its venv or model)."""
    env = dict(os.environ, **QUIET_ENV)
    makers = {"tidal": lambda: tidal_server(env, spec_path),
              "mlflow": lambda: mlflow_server(env, model_txt, columns, folder),
              "bentoml": lambda: bentoml_server(env, model_txt, folder)}
    servers, notes = [], []
    for name in which:
        try:
            servers.append(makers[name]())
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            notes.append(f"{name} not run: {exc}")
            print(f"{name:<8} SET-UP FAILED: {exc}", flush=True)
    return servers, notes


# ---------------------------------------------------------------- tidal's model

def train_tidal(folder: Path) -> tuple[Project, Path, lgb.Booster, list[str]]:
    """Ingest, train and promote with tidal; the project, its bundle's model.txt, the booster, notes."""
    notes = []
    root = folder / "tidal"
    root.mkdir()
    columns = pq.read_schema(DATA).names
    spec = dict(SPEC, exclude=[c for c in columns if c not in FEATURES and c != SPEC["target"]])
    (root / "tidal.yaml").write_text(yaml.safe_dump(spec))
    project = Project.open(root / "tidal.yaml")
    t = time.perf_counter()
    rows = project.ingest(DATA)[0].rows_total
    ingest_s = time.perf_counter() - t
    t = time.perf_counter()
    result = project.train()
    train_s = time.perf_counter() - t
    try:
        project.promote(result.version)
    except TidalError as exc:
        notes.append(f"promotion refused by a guardrail ({exc}); promoted with force")
        project.promote(result.version, force=True)
    _, bundle = project.registry.load(result.version)
    model_txt = bundle.path / "model.txt"
    booster = lgb.Booster(model_file=str(model_txt))
    leaves = [tree["num_leaves"] for tree in booster.dump_model()["tree_info"]]
    print(f"model   tidal: ingested {rows:,} rows in {ingest_s:.1f} s, trained in {train_s:.1f} s: "
          f"{booster.num_trees()} trees (best_iteration {result.metrics['best_iteration']}), "
          f"{max(leaves)} leaves at most ({statistics.mean(leaves):.1f} on average), "
          f"{booster.num_feature()} features, test AUC {result.metrics['test']['auc']:.3f}; "
          f"model.txt {model_txt.stat().st_size / 1e3:.0f} kB served by all three", flush=True)
    if booster.num_trees() != TREES:
        notes.append(f"the bundle holds {booster.num_trees()} trees, not {TREES}: early stopping kept the best "
                     "iteration; all three servers still serve this same booster")
    return project, model_txt, booster, notes


# ---------------------------------------------------------------- measuring

def check_server(server: Server, single: list[dict[str, float]], batch: list[dict[str, float]],
                 expected: np.ndarray) -> str:
    """Same answers as the booster in-process, a bad record refused; a line saying so."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        one = client.post(server.path, content=server.body(single), headers={"Content-Type": "application/json"})
        one.raise_for_status()
        got = server.probabilities(one.json())
        bad = client.post(server.path, content=server.body([dict(single[0], V1="not a number")]),
                          headers={"Content-Type": "application/json"})
        diff = abs(got[0] - expected[0])
        line = f"1 row |diff| {diff:.1e}"
        if server.batch_path and server.batch_body:
            many = client.post(server.batch_path, content=server.batch_body(batch),
                               headers={"Content-Type": "application/json"})
            many.raise_for_status()
            probs = np.asarray(server.probabilities(many.json()))
            if len(probs) != len(batch):
                raise RuntimeError(f"{server.name}: {len(probs)} predictions for {len(batch)} rows")
            diff = max(diff, float(np.abs(probs - expected[1:]).max()))
            line += f", {len(batch):,} rows max |diff| {float(np.abs(probs - expected[1:]).max()):.1e}"
    if diff > 1e-9:
        raise RuntimeError(f"{server.name} answers differ from the booster in-process by {diff:.2e}")
    if not 400 <= bad.status_code < 500:
        raise RuntimeError(f"{server.name} accepted a record with V1='not a number' ({bad.status_code})")
    return f"{line}; a string for V1 -> {bad.status_code}"


BATCH_REQUESTS = 53  # time_batches' requests: 3 warm-ups and 50 timed
SUSTAINED_S = 3.0  # then 1,000-row requests back to back for this long


def time_batches(server: Server, body: bytes, n: int = BATCH_REQUESTS - 3, *, path: str | None = None,
                 headers: dict[str, str] | None = None, seconds: float | None = None) -> tuple[float, float, int]:
    """Median and p99 (nearest rank: of 50 requests, the slowest) in ms of ``n`` sequential requests
    (fewer if ``seconds`` run out first), and how many were timed.

    Sent with the standard library's ``http.client`` on one keep-alive connection, body encoded
    once: about 0.3 ms of client time a request, where httpx took 1-2 ms of the figure."""
    times: list[float] = []
    end = None if seconds is None else time.perf_counter() + seconds
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        for i in range(n + 3):
            started = time.perf_counter()
            conn.request("POST", path or server.batch_path or server.path, body,
                         headers or {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            elapsed = time.perf_counter() - started
            if r.status != 200:
                raise RuntimeError(f"{server.name}: a 1,000-row request failed with {r.status}")
            if i >= 3:
                times.append(elapsed * 1e3)
            if end is not None and time.perf_counter() > end and len(times) >= 20:
                break
    finally:
        conn.close()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(np.ceil(0.99 * len(times))) - 1)], len(times)


def machine_speed(batch: list[dict[str, float]]) -> float:
    """ms to decode the 1,000-row body with msgspec (best of 20): this machine's speed right now
    (its CPU time is shared: the same decode took from 1.1 ms to 2.5 ms on one day)."""
    import msgspec

    body = records_body(batch)
    record = msgspec.defstruct("Record", [(name, float) for name in batch[0]], kw_only=True, gc=False)
    decoder = msgspec.json.Decoder(list[record])  # as tidal's server decodes it
    times = []
    for _ in range(20):
        started = time.perf_counter()
        decoder.decode(body)
        times.append(time.perf_counter() - started)
    return min(times) * 1e3


def post_for(url: str, body: bytes, seconds: float) -> None:
    """POST ``body`` to ``url`` again and again, one at a time, for ``seconds``."""
    end = time.perf_counter() + seconds
    with httpx.Client(timeout=30) as client:
        while time.perf_counter() < end:
            client.post(url, content=body, headers={"Content-Type": "application/json"})


def measure(server: Server, load: LoadGenerator, *, single: list[dict[str, float]], batch: list[dict[str, float]],
            expected: np.ndarray, seconds: float, warmup: float) -> None:
    assert server.proc is not None
    res = server.result
    res["check"] = check_server(server, single, batch, expected)
    res["processes"] = len(process_tree(server.proc.pid))
    res["load_before"] = loadavg()
    body = server.body(single)
    warm = load.run(server.port, server.path, body, connections=8, seconds=warmup)
    res["c1"] = load.run(server.port, server.path, body, connections=1, seconds=seconds)
    before = sum(process_tree(server.proc.pid).values())
    res["c8"] = load.run(server.port, server.path, body, connections=8, seconds=seconds)
    time.sleep(1.5)  # the last flush of the prediction log belongs to these requests
    res["cpu_ms"] = (sum(process_tree(server.proc.pid).values()) - before) / res["c8"].requests * 1e3
    if server.batch_body:
        before = sum(process_tree(server.proc.pid).values())
        res["batch"] = time_batches(server, server.batch_body(batch))
        time.sleep(1.5)  # the flush of their prediction log rows
        # server CPU (whole process tree) per 1,000-row request: wall time on a shared machine is noisy
        res["batch_cpu_ms"] = (sum(process_tree(server.proc.pid).values()) - before) / BATCH_REQUESTS * 1e3
        # sustained: back to back for 3 s (at least 20), so that the log's flushes and commits of
        # hundreds of thousands of rows a second share the 2 cores with the requests
        before = sum(process_tree(server.proc.pid).values())
        res["sustained"] = time_batches(server, server.batch_body(batch), n=10_000, seconds=SUSTAINED_S)
        time.sleep(1.5)
        res["sustained_cpu_ms"] = ((sum(process_tree(server.proc.pid).values()) - before)
                                   / (res["sustained"][2] + 3) * 1e3)
    if server.tensor_batch:  # the same 1,000 rows as binary tensors (OIP v2), checked against the booster
        path, tensor_body, headers = server.tensor_batch(batch)
        answer = httpx.post(server.url + path, content=tensor_body, headers=headers, timeout=30)
        answer.raise_for_status()
        got = np.asarray(next(o["data"] for o in answer.json()["outputs"] if o["name"] == "probability"))
        if float(np.abs(got - expected[1:]).max()) > 1e-9:
            raise RuntimeError(f"{server.name}: OIP binary answers differ from the booster")
        res["tensor_batch"] = time_batches(server, tensor_body, path=path, headers=headers)
    c1, c8 = res["c1"], res["c8"]
    # rows scored: the checks, the load runs (wrk counts completed responses) and the 53 batches
    res["rows"] = (1 + (54 * len(batch) if server.batch_body else 0) + (54 * len(batch) if server.tensor_batch else 0)
                   + ((res["sustained"][2] + 3) * len(batch) if "sustained" in res else 0)
                   + warm.requests + c1.requests + c8.requests)
    print(f"{server.name:<8} {res['check']}; {res['processes']} process(es); c=1 {c1.rps:,.0f} req/s "
          f"(p50 {c1.p50_ms:.2f} p99 {c1.p99_ms:.2f} ms), c=8 {c8.rps:,.0f} req/s (p50 {c8.p50_ms:.2f} "
          f"p99 {c8.p99_ms:.2f} ms), CPU {res['cpu_ms']:.3f} ms/request"
          + (f", 1,000 rows median {res['batch'][0]:.1f} ms (server CPU {res['batch_cpu_ms']:.1f} ms a request)"
             if "batch" in res else "")
          + (f", back to back for {SUSTAINED_S:g} s median {res['sustained'][0]:.1f} ms over {res['sustained'][2]} "
             f"(server CPU {res['sustained_cpu_ms']:.1f} ms a request)" if "sustained" in res else "")
          + (f", as OIP v2 binary tensors median {res['tensor_batch'][0]:.1f} ms" if "tensor_batch" in res else "")
          + (f"; {c1.errors + c8.errors} errors" if c1.errors + c8.errors else "")
          + f"; load average before {res['load_before']}", flush=True)


def profile(server: Server, seconds: float, folder: Path, name: str, drive: Callable[[], None]) -> list[str]:
    """py-spy's view of the server while ``drive`` loads it: where the event loop's thread spends its samples.

    py-spy samples wall-clock stacks of threads that are not asleep, so time a thread spends
    runnable but waiting for one of the 2 cores counts too (the load generator runs beside it).
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() or server.proc is None:
        return ["py-spy not installed (.venv/bin/pip install py-spy); no profile"]
    out = folder / f"profile-{len(list(folder.glob('profile-*')))}.txt"
    rec = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration", f"{seconds:g}",
                            "--rate", "200", "--format", "raw", "--function", "--threads", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    drive()
    _, err = rec.communicate(timeout=seconds + 30)
    if not out.exists():
        return [f"py-spy failed: {err.strip()[-500:]}"]
    own, total, background, threads = Counter(), Counter(), Counter(), Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        n = int(count)
        main = "MainThread" in thread
        short = [re.sub(r" \((.*/)?([^/]+)\)$", r" (\2)", f) for f in frames]
        if not main and (not short or short[-1].startswith("_worker (")):
            continue  # a pool thread waiting for work (py-spy takes its futex wait for activity)
        threads["event loop thread" if main else "other threads (log flush, model reload)"] += n
        if not main:
            background[short[-1]] += n
            continue
        own[short[-1] if short else "?"] += n
        for f, s in set(zip(frames, short)):
            if "tidal/" in f:  # tidal's own functions, inclusive
                total[s] += n
    loop = threads["event loop thread"] or 1
    lines = [f"{name}: samples by thread: " + ", ".join(f"{t} {n:,}" for t, n in threads.most_common())]
    lines.append("  event loop thread, top by own samples:")
    lines += [f"    {n / loop:6.1%}  {f}" for f, n in own.most_common(14)]
    lines.append("  event loop thread, tidal's functions by inclusive samples:")
    lines += [f"    {n / loop:6.1%}  {f}" for f, n in total.most_common(20) if n < 0.99 * loop][:10]
    lines.append("  other threads, busy samples by own function (as a share of the event loop thread's count):")
    lines += [f"    {n / loop:6.1%}  {f}" for f, n in background.most_common(5)]
    return lines


def print_logged(server: Server, project: Project) -> None:
    """How many predictions the server's log holds once it has stopped (tidal: the lake; BentoML: its files)."""
    if server.name == "tidal":
        logged = project.ws.lake.read("predictions").num_rows
        print(f"tidal    prediction log: {logged:,} rows in the lake after shutdown, for about "
              f"{server.result['rows']:,} rows scored while measuring (more: the profile)", flush=True)
    elif server.name == "bentoml":
        lines = sum(p.read_bytes().count(b"\n") for p in (server.cwd / "monitoring").rglob("*.log"))
        print(f"bentoml  prediction log: {lines:,} lines in its monitoring files, for about "
              f"{server.result['rows']:,} rows scored", flush=True)


def profile_tidal(server: Server, load: LoadGenerator, single: list[dict[str, float]],
                  batch: list[dict[str, float]], folder: Path) -> list[str]:
    """Two py-spy profiles of tidal's server: single rows at concurrency 8, then 1,000-row requests."""
    body, many = server.body(single), records_body(batch)
    lines = profile(server, 8.0, folder, "single rows, c=8 (wrk)",
                    lambda: load.run(server.port, server.path, body, connections=8, seconds=8.0))
    return lines + profile(server, 5.0, folder, "1,000-row requests, sequential",
                           lambda: post_for(server.url + server.path, many, 5.0))


# ---------------------------------------------------------------- report

def report(servers: list[Server], load: LoadGenerator, seconds: float) -> None:
    print(f"\nsingle-row POSTs, {load.name}, {seconds:g} s per concurrency; 1,000-row request: median and p99 of "
          "50 sequential requests (http.client); sustained: median of 1,000-row requests back to back for "
          f"{SUSTAINED_S:g} s; procs: processes in the server's tree (one serving worker each)\n")
    head = (f"{'server':<8} {'procs':>5} {'req/s c=1':>10} {'req/s c=8':>10} {'p50 c=8':>9} {'p99 c=8':>9} "
            f"{'CPU/req':>9} {'1000 rows':>10} {'p99':>8} {'sustained':>10}")
    print(head)
    print("-" * len(head))
    for s in servers:
        r = s.result
        if not r.get("c8"):
            print(f"{s.name:<8} not measured: {r.get('error', '?')}")
            continue
        batch = r.get("batch")
        print(f"{s.name:<8} {r['processes']:>5} {r['c1'].rps:>10,.0f} {r['c8'].rps:>10,.0f} {r['c8'].p50_ms:>7.2f}ms "
              f"{r['c8'].p99_ms:>7.2f}ms {r['cpu_ms']:>7.3f}ms "
              + (f"{batch[0]:>8.1f}ms {batch[1]:>6.1f}ms {r['sustained'][0]:>8.1f}ms" if batch else f"{'skipped':>10}"))
    by = {s.name: s.result for s in servers if s.result.get("c8")}
    tidal = by.get("tidal")
    if not tidal:
        return
    print()
    verdicts = []
    for peer, need in (("mlflow", TARGETS["vs_mlflow"]), ("bentoml", TARGETS["vs_bentoml"])):
        if peer not in by:
            verdicts.append(f"NOT measured  >= {need:g}x {peer}: {peer} did not run")
            continue
        ratios = {c: tidal[c].rps / by[peer][c].rps for c in ("c1", "c8")}
        print(f"tidal / {peer:<8} req/s: {ratios['c1']:.1f}x at c=1, {ratios['c8']:.1f}x at c=8; "
              f"{by[peer]['cpu_ms'] / tidal['cpu_ms']:.1f}x less server CPU per request"
              + (f"; 1,000-row median {tidal['batch'][0]:.1f} ms vs {by[peer]['batch'][0]:.1f} ms"
                 if by[peer].get("batch") else ""))
        ok = all(x >= need for x in ratios.values())
        verdicts.append(f"{'met    ' if ok else 'NOT met'}  req/s >= {need:g}x {peer} at c=1 and c=8: "
                        f"{ratios['c1']:.1f}x and {ratios['c8']:.1f}x")
    p99, cpu = tidal["c8"].p99_ms, tidal["cpu_ms"]
    verdicts.append(f"{'met    ' if p99 <= TARGETS['p99_ms'] else 'NOT met'}  p99 at c=8 <= {TARGETS['p99_ms']:g} ms: "
                    f"{p99:.2f} ms")
    verdicts.append(f"{'met    ' if cpu <= TARGETS['cpu_ms'] else 'NOT met'}  server CPU per request <= "
                    f"{TARGETS['cpu_ms']:g} ms: {cpu:.3f} ms")
    median, p99b, _ = tidal["batch"]
    verdicts.append(f"{'met    ' if median <= TARGETS['batch_ms'] else 'NOT met'}  1,000-row request <= "
                    f"{TARGETS['batch_ms']:g} ms, JSON records to /v1/predict: median {median:.1f} ms (p99 "
                    f"{p99b:.1f} ms; server CPU {tidal['batch_cpu_ms']:.1f} ms a request)")
    median, p99b, count = tidal["sustained"]
    verdicts.append(f"{'met    ' if median <= TARGETS['batch_ms'] else 'NOT met'}  1,000-row request <= "
                    f"{TARGETS['batch_ms']:g} ms, JSON records back to back for {SUSTAINED_S:g} s ({count} requests, "
                    f"every row logged): median {median:.1f} ms (p99 {p99b:.1f} ms; server and log writer CPU "
                    f"{tidal['sustained_cpu_ms']:.1f} ms a request)")
    if "tensor_batch" in tidal:
        median, p99b, _ = tidal["tensor_batch"]
        verdicts.append(f"{'met    ' if median <= TARGETS['batch_ms'] else 'NOT met'}  1,000-row request <= "
                        f"{TARGETS['batch_ms']:g} ms, OIP v2 binary tensors: median {median:.1f} ms (p99 {p99b:.1f} ms)")
    print("\ntargets (tidal):")
    for v in verdicts:
        print("  " + v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each measured load run.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Warm-up load before the measured runs.")
    parser.add_argument("--servers", default="tidal,mlflow,bentoml", help="Comma-separated subset to run.")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="auto: wrk if it is (or can be) installed, else the Python load generator.")
    parser.add_argument("--no-profile", action="store_true", help="Skip py-spy's profile of tidal's server.")
    args = parser.parse_args()
    which = [s.strip() for s in args.servers.split(",") if s.strip()]
    started = time.perf_counter()
    wrk = None if args.loadgen == "python" else find_wrk()
    if args.loadgen == "wrk" and not wrk:
        print("wrk is not installed and could not be installed", file=sys.stderr)
        return 1
    print(f"machine {os.cpu_count()} cores, load average {loadavg()} (shared: other work may run beside)")
    with tempfile.TemporaryDirectory(prefix="tidal-bench-serving-") as tmp:
        folder = Path(tmp)
        load = LoadGenerator(wrk=wrk, folder=folder)
        project, model_txt, booster, notes = train_tidal(folder)
        columns = booster.feature_name()
        assert sorted(columns) == sorted(FEATURES), columns
        frame = pq.read_table(DATA, columns=FEATURES).to_pandas()
        picked = np.random.default_rng(7).choice(len(frame), size=1001, replace=False)
        records = [{c: float(v) for c, v in row.items()} for row in frame.iloc[picked].to_dict("records")]
        expected = booster.predict(np.array([[r[c] for c in columns] for r in records]))
        single, batch = records[:1], records[1:]
        servers, setup_notes = make_servers(model_txt=model_txt, spec_path=project.spec_path, columns=columns,
                                            folder=folder, which=which)
        notes += setup_notes
        wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout if wrk else ""
        versions = {"wrk": wrk_version.split("\n")[0] if wrk else "not used", "lightgbm": lgb.__version__}
        for name in ("mlflow", "bentoml"):
            if name in which:
                versions[name] = version_of(PEER_VENVS[name] / "bin" / "python", name)
        print("versions " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        profile_lines: list[str] = []
        for server in servers:
            try:
                t = time.perf_counter()
                server.start(folder)
                print(f"{server.name:<8} ready in {time.perf_counter() - t:.1f} s; validation: {server.validation}; "
                      f"prediction log: {server.logging}", flush=True)
                measure(server, load, single=single, batch=batch, expected=expected, seconds=args.seconds,
                        warmup=args.warmup)
                if server.name == "tidal" and not args.no_profile:
                    profile_lines = profile_tidal(server, load, single, batch, folder)
            except (RuntimeError, subprocess.SubprocessError, OSError, httpx.HTTPError) as exc:
                server.result["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"{server.name:<8} FAILED: {exc}\n{server.log_tail()}", flush=True)
            finally:
                server.stop()
            if server.result.get("c8"):
                print_logged(server, project)
        project.close()
        report(servers, load, args.seconds)
        print(f"machine speed now: msgspec decodes the 1,000-row body in {machine_speed(batch):.2f} ms "
              "(from 1.1 ms to 2.5 ms on one day on this project's 2-core machine: its CPU is shared)")
        for note in notes:
            print(f"note: {note}")
        if profile_lines:
            print("\npy-spy, tidal's server under c=8 load (not part of the measured runs):")
            print("\n".join(profile_lines))
    print(f"\nload average after: {loadavg()}; whole run {time.perf_counter() - started:.0f} s")
    return 0 if all(s.result.get("c8") for s in servers) else 1


if __name__ == "__main__":
    sys.exit(main())
