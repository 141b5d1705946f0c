"""The server-backed stack, started natively: an MLflow tracking server on PostgreSQL serving its artifacts, a Prefect
server on PostgreSQL, and a process work pool with N workers (`rnn-pipeline stack up|status|down`, `make stack`).

Everything it starts runs in its own process group, recorded in `<folder>/stack.json` (pids, URLs, databases), so
that `down` stops exactly what `up` started, and `status` checks each part. The databases (`<prefix>mlflow`,
`<prefix>prefect`, `<prefix>optuna`, `<prefix>monitoring`) are created on the PostgreSQL server at `db_url` when
missing and kept on `down` (`down --drop` removes them, also after a plain `down`). Nothing here is used by the
embedded default: `make run` needs no server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rnn_pipeline.errors import PipelineError

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432"
STATE_FILE = "stack.json"
START_SECONDS = 180  # a server that does not answer its health check in this long is a failed start
# how often each worker asks for runs to start (Prefect's default is 10 s): a tuning worker run waits for the next
# poll before it starts, and a study's workers start together, so the wait is part of every parallel study's time
QUERY_SECONDS = 2


@dataclass
class StackState:
    """What `up` started, as `status` and `down` read it back."""

    folder: str
    db_url: str
    databases: dict[str, str]  # role (mlflow, prefect, optuna, monitoring) -> database name
    mlflow_url: str
    prefect_url: str
    pool: str
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid (= its process group id)

    @property
    def optuna_url(self) -> str:
        return f"{self.db_url}/{self.databases['optuna']}"

    @property
    def monitoring_url(self) -> str | None:
        name = self.databases.get("monitoring")  # None in a state file written before the stack had it
        return f"{self.db_url}/{name}" if name else None

    def stores(self) -> dict:
        """The config's `stores` section that points at this stack."""
        return {"mlflow_uri": self.mlflow_url, "optuna_url": self.optuna_url,
                **({"monitoring_url": self.monitoring_url} if self.monitoring_url else {})}

    def env(self) -> dict[str, str]:
        """The environment a client (a laptop, a worker) needs to use this stack: the Prefect API, and the stores a
        config that names none of its own takes from the environment (rnn_pipeline.stores.resolve)."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_url, "PREFECT_API_URL": f"{self.prefect_url}/api",
                "RNNP_OPTUNA_URL": self.optuna_url,
                **({"RNNP_MONITORING_URL": self.monitoring_url} if self.monitoring_url else {})}


# ---- PostgreSQL ----------------------------------------------------------------------------------------------------
def _connect(db_url: str, database: str = "postgres"):
    import psycopg2

    try:
        conn = psycopg2.connect(f"{db_url}/{database}", connect_timeout=5)
    except psycopg2.OperationalError as e:
        raise PipelineError(f"PostgreSQL at {db_url} is not reachable ({str(e).strip().splitlines()[0]}): start it, "
                            "or give its URL with --db") from None
    conn.autocommit = True
    return conn


def reachable(db_url: str = DEFAULT_DB) -> str | None:
    """None when PostgreSQL at `db_url` answers; else why not (for skips and errors)."""
    try:
        _connect(db_url).close()
        return None
    except PipelineError as e:
        return str(e)


def ensure_databases(db_url: str, names: list[str]) -> None:
    conn = _connect(db_url)
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_databases(db_url: str, names: list[str]) -> None:
    conn = _connect(db_url)
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


# ---- processes -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(name: str, args: list[str], folder: Path, env: dict[str, str]) -> int:
    """A process in its own session (so that `down` stops it and its children as one group), its output in
    `<folder>/logs/<name>.log`."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **env}, start_new_session=True)
    return p.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def ours(pid: int) -> bool:
    """Whether `pid` is still a process of the stack (its command line names mlflow or prefect): a pid recorded
    before a reboot may belong to anything now, and is never signalled."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return alive(pid) and ("mlflow" in cmd or "prefect" in cmd)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (by parent links in /proc): a Prefect worker starts each flow run in a
    session of its own, outside the worker's process group."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().split(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _stop(pgid: int, grace: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.waitpid(pgid, os.WNOHANG)  # reap our own child, when this process started it
            except ChildProcessError:
                pass
            if not _members(pgid):  # every process of the group is gone (a zombie leader counts as gone)
                return
            time.sleep(0.2)


def _members(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_healthy(name: str, url: str, pid: int, folder: Path, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):  # it exited: whatever answers on the port is not it
            break
        if http_ok(url):
            return
        time.sleep(0.5)
    log = folder / "logs" / f"{name}.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise PipelineError(f"{name} did not answer {url} within {seconds:.0f} s (its log: {log}):\n{tail}")


# ---- the stack -----------------------------------------------------------------------------------------------------
def read_state(folder: str | Path) -> StackState | None:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    return StackState(**json.loads(path.read_text()))


def _write_state(state: StackState) -> None:
    path = Path(state.folder) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def prefect_env(state: StackState) -> dict[str, str]:
    """What a Prefect client or worker of this stack needs (its own PREFECT_HOME, so that no local profile or
    ephemeral server interferes)."""
    return {"PREFECT_API_URL": f"{state.prefect_url}/api", "PREFECT_HOME": str(Path(state.folder) / "prefect-home"),
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"}


def up(folder: str | Path, db_url: str = DEFAULT_DB, workers: int = 2, mlflow_port: int = 5000,
       prefect_port: int = 4200, pool: str = "rnn-pipeline", prefix: str = "rnnp_",
       artifacts: str | None = None, log=print) -> StackState:
    """Start the stack (see the module docstring); a running one (its state file's processes alive) is an error."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    old = read_state(folder)
    if old is not None and any(ours(p) for p in old.processes.values()):
        raise PipelineError(f"a stack is already running from {folder} (rnn-pipeline stack status; stack down first)")
    busy = [f"{name} port {port}" for name, port in (("MLflow", mlflow_port), ("Prefect", prefect_port))
            if not port_free(port)]
    if busy:
        raise PipelineError(f"{' and '.join(busy)} already in use (another stack, or another server): stop it, or "
                            "give other ports (--mlflow-port, --prefect-port)")
    databases = {role: f"{prefix}{role}" for role in ("mlflow", "prefect", "optuna", "monitoring")}
    ensure_databases(db_url, list(databases.values()))
    state = StackState(str(folder), db_url, databases, f"http://127.0.0.1:{mlflow_port}",
                       f"http://127.0.0.1:{prefect_port}", pool)
    _write_state(state)  # from here on, `down` (or the cleanup below) sees whatever has started
    try:
        dest = artifacts or str(folder / "artifacts")
        state.processes["mlflow"] = _start("mlflow", [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
            "--backend-store-uri", f"{db_url}/{databases['mlflow']}", "--serve-artifacts",
            "--artifacts-destination", dest, "--workers", "1"], folder,
            # MLflow's job runner (three huey consumers polling for GenAI jobs) serves nothing this pipeline uses
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        _write_state(state)
        pg = db_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        penv = {**prefect_env(state), "PREFECT_API_DATABASE_CONNECTION_URL": f"{pg}/{databases['prefect']}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
                # the UI calls the API on 4200 unless told its port
                "PREFECT_UI_API_URL": f"{state.prefect_url}/api"}
        penv.pop("PREFECT_API_URL")  # the server itself
        state.processes["prefect"] = _start("prefect", [
            sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            folder, penv)
        _write_state(state)
        log(f"waiting for MLflow ({state.mlflow_url}) and Prefect ({state.prefect_url}) to answer")
        _wait_healthy("mlflow", f"{state.mlflow_url}/health", state.processes["mlflow"], folder)
        _wait_healthy("prefect", f"{state.prefect_url}/api/health", state.processes["prefect"], folder)
        env = prefect_env(state)
        created = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "process",
                                  "--overwrite"], env={**os.environ, **env}, capture_output=True, text=True,
                                 timeout=120)
        if created.returncode != 0:
            raise PipelineError(f"could not create the work pool {pool!r}: {created.stdout[-500:]}{created.stderr[-500:]}")
        for i in range(workers):
            state.processes[f"worker-{i + 1}"] = _start(f"worker-{i + 1}", [
                sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", f"worker-{i + 1}",
                "--type", "process"], folder, {**env, "PREFECT_WORKER_QUERY_SECONDS": str(QUERY_SECONDS)})
            _write_state(state)
        _wait_workers(state, workers)
    except BaseException:
        try:  # what has started, from memory (the state file may lag behind)
            _stop_all(state)
            (folder / STATE_FILE).unlink(missing_ok=True)
        except Exception as e:  # the cause of the failed start stays the error
            log(f"cleaning up after the failed start: {type(e).__name__}: {e}")
        raise
    return state


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_workers(state: StackState, n: int, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(online_workers(state)) >= n:
            return
        dead = [k for k, p in state.processes.items() if k.startswith("worker") and not alive(p)]
        if dead:
            raise PipelineError(f"{dead[0]} exited at start (its log: {Path(state.folder) / 'logs' / dead[0]}.log)")
        time.sleep(1.0)
    raise PipelineError(f"fewer than {n} worker(s) of pool {state.pool!r} reported online within {seconds:.0f} s")


def online_workers(state: StackState) -> list[str]:
    """The names of the pool's workers that the Prefect server sees online."""
    req = urllib.request.Request(f"{state.prefect_url}/api/work_pools/{state.pool}/workers/filter", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            rows = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return []
    return sorted(w["name"] for w in rows if w.get("status") == "ONLINE")


def status(folder: str | Path) -> dict:
    """Each part's health: its process, its HTTP health check, and the workers the Prefect server sees online."""
    state = read_state(folder)
    if state is None or not state.processes:  # never started, or stopped (its databases kept for a later --drop)
        return {"running": False, "folder": str(folder), "parts": {}}
    parts = {}
    for name, pid in state.processes.items():
        parts[name] = {"pid": pid, "alive": alive(pid)}
    parts.get("mlflow", {})["healthy"] = http_ok(f"{state.mlflow_url}/health")
    parts.get("prefect", {})["healthy"] = http_ok(f"{state.prefect_url}/api/health")
    online = online_workers(state) if parts.get("prefect", {}).get("healthy") else []
    for name, p in parts.items():
        if name.startswith("worker"):
            p["healthy"] = p["alive"] and name in online
    db = reachable(state.db_url)
    return {"running": all(p.get("healthy", p["alive"]) for p in parts.values()) and db is None,
            "folder": state.folder, "mlflow_url": state.mlflow_url, "prefect_url": state.prefect_url,
            "pool": state.pool, "postgres": "ok" if db is None else db, "databases": state.databases,
            "parts": parts, "env": state.env(), "stores": state.stores()}


def _stop_all(state: StackState, log=lambda *_: None) -> list[str]:
    """Stop the stack's processes (workers first, with the flow runs they started); an error names what is left."""
    order = sorted(state.processes, key=lambda k: (not k.startswith("worker"), k))
    for name in order:
        pid = state.processes[name]
        if not ours(pid) and not _members(pid):
            log(f"{name} (pid {pid}) is not running")
            continue
        groups = {_pgid(p) for p in descendants(pid)} - {None, pid}  # flow runs in sessions of their own
        _stop(pid)
        for g in groups:
            _stop(g)
        log(f"stopped {name} (pid {pid})")
    left = [n for n in order if _members(state.processes[n])]
    if left:
        raise PipelineError(f"still running after down: {', '.join(left)} (their pids are in "
                            f"{Path(state.folder) / STATE_FILE}; kill them, then run stack down again)")
    return order


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def down(folder: str | Path, drop: bool = False, log=print) -> list[str]:
    """Stop everything `up` started (workers first, then the servers); with `drop`, remove its databases. Returns the
    names stopped."""
    state = read_state(folder)
    if state is None:
        log(f"no stack state in {folder}: nothing to stop")
        return []
    order = _stop_all(state, log)
    if drop:
        drop_databases(state.db_url, list(state.databases.values()))
        (Path(folder) / STATE_FILE).unlink(missing_ok=True)
    else:  # what it ran is gone; which databases it made stays known, so that `down --drop` later removes them
        state.processes = {}
        _write_state(state)
    return order
