"""`rnn-pipeline deploy` against a real Prefect server on 127.0.0.1: the deployments are registered, the scheduled
monitoring run judges a drifted batch and starts the training deployment, which registers a new version."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from conftest import REPO, put_prefect_db
from test_monitoring import NAME, add_batch, history, monitoring_config, registry_state

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_deploy_serves_a_schedule_that_retrains_through_the_training_deployment(tmp_path, prefect_harness,
                                                                               prefect_db_template):
    from flows.training import training_flow

    cfg = monitoring_config(tmp_path, tmp_path / "state", "")
    text = open(cfg).read().replace("drift_share: 0.5", "drift_share: 0.5\n  interval_seconds: 5")
    open(cfg, "w").write(text)
    training_flow(cfg)
    (tmp_path / "incoming").mkdir()
    add_batch(tmp_path, "b001.csv", 1000, amplitude=1.6, frequency=2.0)

    put_prefect_db(prefect_db_template, tmp_path / "state" / "prefect-server")  # deploy's server: migrated already
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "client-home"),
           # faster than the defaults (which schedule and poll every 60 / 10 s)
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "deploy.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "deploy", "--config", cfg, "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            h = history(tmp_path) if (tmp_path / "state" / "monitoring.db").exists() else None
            if h is not None and len(h) and h["action"].iloc[0] not in ("retrain started", "none"):
                break
            time.sleep(2)
        out = (tmp_path / "deploy.log").read_text()
        assert proc.poll() is None, out[-3000:]
        h = history(tmp_path)
        assert h["verdict"].tolist() == ["degraded"], out[-3000:]
        assert h["action"].iloc[0] in ("retrain → promoted", "retrain → kept"), out[-3000:]
        assert registry_state(tmp_path)[0] == [1, 2]

        deployments = {d["id"]: d["name"] for d in api(port, "/deployments/filter", {})}
        assert sorted(deployments.values()) == [f"{NAME}-monitoring", f"{NAME}-training"]
        # the pass records its action in monitoring.db before its flow run reports COMPLETED to the API: on a loaded
        # machine that takes a while, so wait for it (bounded) before reading the runs
        deadline = time.time() + 180
        while True:
            runs = api(port, "/flow_runs/filter", {})
            by = {}
            for r in runs:
                by.setdefault(deployments.get(r["deployment_id"]), []).append(r)
            mon = [r for r in by.get(f"{NAME}-monitoring", []) if r["state_type"] == "COMPLETED"]
            train_done = [r for r in by.get(f"{NAME}-training", []) if r["state_type"] == "COMPLETED"]
            if (mon and train_done) or time.time() > deadline:
                break
            time.sleep(2)
        assert mon and all(r["auto_scheduled"] or r["created_by"] for r in mon)  # started by the schedule
        # a 5 s schedule against a pass that retrains for longer: one pass at a time, never two overlapping, and
        # the runs that came due meanwhile were cancelled rather than queued
        spans = sorted((r["start_time"], r["end_time"]) for r in by[f"{NAME}-monitoring"] if r["start_time"]
                       and r["end_time"] and r["state_type"] == "COMPLETED")
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
        running = [r for r in by[f"{NAME}-monitoring"] if r["state_type"] == "RUNNING"]
        assert len(running) <= 1, running
        assert any(r["state_type"] == "CANCELLED" for r in by[f"{NAME}-monitoring"]), \
            sorted({r["state_type"] for r in by[f"{NAME}-monitoring"]})
        [train] = by[f"{NAME}-training"]
        assert train["state_type"] == "COMPLETED"
        assert train["parameters"]["overrides"]["data"]["path"].endswith(".parquet")
        assert train["parameters"]["reason"] == "monitoring:degraded:b001.csv"
        # the UI on a port other than 4200 calls the API on that port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:
            assert json.loads(r.read())["api_url"] == f"http://127.0.0.1:{port}/api"
        # the flow-run processes the deployment started write to this log (MLflow's line from logging the model is
        # there) without MLflow's type-hint advice: the flows quiet the libraries themselves, not only the CLI
        out = (tmp_path / "deploy.log").read_text()
        assert "Validating input example" in out and "Add type hints" not in out, out[-3000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the server, its workers, flow-run processes
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    # SIGTERM (like Ctrl-C) stops the server it started and every process it started: none is left, re-parented
    assert proc.returncode is not None
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, [(c.pid, c.cmdline()[:4]) for c in left]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still listens after deploy stopped"
