"""`rnn-pipeline deploy`: keep the pipeline running on schedules.

Schedules need a real Prefect API (the ephemeral one cannot schedule). Without PREFECT_API_URL, a local Prefect
server is started, bound to 127.0.0.1, with its database under the pipeline's root; then this process serves two
deployments until Ctrl-C: monitoring on the configured interval or cron, and training (on demand, and on
`monitoring.training_cron` when set). The monitoring deployment retrains through the training deployment, which
runs one flow at a time.

With `--pool NAME` (the server-backed stack, README "Scaling out"), the same two deployments go to that work pool of
the Prefect server at PREFECT_API_URL instead, and the pool's workers run them; the command returns once they are
registered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from flows.runtime import WORKDIR_ENV
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
MONITORING_FLOW, TRAINING_FLOW = "rnn-monitoring", "rnn-training"


def deployment_names(cfg: PipelineConfig) -> tuple[str, str]:
    return f"{cfg.name}-monitoring", f"{cfg.name}-training"


def config_parameter(config: str) -> str:
    """A config file becomes an absolute path (the served flows may run from another folder); a built-in name stays."""
    p = Path(config)
    return str(p.resolve()) if p.is_file() else config


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise PipelineError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise PipelineError(f"the Prefect server at {api_url} was not healthy after {timeout:.0f}s")


def start_server(prefect_home: Path, port: int, log_file: Path, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on 127.0.0.1:port in its own process group; returns (process, API URL)."""
    if not port_free(port):
        raise PipelineError(f"port {port} on 127.0.0.1 is in use: pick another with --port, or point "
                            f"PREFECT_API_URL at the server that runs there")
    api = f"http://127.0.0.1:{port}/api"
    # the UI calls the API at the URL it is given (default port 4200): on any other port it must be told
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api, "PREFECT_SERVER_UI_API_URL": api}
    env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).parent / "prefect"
    cmd = [str(exe) if exe.exists() else "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
           "--analytics-off"]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api, timeout, proc)
    except BaseException:
        stop_server(proc)
        raise
    return proc, api


def stop_server(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def entrypoint(flow_) -> str:
    """A flow's entrypoint in this checkout ('flows/<module>.py:<function>'), for deployments run from source."""
    import inspect

    return f"{Path(inspect.getsourcefile(flow_.fn)).resolve().relative_to(REPO).as_posix()}:{flow_.fn.__name__}"


def _deployments(config: str, cfg: PipelineConfig) -> dict:
    """What both ways of deploying share: each deployment's flow and keyword arguments (name, parameters, schedule,
    concurrency limit, description, tags)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from .monitoring import monitoring_flow
    from .training import training_flow

    mon_name, train_name = deployment_names(cfg)
    param = config_parameter(config)
    m = cfg.monitoring
    schedule = {"cron": m.cron} if m.cron else {"interval": timedelta(seconds=m.interval_seconds or 3600)}
    # one run at a time: a run the schedule starts while a pass is still going is cancelled, not queued (a schedule
    # faster than its passes must not pile up processes); the store's lock stays as a second defence. Training too
    # (the store's per-model lock is the second defence): a late cron run, or a retrain requested while one is still
    # training, is cancelled and says so in the monitoring record
    one_run = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return {
        "monitoring": (monitoring_flow, dict(
            name=mon_name, parameters={"config": param, "training_deployment": f"{TRAINING_FLOW}/{train_name}"},
            concurrency_limit=one_run, tags=["rnn-pipeline", cfg.name], **schedule,
            description=f"judge new batches of {cfg.name}; retrain through {TRAINING_FLOW}/{train_name} on drift")),
        "training": (training_flow, dict(
            name=train_name, parameters={"config": param}, concurrency_limit=one_run, tags=["rnn-pipeline", cfg.name],
            description=f"train, gate and register {cfg.model_name}",
            **({"cron": m.training_cron} if m.training_cron else {}))),
    }


def serve(config: str, cfg: PipelineConfig) -> None:
    """Serve the monitoring and training deployments from this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*[f.to_deployment(**kw) for f, kw in _deployments(config, cfg).values()])


def deploy_to_pool(config: str, cfg: PipelineConfig, stores, pool: str) -> list[str]:
    """The monitoring and training deployments on the work pool `pool` of a Prefect server (the stack's), run from
    this checkout by the pool's workers; returns their '<flow>/<deployment>' names. A worker's flow run sees what this
    shell sees: it runs in this folder (RNNP_WORKDIR: relative paths and stores roots mean the same) with the stores
    resolved here (the environment's MLFLOW_TRACKING_URI, RNNP_OPTUNA_URL and RNNP_MONITORING_URL included)."""
    from prefect.client.orchestration import get_client

    from flows.tune_worker import api_url, online_workers

    if not api_url():
        raise PipelineError(f"deploying on the work pool '{pool}' needs the Prefect server that owns it: "
                            "eval \"$(rnn-pipeline stack env)\" (or export PREFECT_API_URL)")
    with get_client(sync_client=True) as client:
        online_workers(client, pool)  # a missing pool is an error that says what to do
    env = {WORKDIR_ENV: str(Path.cwd()), "MLFLOW_TRACKING_URI": stores.mlflow_uri,
           "RNNP_OPTUNA_URL": stores.optuna_url, "RNNP_MONITORING_URL": stores.monitoring_url}
    names = []
    for flow_, kw in _deployments(config, cfg).values():
        flow_.from_source(source=str(REPO), entrypoint=entrypoint(flow_)).deploy(
            work_pool_name=pool, job_variables={"env": env}, print_next_steps=False, ignore_warnings=True, **kw)
        names.append(f"{flow_.name}/{kw['name']}")
    return names
