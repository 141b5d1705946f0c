"""The monitoring flow in-process: verdicts ok / drift / degraded, the records of a run (MLflow run, HTML report, store
row), a bad batch quarantined, a repeated batch ignored, retraining that wins and that loses the gate, and two
monitoring runs started together retraining once."""

import json
import shutil
import subprocess
import sys
import textwrap

import mlflow
import pytest
from conftest import REPO, put_mlflow_store

from rnn_pipeline.data.datasets import sine_stream
from rnn_pipeline.monitoring.store import MonitoringStore

pytestmark = pytest.mark.slow
NAME = "mon"


def monitoring_config(folder, state, extra: str = "") -> str:
    """A small GRU on the seed series that retrains in seconds; state in `state`, batches in `folder/incoming`."""
    text = textwrap.dedent(f"""\
        name: {NAME}
        seed: 7
        data: {{builtin: seed_sine}}
        model: {{cell: gru, hidden: 16}}
        training: {{max_epochs: 25, patience: 5, loss_steps: all, lr: 0.01}}
        tuning: {{n_trials: 0}}
        evaluation: {{plots: false}}
        stores: {{root: "{state}"}}
        monitoring:
          incoming: "{folder / 'incoming'}"
          drift_threshold: auto
          drift_share: 0.5
          error_ratio: 1.5
          retrain: {{policy: recent, recent_points: 1000}}
        """)
    path = folder / f"{NAME}.yaml"
    path.write_text(text + textwrap.dedent(extra))
    put_mlflow_store(state)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    """A champion v1 trained once; each test works on its own copy of the stores."""
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("mon-base")
    summary = training_flow(monitoring_config(folder, folder / "state"))
    assert summary["promoted"]
    return folder / "state"


@pytest.fixture
def env(tmp_path, trained):
    shutil.copytree(trained, tmp_path / "state")
    (tmp_path / "incoming").mkdir()

    def config(extra=""):
        return monitoring_config(tmp_path, tmp_path / "state", extra)

    return tmp_path, config


def add_batch(folder, name, start, n=250, **shift):
    sine_stream(start, n, seed=start, **shift).to_csv(folder / "incoming" / name, index=False)


def client(folder):
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def registry_state(folder):
    c = client(folder)
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{NAME}'"))
    return versions, {k: str(v) for k, v in c.get_registered_model(NAME).aliases.items()}


def history(folder):
    store = MonitoringStore(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    try:
        return store.history(NAME)
    finally:
        store.dispose()


def test_a_stationary_batch_is_ok_and_every_record_is_written(env):
    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000)
    summary = monitoring_flow(config())
    [b] = summary["batches"]
    assert b["verdict"] == "ok" and b["action"] == "none" and b["champion_version"] == "1"
    assert b["drift_share"] < 0.5 and 0.5 < b["error_ratio"] < 1.5
    assert b["n_windows"] == 250  # every point of the batch is a forecast target (history supplies the inputs)
    # the store row
    h = history(folder)
    assert h["batch"].tolist() == ["b001.csv"] and h["verdict"].tolist() == ["ok"]
    scores = json.loads(h["feature_scores"].iloc[0])
    assert set(scores) == {"value_level", "value_spread", "value_step", "value_next"}
    # the HTML report under reports/ (beside the dashboard and Evidently's script, shared by the folder's reports),
    # named by a run in the monitoring experiment
    report = folder / "state" / "reports" / NAME
    assert sorted(p.suffix for p in report.iterdir()) == [".html", ".html", ".js"]
    assert b["report_path"].startswith(str(report)) and (report / "index.html").exists()
    c = client(folder)
    run = c.get_run(b["mlflow_run_id"])
    assert c.get_experiment(run.info.experiment_id).name == f"{NAME}-monitoring"
    assert run.data.tags["verdict"] == "ok" and run.data.tags["action"] == "none"
    assert run.data.metrics["drift_share"] == pytest.approx(b["drift_share"])
    assert run.data.metrics["error_ratio"] == pytest.approx(b["error_ratio"])
    assert {"drift_score.value_level", "drift_score.value_step"} <= set(run.data.metrics)
    assert run.data.tags["report_path"] == b["report_path"]
    # the batch left the incoming folder for processed/, and nothing was retrained
    assert (folder / "incoming" / "processed" / "b001.csv").exists()
    assert registry_state(folder) == ([1], {"champion": "1", "challenger": "1"})
    assert monitoring_flow(config())["batches"] == []  # nothing new: nothing judged


def test_a_repeated_batch_is_judged_once(env):
    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000)
    monitoring_flow(config())
    # the same content arrives again under another name
    shutil.copy(folder / "incoming" / "processed" / "b001.csv", folder / "incoming" / "b001-again.csv")
    assert monitoring_flow(config())["batches"] == []
    assert len(history(folder)) == 1
    assert (folder / "incoming" / "processed" / "b001-again.csv").exists()


def test_drift_verdict_from_the_window_features(env):
    """Error check switched off (ratio threshold out of reach): the amplitude and frequency shift is 'drift'."""
    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000, amplitude=1.6, frequency=2.0)
    cfg = _with(config(), {"error_ratio: 1.5": "error_ratio: 1000", "retrain: {": "retrain: {enabled: false, "})
    [b] = monitoring_flow(cfg)["batches"]
    assert b["verdict"] == "drift" and b["drift_share"] >= 0.75 and b["error_ratio"] > 10
    assert b["action"] == "none"  # retraining switched off in this config
    assert registry_state(folder)[0] == [1]


def _with(path, replacements: dict) -> str:
    text = open(path).read()
    for a, b in replacements.items():
        assert a in text, a
        text = text.replace(a, b)
    open(path, "w").write(text)
    return path


def test_a_frequency_change_is_caught_by_the_error_check_and_retraining_promotes(env):
    """Only the dynamics change (same amplitude): with the drift share out of reach, the champion's error on the
    batch flags it. The first retrain's test windows are the 250 new points, which its training windows never saw:
    it loses to persistence by far, so the gate's floor keeps it a challenger even though the old champion does
    worse still. The loop itself (retraining on the most recent points, winning the gate on the newest windows, the
    next batch judged against the new champion) is then checked with the floor off."""
    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000)
    add_batch(folder, "b002.csv", 1250, frequency=2.0)
    cfg = _with(config(), {"drift_share: 0.5": "drift_share: 1.0"})
    first, second = monitoring_flow(cfg)["batches"]
    assert first["verdict"] == "ok"
    assert second["verdict"] == "degraded" and second["error_ratio"] >= 1.5
    assert second["action"] == "retrain → kept" and second["new_version"] == "2"
    assert registry_state(folder) == ([1, 2], {"champion": "1", "challenger": "2"})
    c = client(folder)
    v2 = c.get_model_version(NAME, "2")
    assert v2.tags["trigger"] == "monitoring:degraded:b002.csv" and v2.tags["gate.decision"] == "below_floor"
    assert v2.tags["gate.reason"].startswith("not promoted: loses to persistence (skill -")
    assert float(v2.tags["gate.challenger_score"]) < float(v2.tags["gate.champion_score"])  # it beat the champion

    # the floor off: this part is about the loop, not about the model's quality
    cfg = _with(config("registry: {floor: []}\n"), {"drift_share: 0.5": "drift_share: 1.0"})
    add_batch(folder, "b003.csv", 1500, frequency=2.0)
    [third] = monitoring_flow(cfg)["batches"]
    assert third["verdict"] == "degraded" and third["champion_version"] == "1"
    assert third["action"] == "retrain → promoted" and third["new_version"] == "3"
    assert registry_state(folder) == ([1, 2, 3], {"champion": "3", "challenger": "3"})
    v3 = c.get_model_version(NAME, "3")
    assert v3.tags["trigger"] == "monitoring:degraded:b003.csv" and v3.tags["gate.decision"] == "promoted"
    # the gate scored both on the newest windows of the retraining data (the last 1000 points: t = 750..1749)
    train_run = c.get_run(v3.run_id)
    ref = mlflow.artifacts.download_artifacts(run_id=v3.run_id, artifact_path="reference/reference.json",
                                              tracking_uri=f"sqlite:///{folder / 'state' / 'mlflow.db'}")
    meta = json.load(open(ref))
    assert (meta["first_time"], meta["last_time"], meta["n_rows"]) == ("750", "1749", 1000)
    assert train_run.data.params["best.cell"] == "gru" and train_run.data.params["best.hidden"] == "16"
    h = history(folder)
    assert h["action"].tolist() == ["none", "retrain → kept", "retrain → promoted"]
    assert h["new_champion_version"].tolist()[-1] == "3"
    # the next batch in the new regime is judged against v3 and its reference
    add_batch(folder, "b004.csv", 1750, frequency=2.0)
    [fourth] = monitoring_flow(cfg)["batches"]
    assert fourth["champion_version"] == "3" and fourth["error_ratio"] < third["error_ratio"]


def test_a_retrain_that_loses_the_gate_leaves_the_champion(env):
    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000, amplitude=1.6, frequency=2.0)
    # the challenger must be 1000x better: it cannot win. The floor is off: this retrain also loses to persistence
    # (see the frequency-change test), and this test is about the comparison with the champion
    cfg = config("registry: {margin: 0.999, floor: []}\n")
    [b] = monitoring_flow(cfg)["batches"]
    assert b["verdict"] == "degraded" and b["action"] == "retrain → kept"
    assert b["new_version"] == "2" and b["new_champion_version"] == "1"
    assert registry_state(folder) == ([1, 2], {"champion": "1", "challenger": "2"})
    assert client(folder).get_model_version(NAME, "2").tags["gate.decision"] == "kept_champion"


def test_a_bad_batch_is_quarantined_and_the_next_one_judged(env):
    from flows.monitoring import monitoring_flow

    folder, config = env
    (folder / "incoming" / "b001.csv").write_text("time,value\n1000,0.5\n1001,oops\n")
    add_batch(folder, "b002.csv", 1000)
    (folder / "incoming" / "b003.csv").write_text("time,value\n10,0.5\n11,0.4\n")  # goes back in time
    before = registry_state(folder)
    rows = monitoring_flow(config())["batches"]
    assert [(r["batch"], r["verdict"], r["action"]) for r in rows] == [
        ("b001.csv", "invalid", "quarantined"), ("b002.csv", "ok", "none"), ("b003.csv", "invalid", "quarantined")]
    q = folder / "incoming" / "quarantine"
    assert sorted(p.name for p in q.iterdir()) == ["b001.csv", "b001.csv.error.txt", "b003.csv", "b003.csv.error.txt"]
    assert "column 'value', row 2: non-numeric value (value: 'oops')" in (q / "b001.csv.error.txt").read_text()
    assert "does not continue the series" in (q / "b003.csv.error.txt").read_text()
    h = history(folder)
    assert h["status"].tolist() == ["quarantined", "judged", "quarantined"]
    assert registry_state(folder) == before


def test_no_champion_is_a_clear_error(tmp_path, prefect_harness):
    from flows.monitoring import monitoring_flow
    from rnn_pipeline.errors import RegistryError

    cfg = monitoring_config(tmp_path, tmp_path / "state")
    (tmp_path / "incoming").mkdir()
    add_batch(tmp_path, "b001.csv", 1000)
    with pytest.raises(RegistryError, match="has no champion to monitor: train one first"):
        monitoring_flow(cfg)
    assert (tmp_path / "incoming" / "b001.csv").exists()  # nothing consumed


def test_two_monitoring_runs_started_together_retrain_once(env, server_env):
    """Two CLI processes over the same drifted batch: one holds the lock and retrains, the other judges nothing."""
    folder, config = env
    add_batch(folder, "b001.csv", 1000, amplitude=1.6, frequency=2.0)
    cfg = config()
    env_vars = server_env
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", "monitor", "--config", cfg], cwd=REPO, env=env_vars,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert registry_state(folder)[0] == [1, 2]  # exactly one retraining
    h = history(folder)
    assert len(h) == 1 and h["action"].iloc[0].startswith("retrain")
    said = "\n".join(outs)
    assert said.count("b001.csv: degraded") == 1
    assert "skipped: another monitoring run is in progress" in said or "no new batches" in said
