"""`rnn-pipeline deploy`: keep the pipeline running on schedules.

Schedules need a real Prefect API (the ephemeral one cannot schedule). Without PREFECT_API_URL, a local Prefect
server is started, bound to 127.0.0.1, with its database under the pipeline's root; then this process serves two
deployments until Ctrl-C: monitoring on the configured interval or cron, and training (on demand, and on
`monitoring.training_cron` when set). The monitoring deployment retrains through the training deployment, which
runs one flow at a time.
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

from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import PipelineError

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


def serve(config: str, cfg: PipelineConfig) -> None:
    """Serve the monitoring and training deployments from this process until interrupted."""
    from prefect import serve as prefect_serve

    from .monitoring import monitoring_flow
    from .training import training_flow

    mon_name, train_name = deployment_names(cfg)
    param = config_parameter(config)
    m = cfg.monitoring
    schedule = {"cron": m.cron} if m.cron else {"interval": timedelta(seconds=m.interval_seconds or 3600)}
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    # one monitoring pass at a time: a run the schedule starts while a pass is still going is cancelled, not queued
    # (a schedule faster than its passes must not pile up processes); the store's lock stays as a second defence
    one_pass = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    monitoring = monitoring_flow.to_deployment(
        name=mon_name, parameters={"config": param, "training_deployment": f"{TRAINING_FLOW}/{train_name}"},
        concurrency_limit=one_pass,
        description=f"judge new batches of {cfg.name}; retrain through {TRAINING_FLOW}/{train_name} on drift",
        tags=["rnn-pipeline", cfg.name], **schedule)
    # one training run at a time too (the store's per-model lock is the second defence): a late cron run, or a
    # retrain requested while one is still training, is cancelled and says so in the monitoring record
    training = training_flow.to_deployment(
        name=train_name, parameters={"config": param}, concurrency_limit=one_pass,
        description=f"train, gate and register {cfg.model_name}", tags=["rnn-pipeline", cfg.name],
        **({"cron": m.training_cron} if m.training_cron else {}))
    prefect_serve(monitoring, training)
