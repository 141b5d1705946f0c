"""Crash tests (`make faults`): `kill -9` at each phase of training, in a monitoring pass and in a served hot swap
(at the fault points of rnn_pipeline.faults), two training runs at once, and a store deleted or damaged between runs,
on SQLite and on the machine's PostgreSQL (skipped, saying why, where there is none). After each: no finished trial is
lost, no version without a gate decision carries an alias, the aliases point at complete versions, no process is left,
and the next run succeeds."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import optuna
import psutil
import pytest
from conftest import REPO, write_config

from rnn_pipeline import faults
from rnn_pipeline.registry import CHALLENGER, CHAMPION, DECISION_TAG, alias_version

pytestmark = [pytest.mark.slow, pytest.mark.faults]
CLI = [sys.executable, "-m", "flows.cli"]
NAME = "crash"


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request, tmp_path):
    """The three store URLs: SQLite files under the root, or three fresh PostgreSQL databases."""
    if request.param == "sqlite":
        root = tmp_path / "state"
        return {"mlflow": f"sqlite:///{root / 'mlflow.db'}", "optuna": f"sqlite:///{root / 'optuna.db'}",
                "monitoring": f"sqlite:///{root / 'monitoring.db'}"}
    m, o, mon = request.getfixturevalue("pg_databases")
    return {"mlflow": m, "optuna": o, "monitoring": mon}


def config(tmp_path, urls, extra: str = "") -> str:
    stores = (f"stores: {{root: '{tmp_path / 'state'}', mlflow_uri: '{urls['mlflow']}', "
              f"optuna_url: '{urls['optuna']}', monitoring_url: '{urls['monitoring']}'}}\n")
    return str(write_config(tmp_path, name=NAME, n_trials=3, trial_epochs=3, epochs=3, extra=stores + extra,
                            empty_store=urls["mlflow"].startswith("sqlite")))


def cli(args, env, fault: str | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**env, faults.ENV: fault} if fault else env
    return subprocess.run(CLI + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def last_run(tmp_path) -> dict:
    return json.loads((tmp_path / "state" / "last_run.json").read_text())


def mlflow_client(urls):
    return mlflow.MlflowClient(urls["mlflow"], registry_uri=urls["mlflow"])


def complete_trials(urls, study: str) -> dict:
    s = optuna.load_study(study_name=study, storage=urls["optuna"])
    return {t.number: t.params for t in s.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE}


def assert_aliases_on_complete_versions(urls):
    client = mlflow_client(urls)
    for alias in (CHAMPION, CHALLENGER):
        v = alias_version(client, NAME, alias)
        if v is not None:
            tags = client.get_model_version(NAME, v).tags
            assert DECISION_TAG in tags and "incomplete" not in tags, (alias, v, tags)


def assert_consistent(urls, cfg: str):
    """What must hold once the next run has finished: the aliases on complete versions, every version either decided
    or tagged incomplete, no run left RUNNING, no process of this config alive."""
    assert_aliases_on_complete_versions(urls)
    client = mlflow_client(urls)
    for v in client.search_model_versions(f"name = '{NAME}'"):
        assert DECISION_TAG in v.tags or v.tags.get("incomplete") == "true", (v.version, v.tags)
    exp = client.get_experiment_by_name(NAME)
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    left = [p for p in psutil.process_iter(["cmdline"]) if cfg in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]


@pytest.mark.parametrize("phase", ["tuning", "final_fit", "registration"])
def test_kill_9_during_training(tmp_path, urls, server_env, phase):
    cfg = config(tmp_path, urls)
    first = cli(["train", "--config", cfg], server_env)
    assert first.returncode == 0, first.stderr[-3000:]
    champion = last_run(tmp_path)["champion_version"]

    killed = cli(["train", "--config", cfg, "--seed", "8"], server_env, fault=phase)  # a new study
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_aliases_on_complete_versions(urls)
    assert alias_version(mlflow_client(urls), NAME, CHAMPION) == champion  # the champion never moved
    studies = set(optuna.get_all_study_names(urls["optuna"])) - {last_run(tmp_path)["study"]}
    [study] = studies
    kept = complete_trials(urls, study)
    assert (len(kept) == 1) if phase == "tuning" else (len(kept) == 3)

    again = cli(["train", "--config", cfg, "--seed", "8"], server_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "an earlier run of 'crash' stopped part-way" in again.stderr
    s = last_run(tmp_path)
    assert s["study"] == study and s["resumed_trials"] >= len(kept)
    now = complete_trials(urls, study)
    assert all(now[n] == p for n, p in kept.items())  # no finished trial lost
    if phase == "registration":  # the half-registered version is marked, and the next number is used
        client = mlflow_client(urls)
        half = client.get_model_version(NAME, str(int(s["model_version"]) - 1))
        assert half.tags["incomplete"] == "true" and DECISION_TAG not in half.tags
    assert_consistent(urls, cfg)


def test_kill_9_during_a_monitoring_pass(tmp_path, urls, server_env):
    from rnn_pipeline.data.datasets import sine_stream
    from rnn_pipeline.monitoring.store import MonitoringStore

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = config(tmp_path, urls, extra=f"monitoring: {{incoming: '{incoming}', drift_threshold: auto, "
                                       "drift_share: 0.5, error_ratio: 1.5, retrain: {policy: recent, "
                                       "recent_points: 1000}}\n")
    assert cli(["train", "--config", cfg], server_env).returncode == 0
    sine_stream(1000, 500, seed=1, amplitude=1.6, frequency=2.0).to_csv(incoming / "b1.csv", index=False)
    killed = cli(["monitor", "--config", cfg], server_env, fault="monitoring")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    store = MonitoringStore(urls["monitoring"])
    try:
        assert store.history(NAME)["action"].tolist() == ["retrain started"]
        again = cli(["monitor", "--config", cfg], server_env)  # the dead pass's lock is taken over at once
        assert again.returncode == 0, again.stderr[-3000:]
        assert "stopped while retraining after b1.csv" in again.stderr
        assert store.history(NAME)["action"].tolist() == ["retrain interrupted"]

        sine_stream(1500, 500, seed=2, amplitude=1.6, frequency=2.0).to_csv(incoming / "b2.csv", index=False)
        third = cli(["monitor", "--config", cfg], server_env)
        assert third.returncode == 0, third.stderr[-3000:]
        h = store.history(NAME)
        assert h["batch"].tolist() == ["b1.csv", "b2.csv"]
        assert h["action"].iloc[1] in ("retrain → promoted", "retrain → kept"), h["action"].tolist()
    finally:
        store.dispose()
    assert_consistent(urls, cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cfg, env, port, fault=None):
    env = {**env, faults.ENV: fault} if fault else env
    proc = subprocess.Popen(CLI + ["serve", "--config", cfg, "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return proc, json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the service did not come up")


def test_kill_9_during_a_hot_swap(tmp_path, server_env):
    root = tmp_path / "state"
    urls = {"mlflow": f"sqlite:///{root / 'mlflow.db'}", "optuna": f"sqlite:///{root / 'optuna.db'}",
            "monitoring": f"sqlite:///{root / 'monitoring.db'}"}
    cfg = config(tmp_path, urls, extra="serving: {poll_seconds: 0.5}\n")
    assert cli(["train", "--config", cfg], server_env).returncode == 0
    assert cli(["train", "--config", cfg, "--seed", "8"], server_env).returncode == 0
    port = _free_port()
    proc, health = _serve(cfg, server_env, port, fault="hot_swap")
    assert health["model"]["version"] == "1", health
    mlflow_client(urls).set_registered_model_alias(NAME, CHAMPION, "2")  # the alias moves: the service swaps
    assert proc.wait(timeout=120) == -signal.SIGKILL

    proc, health = _serve(cfg, server_env, port)  # the next start serves the new champion
    try:
        assert health["model"]["version"] == "2", health
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert_consistent(urls, cfg)


def test_two_training_runs_at_once(tmp_path, urls, server_env):
    """Started together: one trains, the other waits for it (--wait) and then trains on the same study; neither
    fails the other's trials, each registers one version."""
    cfg = config(tmp_path, urls)
    procs = [subprocess.Popen(CLI + ["train", "--config", cfg, "--wait"], cwd=REPO, env=server_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    assert sum("waiting for the training run of 'crash'" in e for e in errs) == 1
    client = mlflow_client(urls)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [1, 2]
    [study] = optuna.get_all_study_names(urls["optuna"])
    states = [t.state for t in optuna.load_study(study_name=study, storage=urls["optuna"]).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 0 and len(states) == 3
    assert_consistent(urls, cfg)


def test_a_store_deleted_or_damaged_between_runs_is_one_line_and_changes_nothing(tmp_path, server_env):
    root = tmp_path / "state"
    urls = {"mlflow": f"sqlite:///{root / 'mlflow.db'}", "optuna": f"sqlite:///{root / 'optuna.db'}",
            "monitoring": f"sqlite:///{root / 'monitoring.db'}"}
    cfg = config(tmp_path, urls)
    assert cli(["train", "--config", cfg], server_env).returncode == 0
    before = (root / "optuna.db").read_bytes()

    good = (root / "mlflow.db").read_bytes()
    (root / "mlflow.db").unlink()
    out = cli(["train", "--config", cfg, "--seed", "8"], server_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"MLflow store {root / 'mlflow.db'} is missing" in out.stderr and "make clean" in out.stderr
    assert not (root / "mlflow.db").exists() and (root / "optuna.db").read_bytes() == before

    damaged = bytearray(good)
    mid = 4096 * (len(damaged) // 4096 // 2)
    damaged[mid:mid + 4096] = b"\xff" * 4096
    (root / "mlflow.db").write_bytes(bytes(damaged))
    out = cli(["train", "--config", cfg, "--seed", "8"], server_env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"MLflow store {root / 'mlflow.db'}" in out.stderr and "make clean" in out.stderr
    assert (root / "optuna.db").read_bytes() == before  # refused before any training

    (root / "mlflow.db").write_bytes(good)  # restored: the next run goes on from the registry's history
    out = cli(["train", "--config", cfg, "--seed", "8"], server_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert last_run(tmp_path)["model_version"] == "2"
    assert_consistent(urls, cfg)
