"""The model service's figures (`rnn-pipeline serve`), measured on this machine.

1. A champion of the seed task: the built-in `seed_sine` config trained with the CLI into this benchmark's own
   stores (`.rnn_pipeline/bench_serving`, or --root); later runs reuse it.
2. `rnn-pipeline serve` started as a subprocess on 127.0.0.1 (a free port), ready when GET /health answers 200.
3. Client overhead: the same load generator against a stub HTTP server (a separate process that answers every
   request at once with a canned /predict body), so the figures below can be read net of the client. The
   generator is a minimal HTTP/1.1 client on asyncio streams (uvloop when installed) with keep-alive
   connections; httpx.AsyncClient is measured beside it for comparison.
4. Latency: an OPEN-LOOP generator, POST /predict with one seed window (50 values of the seed series) at a steady
   100 requests/s whatever the responses do (requests are sent at their scheduled times, on as many keep-alive
   connections as are needed). Latency counts from the SCHEDULED send time (never earlier than the actual send) to
   the last byte of the response, so time spent queueing (in the client, the kernel or the server) counts.
   --requests (default 6000) requests, after a warm-up of --warmup requests that are not counted.
   Targets: p50 <= 10 ms, p99 <= 50 ms, 0 errors
   (an error is a non-200 answer, a connection error or no answer within 10 s).
5. Max sustained throughput: the same open loop stepped up (100, 200, 300, 400, 600, 800, 1000, ... req/s,
   --step-seconds each) until two steps in a row miss (or one reaches under 80% of its rate); the figure is the
   highest rate whose achieved rate (answers per second between the first scheduled send and the last answer) is
   within 5% of the target with p99 < 100 ms and no errors.
6. Fuzzing: `schemathesis run` with the not_a_server_error check (--fuzz-examples per operation, --fuzz-seed), over
   the service's /openapi.json as published (every operation), then over /predict with histories narrowed to the
   served model's shape (so that generated histories reach the model, not only the length check): operations,
   requests sent and 5xx answers (target 0), counted by schemathesis and by the service's own GET /stats.

Client and server share the machine's cores, and anything else running competes with them: before each measurement
the script waits (up to --quiet-wait seconds) for other processes to go quiet, and every measurement records the
cores used by the server, the client and everything else (from /proc), and the server's CPU per request. Slow
answers (over 50 ms) are reported as bursts: a pause in the server (e.g. a garbage collection) shows as one burst.

A summary table is printed and the figures are written to <root>/serving.json. The service is stopped at the end,
also on Ctrl-C or failure; its log is <root>/serve.log, schemathesis' reports are under <root>/schemathesis/.

    .venv/bin/python benchmarks/serving.py [--requests 6000] [--step-seconds 10] [--fuzz-examples 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / ".rnn_pipeline" / "bench_serving"
MODEL = "seed_sine"
TIMEOUT_S = 10.0
MAX_CONNECTIONS = 512
KEEPALIVE_IDLE_S = 4.0  # below uvicorn's timeout_keep_alive (5 s)
TARGETS = {"p50_ms": 10.0, "p99_ms": 50.0, "errors": 0}
STEP_P99_MS = 100.0
SLOW_MS = 50.0
STEP_RATES = (100, 200, 300, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000)


# ---- the champion and the service ---------------------------------------------------------------------------------
def clean_env(root: Path) -> dict:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_HOME": str(root / "prefect"),
           "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return env


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "rnn-pipeline"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def champion_version(root: Path) -> str | None:
    if not (root / "mlflow.db").exists():
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{root / 'mlflow.db'}"
    try:
        return str(mlflow.MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(MODEL, "champion").version)
    except MlflowException:
        return None


def ensure_champion(root: Path) -> dict:
    """The seed task's config with this benchmark's stores; trained once, reused afterwards."""
    import yaml

    from rnn_pipeline.config import load_config, merge

    root.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((REPO / "rnn_pipeline" / "configs" / "seed_sine.yaml").read_text())
    path = root / "seed_sine.yaml"
    path.write_text(yaml.safe_dump(merge(base, {"stores": {"root": str(root)}})))
    load_config(path)  # fail fast on a broken config
    version = champion_version(root)
    if version is not None:
        return {"config": str(path), "champion_version": version, "trained_now": False, "train_seconds": None}
    print(f"[serving] no champion in {root}: training the seed task (rnn-pipeline train, a few minutes) ...",
          flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([*cli(), "train", "--config", str(path)], cwd=REPO, env=clean_env(root),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"training failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    version = champion_version(root)
    if version is None:
        raise SystemExit(f"training finished but {MODEL} has no champion in {root}")
    return {"config": str(path), "champion_version": version, "trained_now": True,
            "train_seconds": round(time.perf_counter() - t0, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CpuMeter:
    """Where the machine's CPU went between start and stop, in cores: the given processes (the client, the
    service) and everything else (other work on the machine competes with the figures)."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), {k: self._proc(p) for k, p in pids.items()}

    @staticmethod
    def _busy() -> float:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return float("nan")
        return float(sum(f[:3]) + sum(f[5:8]))  # user nice system (idle iowait) irq softirq steal

    @staticmethod
    def _proc(pid: int) -> float:
        try:
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return float("nan")
        return float(int(rest[11]) + int(rest[12]))  # utime + stime (all threads)

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        cores = lambda j: round(j / self.TICK / wall, 3) if wall > 0 and j == j else None  # noqa: E731
        own = {k: cores(self._proc(p) - self.own0[k]) for k, p in self.pids.items()}
        total = cores(self._busy() - self.busy0)
        others = (round(max(0.0, total - sum(v for v in own.values() if v)), 3) if total is not None else None)
        return {**{f"{k}_cores": v for k, v in own.items()}, "other_processes_cores": others,
                "machine_busy_cores": total}


def wait_quiet(pids: dict[str, int], max_wait: float, threshold: float = 0.25) -> dict:
    """Wait (up to max_wait seconds) until other processes use under `threshold` cores over a 2 s sample."""
    t0 = time.perf_counter()
    while True:
        m = CpuMeter(pids)
        time.sleep(2.0)
        others = m.stop()["other_processes_cores"]
        waited = time.perf_counter() - t0
        if others is None or others < threshold or waited >= max_wait:
            quiet = others is None or others < threshold
            if not quiet:
                print(f"[serving] WARNING: other processes use {others} cores; measuring anyway (figures are "
                      "pessimistic)", flush=True)
            return {"waited_s": round(waited, 1), "other_processes_cores": others, "quiet": quiet}


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict | None]:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, None
    finally:
        c.close()


class Service:
    """`rnn-pipeline serve` in a subprocess (its own session, so that we alone decide when it stops)."""

    def __init__(self, config: str, root: Path):
        self.config, self.root = config, root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "serve.log"
        self.start_seconds: float | None = None

    def start(self, timeout: float = 180.0) -> Service:
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*cli(), "serve", "--config", self.config, "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=REPO, env=clean_env(self.root),
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited with {self.proc.returncode} before it was ready:\n"
                                 f"{self.log_path.read_text()[-3000:]}")
            try:
                if http_get(self.port, "/health", 2.0)[0] == 200:
                    self.start_seconds = round(time.perf_counter() - t0, 1)
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the service did not answer /health within {timeout:.0f}s; log: {self.log_path}")

    def stop(self) -> int | None:
        """Ctrl-C first (uvicorn shuts down: lifespan, inference log flushed), then harder."""
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


STUB = r"""
import asyncio, sys
body = sys.argv[2].encode()
head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\n\r\n")
async def handle(reader, writer):
    try:
        while True:
            h = await reader.readuntil(b"\r\n\r\n")
            n = 0
            for line in h.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            if n:
                await reader.readexactly(n)
            writer.write(head + body)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=2048)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
asyncio.run(main())
"""


@contextlib.contextmanager
def stub_server(body: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STUB, str(port), body], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        proc.stdout.readline()
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the load generator -------------------------------------------------------------------------------------------
class HttpError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection: a request out, a response in (Content-Length or chunked)."""

    def __init__(self, reader, writer):
        self.reader, self.writer, self.alive = reader, writer, True
        self.last_used = time.perf_counter()

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = None, False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif k == b"connection" and v.strip().lower() == b"close":
                self.alive = False
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in parts)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            self.alive = False
        return status, body

    def close(self):
        self.alive = False
        self.writer.close()


class RawClient:
    """A pool of keep-alive connections: the most recently used idle one is reused, else a new one is opened (up to
    a cap; beyond it a request waits, and the wait counts in its latency). Like any keep-alive client it does not
    reuse a connection the server has closed or is about to close: uvicorn closes connections idle for 5 s
    (timeout_keep_alive), so one idle for KEEPALIVE_IDLE_S or more is dropped, as is one the server already shut."""

    name = "asyncio streams (minimal HTTP/1.1)"

    def __init__(self, port: int, max_connections: int = MAX_CONNECTIONS):
        self.port, self.idle, self.opened, self.dropped_idle = port, [], 0, 0
        self.slots = asyncio.Semaphore(max_connections)

    def _reusable(self) -> Conn | None:
        now = time.perf_counter()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.last_used < KEEPALIVE_IDLE_S and not conn.reader.at_eof():
                return conn
            conn.close()
            self.dropped_idle += 1
        return None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        raw = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
        async with self.slots:
            conn = self._reusable()
            if conn is None:
                conn = Conn(*await asyncio.open_connection("127.0.0.1", self.port))
                self.opened += 1
            try:
                status, data = await conn.exchange(raw)
            except BaseException:
                conn.close()
                raise
            if conn.alive:
                conn.last_used = time.perf_counter()
                self.idle.append(conn)
            else:
                conn.close()
            return status, data

    async def aclose(self):
        for c in self.idle:
            c.close()
        self.idle.clear()


class HttpxClient:
    name = "httpx.AsyncClient"

    def __init__(self, port: int, max_connections: int = MAX_CONNECTIONS):
        import httpx

        self.port = port
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S, trust_env=False,
                                        limits=httpx.Limits(max_connections=max_connections,
                                                            max_keepalive_connections=max_connections))
        self.opened = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self.client.post(path, content=body, headers={"content-type": "application/json"})
        return r.status_code, r.content

    async def aclose(self):
        await self.client.aclose()


@dataclass
class Run:
    rate: float
    n: int
    latencies_ms: list = field(default_factory=list)   # answered with 200, from the scheduled send time
    send_lag_ms: list = field(default_factory=list)    # actual send - scheduled send (the client's own lateness)
    errors: dict = field(default_factory=dict)
    first_scheduled: float = 0.0
    last_done: float = 0.0
    client_cpu_s: float = 0.0
    connections: int | None = None
    slow: list = field(default_factory=list)           # (seconds into the run, latency ms) over SLOW_MS
    client_gc_max_ms: float = 0.0

    def bursts(self) -> list[dict]:
        """Slow answers grouped into bursts (gaps under 0.5 s): a pause in the server shows as one burst."""
        out = []
        for t, ms in sorted(self.slow):
            if out and t - out[-1]["last"] < 0.5:
                b = out[-1]
                b["n"], b["max_ms"], b["last"] = b["n"] + 1, max(b["max_ms"], ms), t
            else:
                out.append({"at_s": t, "n": 1, "max_ms": ms, "last": t})
        return [{"at_s": round(b["at_s"], 2), "requests": b["n"], "max_ms": round(b["max_ms"], 1)} for b in out]

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms)
        lag = np.asarray(self.send_lag_ms)
        ok = len(lat)
        span = self.last_done - self.first_scheduled
        pct = (lambda a, q: round(float(np.percentile(a, q)), 3) if len(a) else None)
        return {"target_rate": self.rate, "requests": self.n, "ok": ok, "errors": sum(self.errors.values()),
                "error_kinds": dict(self.errors),
                "achieved_rate": round(ok / span, 1) if span > 0 else None,
                "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                "max_ms": round(float(lat.max()), 3) if ok else None, "mean_ms": round(float(lat.mean()), 3) if ok
                else None, "send_lag_p50_ms": pct(lag, 50), "send_lag_p99_ms": pct(lag, 99),
                "send_lag_max_ms": round(float(lag.max()), 3) if len(lag) else None,
                "client_cpu_ms_per_request": round(self.client_cpu_s * 1000 / self.n, 3) if self.n else None,
                "client_gc_pause_max_ms": round(self.client_gc_max_ms, 2),
                "connections_opened": self.connections, f"over_{SLOW_MS:g}ms": len(self.slow),
                "slow_bursts": self.bursts()[:20]}


class GcWatch:
    """The client's own garbage-collection pauses while it generates load (they would delay sends)."""

    def __init__(self):
        self.pauses: list[float] = []
        self._t = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((time.perf_counter() - self._t) * 1000)

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)


async def open_loop(client, body: bytes, rate: float, n: int, path: str = "/predict") -> Run:
    """n requests at `rate` per second on a fixed schedule, whatever the answers do."""
    run = Run(rate, n)
    clock = time.perf_counter

    async def one(t_sched: float):
        try:
            async with asyncio.timeout(TIMEOUT_S):
                t_send = clock()
                run.send_lag_ms.append((t_send - t_sched) * 1000)
                t0 = max(t_sched, t_send)  # a timer may fire a fraction of a ms early: never count from before a send
                status, _ = await client.post(path, body)
        except TimeoutError:
            kind = "timeout"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            kind = type(e).__name__
        else:
            if status == 200:
                done = clock()
                ms = (done - t0) * 1000
                run.latencies_ms.append(ms)
                if ms > SLOW_MS:
                    run.slow.append((t_sched - run.first_scheduled, ms))
                run.last_done = max(run.last_done, done)
                return
            kind = f"HTTP {status}"
        run.errors[kind] = run.errors.get(kind, 0) + 1
        run.last_done = max(run.last_done, clock())

    cpu0 = time.process_time()
    start = clock() + 0.05
    run.first_scheduled = start
    tasks = []
    with GcWatch() as gcw:
        for i in range(n):
            t_sched = start + i / rate
            delay = t_sched - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t_sched)))
        await asyncio.gather(*tasks)
    run.client_cpu_s = time.process_time() - cpu0
    run.client_gc_max_ms = max(gcw.pauses, default=0.0)
    run.connections = getattr(client, "opened", None)
    return run


async def measure(port: int, body: bytes, rate: float, n: int, warmup: int = 0, kind: str = "raw",
                  pids: dict | None = None) -> dict:
    client = (RawClient if kind == "raw" else HttpxClient)(port)
    try:
        if warmup:
            await open_loop(client, body, rate, warmup)
        meter = CpuMeter({"client": os.getpid(), **(pids or {})})
        out = (await open_loop(client, body, rate, n)).summary()
        out["cpu"] = cpu = meter.stop()
        if cpu.get("server_cores") is not None and out["achieved_rate"]:
            out["server_cpu_ms_per_request"] = round(cpu["server_cores"] * 1000 / out["achieved_rate"], 3)
        if getattr(client, "dropped_idle", None) is not None:
            out["keepalive_connections_dropped_idle"] = client.dropped_idle
        return out
    finally:
        await client.aclose()


def event_loop_runner():
    try:
        import uvloop

        return uvloop.run, "uvloop"
    except ImportError:
        return asyncio.run, "asyncio"


# ---- fuzzing ------------------------------------------------------------------------------------------------------
def model_shaped(raw: dict, columns: list[str], window: int) -> dict:
    """The published schema with /predict narrowed to what the served model reads (every input column, window to
    window + 5 steps, 1 to 4 series), so that generated histories reach the model instead of the length check."""
    raw = json.loads(json.dumps(raw))
    schemas = raw["components"]["schemas"]
    schemas["SeriesInput"]["properties"]["history"] = {
        "type": "object", "additionalProperties": False, "required": columns,
        "properties": {c: {"type": "array", "items": {"type": "number"}, "minItems": window,
                           "maxItems": window + 5} for c in columns}}
    schemas["PredictRequest"] = {
        "type": "object", "additionalProperties": False, "required": ["series"],
        "properties": {"series": {"type": "array", "minItems": 1, "maxItems": 4,
                                  "items": {"$ref": "#/components/schemas/SeriesInput"}}}}
    return raw


def fuzz(port: int, root: Path, examples: int, seed: int) -> dict:
    """schemathesis over the live service with the not_a_server_error check, in two passes: the schema as published
    (every operation), and /predict with histories of the served model's shape."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        raise SystemExit("schemathesis is not installed (pip install -e '.[dev]')")
    base = f"http://127.0.0.1:{port}"
    meta = http_get(port, "/metadata")[1]
    raw = http_get(port, "/openapi.json")[1]
    shaped = root / "openapi.model_shaped.json"
    shaped.write_text(json.dumps(model_shaped(raw, meta["input_columns"], meta["window"])))
    passes = {"published": [f"{base}/openapi.json"],
              "model_shaped": [str(shaped), "--url", base, "--include-path", "/predict"]}
    out = {"max_examples": examples, "seed": seed, "check": "not_a_server_error", "passes": {}}
    for name, target in passes.items():
        report = root / "schemathesis" / name
        shutil.rmtree(report, ignore_errors=True)
        before = http_get(port, "/stats")[1]
        cmd = [exe, "run", *target, "--checks", "not_a_server_error", "--max-examples", str(examples),
               "--seed", str(seed), "--workers", "1", "--no-color", "--report", "json,ndjson",
               "--report-dir", str(report), "--request-timeout", "30", "--suppress-health-check", "all"]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                             env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"})
        seconds = time.perf_counter() - t0
        after = http_get(port, "/stats")[1]
        (report / "console.log").write_text(run.stdout + run.stderr)
        summary = next((json.loads(p.read_text()) for p in report.glob("json-*.json")), {})
        statuses, errors_5xx = {}, []
        for path in report.glob("*.ndjson"):
            for line in path.read_text().splitlines():
                responses(json.loads(line), statuses, errors_5xx)
        out["passes"][name] = {
            "exit_code": run.returncode, "seconds": round(seconds, 1),
            "operations_tested": (summary.get("operations") or {}).get("tested"),
            "operations": sorted({op for op, _ in statuses}),
            "test_cases_generated": (summary.get("test_cases") or {}).get("generated"),
            "requests_sent": sum(statuses.values()),
            "responses_by_status": {f"{op} {st}": n for (op, st), n in sorted(statuses.items())},
            "schemathesis_failures": summary.get("failures"), "schemathesis_errors": summary.get("errors"),
            "responses_5xx": sum(n for (_, st), n in statuses.items() if st >= 500),
            "server_5xx": after["responses"].get("5xx", 0) - before["responses"].get("5xx", 0),
            "server_requests": after["requests"] - before["requests"] - 1,  # less our own GET /stats
            "first_5xx": errors_5xx[:5]}
    p = out["passes"].values()
    out.update(operations=sorted(set().union(*(x["operations"] for x in p))),
               requests_sent=sum(x["requests_sent"] for x in p),
               test_cases_generated=sum(x["test_cases_generated"] or 0 for x in p),
               predict_200=sum(x["responses_by_status"].get("POST /predict 200", 0) for x in p),
               responses_5xx=sum(x["responses_5xx"] for x in p), server_5xx=sum(x["server_5xx"] for x in p),
               exit_codes=[x["exit_code"] for x in p])
    out["ok"] = out["responses_5xx"] == 0 and out["server_5xx"] == 0 and all(c == 0 for c in out["exit_codes"])
    return out


def responses(event: dict, statuses: dict, errors_5xx: list) -> None:
    """One ndjson event: a finished scenario carries the requests it sent and the answers (bodies base64)."""
    import base64

    data = event.get("ScenarioFinished")
    if not isinstance(data, dict):
        return
    rec = data.get("recorder") or {}
    for inter in (rec.get("interactions") or {}).values():
        resp, req = (inter or {}).get("response"), (inter or {}).get("request") or {}
        if not resp:
            continue
        key = (rec.get("label") or "?", resp["status_code"])  # the schema operation (other methods: 405 probes)
        statuses[key] = statuses.get(key, 0) + 1
        if resp["status_code"] >= 500:
            body = (req.get("body") or {}).get("$base64")
            errors_5xx.append({"method": req.get("method"), "uri": req.get("uri"), "status": resp["status_code"],
                               "body": base64.b64decode(body).decode("utf-8", "replace")[:2000] if body else None})


# ---- the run ------------------------------------------------------------------------------------------------------
def seed_window() -> dict:
    from rnn_pipeline.data.datasets import seed_sine

    values = seed_sine()["value"].to_numpy()[-50:]
    return {"series": [{"history": {"value": [float(v) for v in values]}}]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="stores of the benchmark's champion")
    ap.add_argument("--requests", type=int, default=6000, help="measured requests at 100 req/s (>= 5000 for the "
                                                               "target figures)")
    ap.add_argument("--rate", type=float, default=100.0, help="rate of the latency test, req/s")
    ap.add_argument("--warmup", type=int, default=300, help="requests sent before the latency test, not counted")
    ap.add_argument("--step-seconds", type=float, default=10.0, help="duration of each throughput step")
    ap.add_argument("--max-rate", type=float, default=max(STEP_RATES), help="highest throughput step")
    ap.add_argument("--client-check", type=int, default=1000, help="requests per client in the overhead check "
                                                                   "(0 skips it)")
    ap.add_argument("--fuzz-examples", type=int, default=50, help="schemathesis --max-examples per operation "
                                                                  "(0 skips fuzzing)")
    ap.add_argument("--fuzz-seed", type=int, default=42)
    ap.add_argument("--quiet-wait", type=float, default=120.0, help="before each measurement, wait up to this "
                                                                    "many seconds for other processes to go quiet")
    args = ap.parse_args()

    def _terminate(signum, frame):  # Ctrl-C and SIGTERM: the service is stopped on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also where a background launch left SIGINT ignored
    root = args.root.resolve()
    t_all = time.perf_counter()
    results: dict = {"machine": {"cpus": os.cpu_count()}}
    results["champion"] = ensure_champion(root)
    print(f"[serving] champion {MODEL} v{results['champion']['champion_version']} in {root}", flush=True)
    request = seed_window()
    body = json.dumps(request).encode()
    run_loop, loop_name = event_loop_runner()
    gc.collect()
    gc.freeze()  # the client's start-up heap (numpy, pandas, mlflow...) is never rescanned: no GC pauses in the sender
    results["client"] = {"implementation": RawClient.name, "event_loop": loop_name, "timeout_s": TIMEOUT_S,
                         "max_connections": MAX_CONNECTIONS, "client_heap_frozen": True,
                         "latency_measured_from": "the scheduled send time (open loop: queueing counts)"}

    service = Service(results["champion"]["config"], root)
    try:
        service.start()
        status, health = http_get(service.port, "/health")
        results["service"] = {"port": service.port, "start_seconds": service.start_seconds,
                              "model": health["model"]}
        print(f"[serving] service up on 127.0.0.1:{service.port} in {service.start_seconds}s "
              f"(v{health['model']['version']})", flush=True)
        c = RawClient(service.port)
        status, answer = run_loop(_once(c, body))
        if status != 200:
            raise SystemExit(f"POST /predict answered {status}: {answer[:500]!r}")
        results["service"]["example_answer"] = json.loads(answer)
        canned = answer.decode()

        if args.client_check:
            n = args.client_check
            print(f"[serving] client overhead: {n} requests at {args.rate:g} req/s against a stub server ...",
                  flush=True)
            with stub_server(canned) as (port, pid):
                quiet = wait_quiet({"server": service.proc.pid, "stub": pid}, args.quiet_wait)
                results["client_overhead"] = {
                    "requests": n, "against": "stub HTTP server in its own process (answers at once)",
                    "machine_before": quiet,
                    "raw": run_loop(measure(port, body, args.rate, n, warmup=100,
                                            pids={"stub": pid, "server": service.proc.pid})),
                    "httpx": run_loop(measure(port, body, args.rate, n, warmup=100, kind="httpx",
                                              pids={"stub": pid, "server": service.proc.pid}))}

        print(f"[serving] latency: {args.warmup} warm-up + {args.requests} requests at {args.rate:g} req/s, open "
              f"loop (~{(args.warmup + args.requests) / args.rate:.0f}s) ...", flush=True)
        server = {"server": service.proc.pid}
        quiet = wait_quiet(server, args.quiet_wait)
        s0 = http_get(service.port, "/stats")[1]
        lat = run_loop(measure(service.port, body, args.rate, args.requests, warmup=args.warmup, pids=server))
        lat["machine_before"] = quiet
        s1 = http_get(service.port, "/stats")[1]
        lat["server_side_ms"] = s1["predict_latency_ms"]  # in-app time of the last (up to) 5000 /predict calls
        lat["server_5xx"] = s1["responses"].get("5xx", 0) - s0["responses"].get("5xx", 0)
        lat["targets_met"] = (lat["p50_ms"] is not None and lat["p50_ms"] <= TARGETS["p50_ms"]
                              and lat["p99_ms"] <= TARGETS["p99_ms"] and lat["errors"] == TARGETS["errors"])
        results["latency"] = lat
        print(f"  p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms, "
              f"errors {lat['errors']}, achieved {lat['achieved_rate']} req/s"
              + ("; slow bursts " + ", ".join(f"{b['requests']} req up to {b['max_ms']} ms at {b['at_s']}s"
                                               for b in lat["slow_bursts"]) if lat["slow_bursts"] else ""),
              flush=True)

        steps, best, misses = [], None, 0
        for rate in [r for r in STEP_RATES if r <= args.max_rate]:
            n = int(rate * args.step_seconds)
            quiet = wait_quiet(server, args.quiet_wait)  # also lets the previous step drain
            r = run_loop(measure(service.port, body, rate, n, pids=server))
            r["machine_before"] = quiet
            r["passed"] = bool(r["errors"] == 0 and r["achieved_rate"] is not None
                               and r["achieved_rate"] >= 0.95 * rate and r["p99_ms"] < STEP_P99_MS)
            steps.append(r)
            pauses = "; slow bursts " + ", ".join(f"{b['requests']} req up to {b['max_ms']} ms at {b['at_s']}s"
                                                  for b in r["slow_bursts"][:3]) if r["slow_bursts"] else ""
            c = r["cpu"]
            print(f"[serving] step {rate:>5} req/s: achieved {r['achieved_rate']}, p50 {r['p50_ms']} ms, "
                  f"p99 {r['p99_ms']} ms, errors {r['errors']}; cores: server {c['server_cores']}, client "
                  f"{c['client_cores']}, others {c['other_processes_cores']} -> {'ok' if r['passed'] else 'MISSED'}"
                  f"{pauses}", flush=True)
            if r["passed"]:
                best, misses = rate, 0
            else:
                misses += 1
                if misses == 2 or (r["achieved_rate"] or 0) < 0.8 * rate:  # two misses in a row, or saturated
                    break
        results["throughput"] = {"criteria": f"achieved >= 95% of target, p99 < {STEP_P99_MS:g} ms, no errors; "
                                             "stepping stops after two misses in a row or below 80% achieved",
                                 "step_seconds": args.step_seconds, "steps": steps,
                                 "missed_below_max": [x["target_rate"] for x in steps
                                                      if not x["passed"] and best and x["target_rate"] < best],
                                 "max_sustained_rate": best}

        if args.fuzz_examples:
            print(f"[serving] schemathesis: {args.fuzz_examples} examples per operation, seed {args.fuzz_seed} ...",
                  flush=True)
            results["fuzz"] = fuzz(service.port, root, args.fuzz_examples, args.fuzz_seed)
        status, health = http_get(service.port, "/health")
        results["service"]["inference_log"] = health.get("inference_log")
        results["service"]["stats"] = http_get(service.port, "/stats")[1]
    finally:
        code = service.stop()
        print(f"[serving] service stopped (exit code {code})", flush=True)
    results["service"]["exit_code"] = code
    results["warmup"] = args.warmup
    results["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    out = root / "serving.json"
    out.write_text(json.dumps(results, indent=2))
    report(results, out)


async def _once(client, body):
    try:
        return await client.post("/predict", body)
    finally:
        await client.aclose()


def report(r: dict, out: Path) -> None:
    lat, thr, fz = r["latency"], r["throughput"], r.get("fuzz")
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    cpu = lat["cpu"]
    print("\n== summary: rnn-pipeline serve, seed_sine champion "
          f"v{r['champion']['champion_version']}, {r['machine']['cpus']} CPUs shared by client and server ==")
    print(f"open loop at {lat['target_rate']:g} req/s, {lat['requests']} requests after {r['warmup']} warm-up; latency "
          "from each request's SCHEDULED send time to its last byte: queueing counts")
    rows = [("figure", "measured", "target", "")]
    rows += [("p50 latency (ms)", lat["p50_ms"], f"<= {TARGETS['p50_ms']:g}", ok(lat["p50_ms"] <= TARGETS["p50_ms"])),
             ("p90 latency (ms)", lat["p90_ms"], "", ""),
             ("p99 latency (ms)", lat["p99_ms"], f"<= {TARGETS['p99_ms']:g}", ok(lat["p99_ms"] <= TARGETS["p99_ms"])),
             ("max latency (ms)", lat["max_ms"], "", f"{lat[f'over_{SLOW_MS:g}ms']} requests over {SLOW_MS:g} ms"),
             ("errors", f"{lat['errors']} of {lat['requests']}", "0", ok(lat["errors"] == 0)),
             ("achieved rate (req/s)", lat["achieved_rate"], f"{lat['target_rate']:g}", ""),
             ("server in-app p50/p99 (ms)", f"{lat['server_side_ms'].get('p50', 0):.2f} / "
                                            f"{lat['server_side_ms'].get('p99', 0):.2f}", "", "GET /stats"),
             ("client send lag p50/p99 (ms)", f"{lat['send_lag_p50_ms']} / {lat['send_lag_p99_ms']}", "",
              f"max {lat['send_lag_max_ms']} ms; client GC pauses up to {lat['client_gc_pause_max_ms']} ms"),
             ("cores: server / client / others", f"{cpu['server_cores']} / {cpu['client_cores']} / "
                                                 f"{cpu['other_processes_cores']}", "",
              f"during the latency test; server CPU {lat.get('server_cpu_ms_per_request')} ms/request"),
             ("max sustained rate (req/s)", thr["max_sustained_rate"], "", thr["criteria"])]
    co = r.get("client_overhead")
    if co:
        for k in ("raw", "httpx"):
            c = co[k]
            rows.append((f"client alone, {k} (ms p50/p99)", f"{c['p50_ms']} / {c['p99_ms']}", "",
                         f"vs a stub server; client CPU {c['client_cpu_ms_per_request']} ms/request"))
    if fz:
        rows += [("fuzz: operations", len(fz["operations"]), "", ", ".join(fz["operations"])),
                 ("fuzz: requests sent", fz["requests_sent"], "",
                  f"{fz['test_cases_generated']} test cases, max-examples {fz['max_examples']}, seed {fz['seed']}, "
                  f"{fz['predict_200']} forecasts"),
                 ("fuzz: 5xx (schemathesis / server)", f"{fz['responses_5xx']} / {fz['server_5xx']}", "0",
                  ok(fz["ok"]))]
    w = [max(len(str(x[i])) for x in rows) for i in range(3)]
    for x in rows:
        print(f"{str(x[0]):<{w[0]}}  {str(x[1]):>{w[1]}}  {str(x[2]):<{w[2]}}  {x[3]}")
    print("throughput steps (target -> achieved req/s): " + ", ".join(
        f"{s['target_rate']:g}->{s['achieved_rate']} (p99 {s['p99_ms']} ms"
        f"{', ' + str(s['errors']) + ' errors' if s['errors'] else ''}{'' if s['passed'] else ', missed'})"
        for s in thr["steps"]))
    if lat["slow_bursts"]:
        print("slow answers at 100 req/s came in bursts (a pause in the server): " + ", ".join(
            f"{b['requests']} requests up to {b['max_ms']} ms at {b['at_s']}s" for b in lat["slow_bursts"]))
    met = lat["targets_met"] and (fz is None or fz["ok"])
    print(f"targets {'met' if met else 'NOT met'}; {r['wall_seconds']}s in all; written to {out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted (the service was stopped)") from None
