"""The server-backed stack, as README's "Scaling out" starts it: `rnn-pipeline stack up` (MLflow and Prefect servers
on PostgreSQL, a process work pool with a worker), a training run against it (the flow run on the Prefect server,
the champion and its artifacts on the MLflow server), a prediction from that champion, `stack status`, and
`stack down` leaving no process behind. Skipped, with the reason, where PostgreSQL is unreachable."""

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid

import pytest

from rnn_pipeline import stack

pytestmark = pytest.mark.slow
DB = os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB)
WHY = stack.reachable(DB)


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.skipif(WHY is not None, reason=f"the stack needs PostgreSQL: {WHY}")
def test_the_stack_comes_up_trains_serves_and_goes_down_leaving_nothing(tmp_path):
    folder, prefix = tmp_path / "stack", f"rnnp_t{uuid.uuid4().hex[:8]}_"
    mport, pport = stack.free_port(), stack.free_port()
    up = cli("stack", "up", "--folder", folder, "--workers", 1, "--mlflow-port", mport, "--prefect-port", pport,
             "--prefix", prefix, "--db", DB)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = stack.read_state(folder)
        status = cli("stack", "status", "--folder", folder, "--json")
        assert status.returncode == 0, status.stdout
        s = json.loads(status.stdout)
        assert s["running"] and s["postgres"] == "ok" and set(s["parts"]) == {"mlflow", "prefect", "worker-1"}
        # a config pointed at the stack, as `stack up` prints it; the shell's environment too
        stores = json.loads(up.stdout.split("stores: ", 1)[1].splitlines()[0])
        config = tmp_path / "tiny.yaml"
        config.write_text(textwrap.dedent(f"""\
            name: stacktiny
            seed: 7
            data: {{builtin: seed_sine}}
            training: {{max_epochs: 2, ensemble_trials: 1}}
            tuning: {{n_trials: 2, max_epochs: 1}}
            evaluation: {{plots: false}}
            registry: {{floor: []}}
            stores: {{root: "{tmp_path / 'state'}", mlflow_uri: "{stores['mlflow_uri']}",
                      optuna_url: "{stores['optuna_url']}"}}
            """))
        env = stack.prefect_env(state)
        train = cli("train", "--config", config, env=env)
        assert train.returncode == 0, train.stderr[-3000:]
        import mlflow

        client = mlflow.MlflowClient(state.mlflow_url, registry_uri=state.mlflow_url)
        champion = client.get_model_version_by_alias("stacktiny", "champion")
        assert champion.version == "1"
        assert list((folder / "artifacts").rglob("MLmodel"))  # the artifacts went through the server, to its folder
        req = urllib.request.Request(f"{state.prefect_url}/api/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"}, method="POST")
        runs = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        from rnn_pipeline.data.datasets import seed_sine

        seed_sine().tail(60).to_csv(tmp_path / "hist.csv", index=False)
        pred = cli("predict", "--config", config, "--input", tmp_path / "hist.csv")
        assert pred.returncode == 0 and pred.stdout.startswith("window_id,value_h1"), pred.stderr[-2000:]
    finally:
        down = cli("stack", "down", "--folder", folder, "--drop")
    assert down.returncode == 0, down.stderr
    pids = list((state.processes if up.returncode == 0 else {}).values())
    assert pids and not any(stack._members(p) for p in pids)  # no process of the stack is left
    assert cli("stack", "status", "--folder", folder).returncode == 1  # nothing runs
