"""The server-backed stack, as README's "Scaling out" starts it: `rnn-pipeline stack up` (MLflow and Prefect servers
on PostgreSQL, a process work pool with two workers), a training run against it (the flow run on the Prefect server,
the champion and its artifacts on the MLflow server), a prediction from that champion, a training run whose tuning
runs on two workers sharing one study with one worker killed mid-trial, `stack status`, and `stack down` leaving no
process behind. Skipped, with the reason, where PostgreSQL is unreachable."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid

import pytest

from rnn_pipeline import stack

pytestmark = pytest.mark.slow
DB = os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB)
WHY = stack.reachable(DB)
DEADLINE = 600  # seconds: generous bounds for a loaded machine


def cli(*args, env=None, timeout=DEADLINE):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    if WHY is not None:
        pytest.skip(f"the stack needs PostgreSQL: {WHY}")
    folder = tmp_path_factory.mktemp("stack") / "stack"
    prefix = f"rnnp_t{uuid.uuid4().hex[:8]}_"
    state = None
    try:
        up = cli("stack", "up", "--folder", folder, "--workers", 2, "--mlflow-port", stack.free_port(),
                 "--prefect-port", stack.free_port(), "--prefix", prefix, "--db", DB, timeout=2 * DEADLINE)
        state = stack.read_state(folder)
        assert up.returncode == 0, up.stdout + up.stderr
        yield folder, state, json.loads(up.stdout.split("stores: ", 1)[1].splitlines()[0])
    finally:
        state = state or stack.read_state(folder)
        down = cli("stack", "down", "--folder", folder, "--drop")
        assert down.returncode == 0, down.stderr
        pids = list(state.processes.values()) if state else []
        assert not any(stack._members(p) for p in pids)  # no process of the stack is left
        assert not any(stack.descendants(p) for p in pids)  # nor any flow run one of them started
        assert cli("stack", "status", "--folder", folder).returncode == 1  # nothing runs


def write_config(path, name, stores, tuning):
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        seed: 7
        data: {{builtin: seed_sine}}
        training: {{max_epochs: 2, ensemble_trials: 1}}
        tuning: {tuning}
        evaluation: {{plots: false}}
        registry: {{floor: []}}
        stores: {{root: "{path.parent / 'state'}", mlflow_uri: "{stores['mlflow_uri']}",
                  optuna_url: "{stores['optuna_url']}"}}
        """))
    return path


def flow_runs(state):
    req = urllib.request.Request(f"{state.prefect_url}/api/flow_runs/filter", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def test_the_stack_is_up_trains_and_serves(running, tmp_path):
    folder, state, stores = running
    status = cli("stack", "status", "--folder", folder, "--json")
    assert status.returncode == 0, status.stdout
    s = json.loads(status.stdout)
    assert s["running"] and s["postgres"] == "ok" and set(s["parts"]) == {"mlflow", "prefect", "worker-1", "worker-2"}
    config = write_config(tmp_path / "tiny.yaml", "stacktiny", stores, "{n_trials: 2, max_epochs: 1}")
    train = cli("train", "--config", config, env=stack.prefect_env(state))
    assert train.returncode == 0, train.stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(state.mlflow_url, registry_uri=state.mlflow_url)
    assert client.get_model_version_by_alias("stacktiny", "champion").version == "1"
    assert list((folder / "artifacts").rglob("MLmodel"))  # the artifacts went through the server, to its folder
    assert "tiny (manual)" in [r["name"] for r in flow_runs(state) if r["state_type"] == "COMPLETED"]
    from rnn_pipeline.data.datasets import seed_sine

    seed_sine().tail(60).to_csv(tmp_path / "hist.csv", index=False)
    pred = cli("predict", "--config", config, "--input", tmp_path / "hist.csv")
    assert pred.returncode == 0 and pred.stdout.startswith("window_id,value_h1"), pred.stderr[-2000:]


def test_two_tuning_workers_share_one_study_and_a_killed_worker_loses_only_its_trial(running, tmp_path):
    """tuning.workers 2: two flow runs on the pool run the trials; one is killed while a trial of its runs. The
    training run still completes the study (the lost trial failed and is redone), keeps every finished trial, logs
    each as a nested run of its own and registers the champion on the MLflow server."""
    import mlflow
    import optuna

    folder, state, stores = running
    config = write_config(tmp_path / "workers.yaml", "stackworkers", stores,
                          "{n_trials: 6, max_epochs: 30, patience: 30, pruner: none, workers: 2}")
    train = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **stack.prefect_env(state)})
    killed, deadline = None, time.monotonic() + DEADLINE
    storage = optuna.storages.RDBStorage(stores["optuna_url"])  # one connection pool for the whole poll
    try:
        while killed is None and time.monotonic() < deadline and train.poll() is None:
            for summary in optuna.get_all_study_summaries(storage):
                study = optuna.load_study(study_name=summary.study_name, storage=storage)
                trials = study.get_trials(deepcopy=False)
                done_by = {t.user_attrs.get("pid") for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
                for t in trials:
                    pid = t.user_attrs.get("pid")
                    # a worker that has finished a trial already, killed during its next one
                    if t.state == optuna.trial.TrialState.RUNNING and pid in done_by and pid != train.pid:
                        try:
                            os.kill(pid, signal.SIGKILL)  # a tuning worker's flow-run process, mid-trial
                        except ProcessLookupError:  # it ended meanwhile: look again
                            continue
                        killed = (summary.study_name, t.number)
                        break
            time.sleep(1.0)
        out, err = train.communicate(timeout=DEADLINE)
    finally:
        if train.poll() is None:
            train.kill()
    assert killed is not None, "no worker trial was seen running"
    assert train.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=killed[0], storage=storage)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # the killed trial alone was lost (unless it finished in the instant before the kill)
    assert trials[killed[1]].state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE)
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL] in ([], [killed[1]])
    assert len(finished) >= 6
    assert len({t.user_attrs["pid"] for t in finished}) >= 2  # the trials ran in more than one process
    runs = {r["name"]: r["state_type"] for r in flow_runs(state) if r["name"].startswith("tune-worker")}
    assert sorted(runs.values()) == ["COMPLETED", "CRASHED"], runs
    client = mlflow.MlflowClient(state.mlflow_url, registry_uri=state.mlflow_url)
    v = client.get_model_version_by_alias("stackworkers", "champion")
    nested = client.search_runs([client.get_run(v.run_id).info.experiment_id],
                                f"tags.mlflow.parentRunId = '{v.run_id}'")
    assert len([r for r in nested if r.info.status == "FINISHED"]) == len(finished)
    storage.engine.dispose()
