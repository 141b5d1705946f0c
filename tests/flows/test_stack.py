"""README's "Scaling out" walkthrough, run as it is written there: its three bash blocks (start, use, stop), read from
README.md and run in a fresh project folder with a small `my.yaml` and `hist.csv`. The environment moves the stack
off the default ports and databases (RNNP_STACK_*), so that the test can run beside a user's stack; nothing in the
commands changes.

While `rnn-pipeline train --config my.yaml --set tuning.workers=2` runs, one tuning worker's flow-run process is
killed mid-trial: the study must still complete with every finished trial kept. Then the champion is on the MLflow
server, its prediction goes through the server, the monitoring deployment on the work pool judged a shifted batch
into the stack's monitoring database and retrained through the training deployment on the pool, and `stack down`
leaves no process behind. Skipped, with the reason, where PostgreSQL
is unreachable."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from rnn_pipeline import stack

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DB = os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB)
WHY = stack.reachable(DB)
DEADLINE = 900  # seconds: generous bounds for a loaded machine


def walkthrough() -> dict[str, str]:
    """README's walkthrough blocks: the ```bash block after each `<!-- walkthrough:NAME -->` marker."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Scaling out"):]
    blocks = dict(re.findall(r"<!-- walkthrough:(\w+) -->\n```bash\n(.*?)```", section, flags=re.S))
    assert set(blocks) == {"start", "use", "stop"}, sorted(blocks)
    return blocks


MY_YAML = """\
    name: my-model
    seed: 7
    data: {builtin: seed_sine}
    training: {max_epochs: 2, ensemble_trials: 1}
    tuning: {n_trials: 6, max_epochs: 30, patience: 30, pruner: none,
             space: {cell: [gru], hidden: [16, 32], window: [24, 48], batch_size: [64]}}
    evaluation: {plots: false}
    registry: {floor: []}
    monitoring: {cron: "0 3 1 1 *"}
    """


def bash(script: str, cwd: Path, env: dict, timeout: float = DEADLINE) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def flow_runs(prefect_url: str) -> list[dict]:
    req = urllib.request.Request(f"{prefect_url}/api/flow_runs/filter", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def kill_a_worker_mid_trial(optuna_url: str, stop: threading.Event, found: list) -> None:
    """Watch the study; once a tuning worker's flow-run process has finished a trial and is running another, kill it
    (SIGKILL) and record (study, trial number)."""
    import optuna

    storage = None
    while not stop.is_set() and not found:
        try:
            storage = storage or optuna.storages.RDBStorage(optuna_url)  # one connection pool for the whole poll
            for summary in optuna.get_all_study_summaries(storage):
                trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
                done_by = {t.user_attrs.get("pid") for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
                for t in trials:
                    pid = t.user_attrs.get("pid")
                    if t.state != optuna.trial.TrialState.RUNNING or pid not in done_by:
                        continue
                    try:  # a worker's flow run (not the training run, which resumes the study at the end)
                        if b"prefect.engine" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        os.kill(pid, signal.SIGKILL)
                    except (OSError, ProcessLookupError):  # it ended meanwhile: look again
                        continue
                    found.append((summary.study_name, t.number))
                    break
        except Exception:  # the study's tables do not exist until the training run creates them
            pass
        stop.wait(1.0)
    if storage is not None:
        storage.engine.dispose()


@pytest.mark.skipif(WHY is not None, reason=f"the stack needs PostgreSQL: {WHY}")
def test_the_readme_walkthrough_with_a_tuning_worker_killed_mid_trial(tmp_path):
    import mlflow
    import optuna

    from rnn_pipeline.data.datasets import seed_sine, sine_stream
    from rnn_pipeline.monitoring.store import MonitoringStore

    blocks = walkthrough()
    project = tmp_path / "project"
    project.mkdir()
    (project / "my.yaml").write_text(textwrap.dedent(MY_YAML))
    history = seed_sine()
    history.tail(200).to_csv(project / "hist.csv", index=False)
    incoming = project / ".rnn_pipeline" / "incoming" / "my-model"  # the config's default stores root
    incoming.mkdir(parents=True)
    # a regime shift: the monitoring pass finds drift and retrains through the training deployment, on the pool too
    sine_stream(len(history), 250, seed=1, amplitude=2.0, frequency=1.7).to_csv(incoming / "b001.csv", index=False)

    prefix = f"rnnp_t{uuid.uuid4().hex[:8]}_"
    mlflow_port, prefect_port = stack.free_port(), stack.free_port()
    # nothing of a shell pointed at another stack (RNNP_STACK_FOLDER, the stores' URLs, a Prefect profile) reaches
    # the commands: they act on this folder's stack only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "RNNP_"))}
    folder = project / ".rnn_pipeline" / "stack"  # stack up's default folder, named so that nothing else decides it
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the venv, active
                "RNNP_STACK_FOLDER": str(folder),
                "RNNP_STACK_DB": DB, "RNNP_STACK_PREFIX": prefix, "RNNP_STACK_MLFLOW_PORT": str(mlflow_port),
                "RNNP_STACK_PREFECT_PORT": str(prefect_port),
                # the test's own Prefect home: no profile of this machine's is read
                "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"})
    optuna_url, monitoring_url = f"{DB}/{prefix}optuna", f"{DB}/{prefix}monitoring"
    mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_a_worker_mid_trial, args=(optuna_url, stop, killed), daemon=True)
    state = None
    try:
        # 1. start, status, env; 2. train with two tuning workers (one killed), predict, deploy, one monitoring pass
        watcher.start()
        run = bash(blocks["start"] + blocks["use"], project, env, timeout=2 * DEADLINE)
        stop.set()
        watcher.join(60)
        state = stack.read_state(folder)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
        assert state is not None and state.mlflow_url == mlflow_url and state.prefect_url == prefect_url
        assert set(state.processes) == {"mlflow", "prefect", "worker-1", "worker-2"}

        # the killed worker lost only its running trial; the study completed with every finished trial kept
        assert killed, "no worker trial was seen running"
        storage = optuna.storages.RDBStorage(optuna_url)
        trials = optuna.load_study(study_name=killed[0][0], storage=storage).get_trials(deepcopy=False)
        storage.engine.dispose()
        finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert trials[killed[0][1]].state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE)
        assert [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL] in ([], [killed[0][1]])
        assert len(finished) >= 6
        assert len({t.user_attrs["pid"] for t in finished}) >= 2  # the trials ran in more than one process
        runs = flow_runs(prefect_url)
        workers = {r["name"]: r["state_type"] for r in runs if r["name"].startswith("tune-worker")}
        assert sorted(workers.values()) == ["COMPLETED", "CRASHED"], workers

        # the champion is on the MLflow server, its trials nested under its run, its artifacts through the server
        client = mlflow.MlflowClient(mlflow_url, registry_uri=mlflow_url)
        v = client.get_model_version("my-model", "1")  # the walkthrough's training (the retrain below adds one)
        nested = client.search_runs([client.get_run(v.run_id).info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{v.run_id}'")
        assert len([r for r in nested if r.info.status == "FINISHED"]) == len(finished)
        assert list((folder / "artifacts").rglob("MLmodel"))
        assert "window_id,value_h1" in run.stdout  # the prediction's CSV

        # the monitoring deployment ran on a worker, in the project folder, against the stack's monitoring database
        mon = [r for r in runs if r["deployment_id"] and r["state_type"] == "COMPLETED"
               and r["parameters"].get("config", "").endswith("my.yaml") and "training_deployment" in r["parameters"]]
        assert len(mon) == 1, [(r["name"], r["state_type"]) for r in runs]
        assert (incoming / "processed" / "b001.csv").exists()
        store = MonitoringStore(monitoring_url)
        try:
            rows = store.history("my-model")
        finally:
            store.dispose()
        assert len(rows) == 1 and rows.iloc[0]["verdict"] in ("drift", "degraded"), rows.T
        assert str(rows.iloc[0]["action"]).startswith("retrain →"), rows.T
        champion = client.get_model_version_by_alias("my-model", "champion").version
        assert champion == rows.iloc[0]["new_champion_version"] and client.get_model_version("my-model", "2")
        retrains = [r for r in runs if r["deployment_id"] and str(r["parameters"].get("reason", "")).startswith(
            "monitoring:") and r["state_type"] == "COMPLETED"]
        assert len(retrains) == 1, [(r["name"], r["state_type"], r["parameters"].get("reason")) for r in runs]
    finally:
        stop.set()
        # 3. stop
        down = bash(blocks["stop"], project, env)
        state = state or stack.read_state(folder)
        subprocess.run([sys.executable, "-m", "flows.cli", "stack", "down", "--drop"], cwd=project, env=env,
                       capture_output=True, timeout=DEADLINE)  # and remove the test's databases
    assert down.returncode == 0, down.stderr
    conn = stack._connect(DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))
            assert cur.fetchall() == []  # `down --drop` after `down` removed the databases
    finally:
        conn.close()
    pids = list(state.processes.values()) if state else []
    assert not any(stack._members(p) for p in pids)  # no process of the stack is left
    assert not any(stack.descendants(p) for p in pids)  # nor any flow run one of them started
    status = bash("rnn-pipeline stack status", project, env)
    assert status.returncode == 1, status.stdout  # nothing runs
