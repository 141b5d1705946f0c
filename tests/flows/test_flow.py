"""The training flow in-process (one Prefect test server for the module): registration, the gate, the summary,
and every bad input leaving the registry untouched."""

import json
import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import write_config

from rnn_pipeline.errors import ConfigError, DataValidationError, PipelineError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state(tmp_path_factory, prefect_harness):
    """A model 'tiny' trained once: v1, champion."""
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("flow")
    cfg = write_config(folder, n_trials=3, trial_epochs=2, epochs=2, plots=True, ensemble_trials=3)
    summary = training_flow(str(cfg))
    return {"folder": folder, "config": cfg, "first": summary}


def uri_for(folder):
    return f"sqlite:///{folder / 'state' / 'mlflow.db'}"


def client_for(folder):
    return mlflow.MlflowClient(uri_for(folder), registry_uri=uri_for(folder))


def snapshot(folder, name="tiny"):
    c = client_for(folder)
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))
    aliases = {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}
    return versions, dict(aliases)


def test_first_run_registers_a_champion_and_writes_the_summary(state):
    s = state["first"]
    assert s["model_version"] == "1" and s["promoted"] and s["champion_version"] == "1"
    assert s["reason"].startswith("first model")
    on_disk = json.loads((state["folder"] / "state" / "last_run.json").read_text())
    for key in ("model_name", "model_version", "promoted", "champion_version", "metrics", "baselines", "n_trials",
                "n_pruned", "wall_seconds", "mlflow_run_id"):
        assert key in on_disk, key
    assert {"persistence", "ridge"} <= set(on_disk["baselines"])
    assert {"mse", "rmse", "mae", "r2", "smape", "mase"} <= set(on_disk["metrics"])
    assert "mape" not in on_disk["metrics"]  # the seed series crosses zero: a percentage error means nothing
    assert on_disk["n_trials"] == 3 and on_disk["n_test_windows"] == 190
    assert on_disk["save_load_max_abs_diff"] < 1e-5
    # metrics are in original units: recompute MSE from the logged test predictions
    c = client_for(state["folder"])
    path = mlflow.artifacts.download_artifacts(run_id=s["mlflow_run_id"], artifact_path="predictions/test_predictions.csv",
                                               tracking_uri=uri_for(state["folder"]))
    preds = pd.read_csv(path)
    assert len(preds) == 190
    assert np.mean((preds["value_h1"] - preds["actual_value_h1"]) ** 2) == pytest.approx(s["metrics"]["mse"], rel=1e-9)
    run = c.get_run(s["mlflow_run_id"])
    assert {"git_commit", "data_digest", "version.torch", "version.mlflow"} <= set(run.data.tags)
    assert run.data.params["seed"] == "7"
    # the Ridges read the look-back validation preferred, among those tuned; the run says which
    assert set(on_disk["baseline_windows"]) == {"ridge", "ridge_last"}
    assert run.data.params["baseline.ridge.window"] == str(on_disk["baseline_windows"]["ridge"])
    artifacts = {a.path for a in c.list_artifacts(s["mlflow_run_id"], "plots")}
    assert {"plots/actual_vs_predicted.png", "plots/residual_histogram.png", "plots/residual_acf.png",
            "plots/loss_curves.png", "plots/optuna_history.png"} <= artifacts
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{s['mlflow_run_id']}'")
    assert len(trials) == 3 and all("val_loss" in t.data.metrics for t in trials)
    assert {t.data.tags["trial_state"] for t in trials} <= {"complete", "pruned"}
    # the final model: refits of the best distinct complete trials (up to training.ensemble_trials, 3 by default),
    # mixed by their validation forecasts; the mix is what was logged and reloaded (save_load_max_abs_diff above)
    complete = {tuple(sorted(t.data.params.items())) for t in trials if t.data.tags["trial_state"] == "complete"}
    ensemble = s["final_fit"]["ensemble"]
    assert len(ensemble) == min(3, len(complete)) >= 1
    assert sum(m["weight"] for m in ensemble) == pytest.approx(1.0) and ensemble[0]["params"] == s["best_params"]
    if len(ensemble) > 1:
        assert json.loads(run.data.tags["ensemble"])[0]["weight"] == pytest.approx(ensemble[0]["weight"], abs=1e-4)
        assert run.data.params["ensemble.candidates"] == str(len(ensemble))


def test_second_run_is_a_challenger_and_the_gate_says_why(state):
    from flows.training import training_flow

    s = training_flow(str(state["config"]))
    assert s["model_version"] == "2" and not s["promoted"] and s["champion_version"] == "1"
    assert s["resumed_trials"] == 3  # the study was complete: nothing re-run
    c = client_for(state["folder"])
    v2 = c.get_model_version("tiny", "2")
    assert v2.tags["gate.decision"] == "kept_champion" and "does not beat champion v1" in v2.tags["gate.reason"]
    assert float(v2.tags["gate.challenger_score"]) == pytest.approx(float(v2.tags["gate.champion_score"]))
    assert str(c.get_model_version_by_alias("tiny", "challenger").version) == "2"
    assert str(c.get_model_version_by_alias("tiny", "champion").version) == "1"
    # the registered models list shows the newest version's alias first ("@challenger: Version 2 +1"): a tag there
    # names the champion
    assert c.get_registered_model("tiny").tags["champion"] == "version 1"


def test_a_better_challenger_is_promoted(state):
    from flows.training import training_flow

    better = write_config(state["folder"], name="tiny_better", n_trials=2, trial_epochs=3, epochs=25,
                          extra="registry: {model_name: tiny, floor: []}\n")  # about the champion, not the floor
    before = snapshot(state["folder"])
    s = training_flow(str(better))
    assert s["promoted"], s["reason"]
    assert s["gate"]["challenger"] < s["gate"]["champion"]
    versions, aliases = snapshot(state["folder"])
    assert versions == before[0] + [int(s["model_version"])]
    assert aliases["champion"] == s["model_version"] == aliases["challenger"]
    assert client_for(state["folder"]).get_registered_model("tiny").tags["champion"] == f"version {s['model_version']}"
    assert client_for(state["folder"]).list_artifacts(s["mlflow_run_id"], "plots") == []  # evaluation.plots: false


def test_a_model_below_the_floor_is_registered_as_challenger_only(state):
    """The floor applies to the first model too: raised to Ridge, which 2 epochs of training cannot beat, the version
    is registered and tagged with the reason, but no alias champion exists. (The series has one extreme value: by
    default a warning, which the summary and the run carry.)"""
    from flows.training import summary_table, training_flow
    from rnn_pipeline.data.datasets import seed_sine

    folder = state["folder"]
    frame = seed_sine()
    frame.loc[99, "value"] = 50.0  # about 60 robust deviations from the training median
    frame.to_csv(folder / "spiky.csv", index=False)
    cfg = write_config(folder, name="floored", n_trials=1, trial_epochs=2, epochs=2, floor="[ridge]",
                       data="path: spiky.csv")
    s = training_flow(str(cfg))
    assert len(s["data_warnings"]) == 1 and "spiky.csv, column 'value', row 100: extreme value" in s["data_warnings"][0]
    assert f"DATA WARNING: {s['data_warnings'][0]}" in summary_table(s)
    assert not s["promoted"] and s["champion_version"] is None and s["decision"] == "below_floor"
    assert s["reason"].startswith("not promoted: loses to ridge (skill -")
    # the gate scored the logged pyfunc on the evaluation's windows: the same figure as the test MSE
    assert s["gate"]["metric"] == "mse" and s["gate"]["challenger"] == pytest.approx(s["metrics"]["mse"], rel=1e-5)
    assert s["gate"]["floor"]["ridge"]["score"] == s["baselines"]["ridge"]["mse"]
    assert summary_table(s).splitlines()[0].startswith(f"model floored v1: kept as challenger ({s['reason']}")
    saved = json.loads((folder / "state" / "last_run.json").read_text())
    assert saved["reason"] == s["reason"] and saved["decision"] == "below_floor"
    assert saved["data_warnings"] == s["data_warnings"]
    c = client_for(folder)
    v = c.get_model_version("floored", "1")
    assert v.tags["gate.decision"] == "below_floor" and v.tags["gate.reason"] == s["reason"]
    assert v.tags["gate.floor"] == "ridge" and "skill -" in v.tags["gate.floor.ridge"]
    assert {k: str(v) for k, v in c.get_registered_model("floored").aliases.items()} == {"challenger": "1"}
    assert c.get_registered_model("floored").tags["champion"] == "none yet"
    run = c.get_run(s["mlflow_run_id"])
    assert run.data.tags["gate.decision"] == "below_floor" and run.data.tags["data.warnings"] == s["data_warnings"][0]
    assert run.data.params["data_warnings"] == "1" and run.data.params["gate.floor"] == "ridge"


def test_the_summary_table_shows_the_headline_scale_and_says_which():
    from flows.training import summary_table

    m = {"mse": 9.0, "rmse": 3.0, "mae": 2.0, "r2": 0.5, "mase": 0.9,
         "std_mse": 0.25, "std_rmse": 0.5, "std_mae": 0.4, "std_r2": 0.6, "std_mase": 0.8}
    s = {"task": "forecasting", "model_name": "m", "model_version": "1", "promoted": False, "champion_version": None,
         "reason": "not promoted: loses to persistence (skill -1.42)", "best_params": {}, "n_trials": 1, "n_pruned": 0,
         "n_failed": 0, "resumed_trials": 0, "metrics": m, "baselines": {"persistence": m}, "skill": {"persistence": 0.0},
         "wall_seconds": 1.0, "timings": {"tune": 0, "final_fit": 0, "training_compute": 0}, "headline": "std_mse"}
    lines = summary_table(s).splitlines()
    assert lines[0] == "model m v1: kept as challenger (not promoted: loses to persistence (skill -1.42))"
    assert lines[4].startswith("test windows, standardised") and lines[6].split()[:2] == ["rnn", "0.250000"]
    lines = summary_table({**s, "headline": "mse"}).splitlines()
    assert lines[4].startswith("test windows, original units") and lines[6].split()[:2] == ["rnn", "9.000000"]
    mixed = {"best_epoch": 4, "best_val_loss": 0.2, "ensemble": [
        {"weight": 0.5, "val_loss": 0.25, "params": {}}, {"weight": 0.0, "val_loss": 0.26, "params": {}},
        {"weight": 0.5, "val_loss": 0.27, "params": {}}]}
    lines = summary_table({**s, "final_fit": mixed}).splitlines()
    assert lines[4] == ("final model: the weighted mean of 2 of the 3 best trials' refits (#1 0.50, #3 0.50); "
                        "validation loss 0.2 against 0.25 for the best alone")
    alone = {**mixed, "ensemble": [{**mixed["ensemble"][0], "weight": 1.0}, mixed["ensemble"][1]]}
    assert "candidate #1 of the 2 best trials' refits alone" in summary_table({**s, "final_fit": alone})


BAD = {
    "missing_file": ("path: nothere.csv", None, "file not found"),
    "empty_file": ("path: d.csv", b"", "file is empty"),
    "malformed_csv": ("path: d.csv", b'time,value\n1,"2\n', "cannot be parsed as CSV"),
    "missing_time": ("path: d.csv", b"t,value\n1,2\n", "missing column 'time'"),
    "missing_target": ("path: d.csv", b"time,v\n1,2\n", "missing column 'value'"),
    "non_numeric": ("path: d.csv", "series:abc@5", "column 'value', row 5: non-numeric value (value: 'abc')"),
    "nan": ("path: d.csv", "series:@7", "column 'value', row 7: missing value"),
    "inf": ("path: d.csv", "series:inf@9", "column 'value', row 9: infinite value"),
    "beyond_float32": ("path: d.csv", "series:-5e38@9", "column 'value', row 9: value beyond float32's range"),
    "extreme_strict": ("{path: d.csv, outliers: error}", "series:1e30@300",
                       "column 'value', row 300: extreme value"),
    "duplicate_time": ("path: d.csv", "dup", "column 'time', row 4: duplicate timestamp"),
    "unsorted_time": ("path: d.csv", "unsorted", "column 'time', row 4: timestamps are not sorted"),
    "too_short": ("path: d.csv", "short", "series too short: 40 rows"),
    "constant": ("path: d.csv", "constant", "target is constant"),
}


def make_file(path, spec):
    if spec is None:
        return
    if isinstance(spec, bytes):
        path.write_bytes(spec)
        return
    n = 40 if spec == "short" else 400
    time = list(range(n))
    values = [f"{np.sin(i / 5):.6f}" for i in range(n)]
    if spec.startswith("series:"):
        token, row = spec[7:].split("@")
        values[int(row) - 1] = token
    elif spec == "dup":
        time[3] = time[2]
    elif spec == "unsorted":
        time[2], time[3] = time[3], time[2]
    elif spec == "constant":
        values = ["1.5"] * n
    path.write_text("time,value\n" + "".join(f"{t},{v}\n" for t, v in zip(time, values)))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_clear_error_and_changes_nothing(state, case):
    from flows.training import training_flow

    data_line, content, fragment = BAD[case]
    folder = state["folder"]
    make_file(folder / "d.csv", content)
    cfg = write_config(folder, name=f"bad_{case}", data=data_line, extra="registry: {model_name: tiny}\n")
    before = snapshot(folder)
    with pytest.raises(DataValidationError) as e:
        training_flow(str(cfg))
    assert fragment in str(e.value) and "\n" not in str(e.value)
    if content is not None:
        assert "d.csv" in str(e.value)
    assert snapshot(folder) == before  # no new version, no alias moved
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the flow left no global setting behind
    (folder / "d.csv").unlink(missing_ok=True)


@pytest.mark.parametrize("text, fragment", [("name: x\ndata: {builtin: seed_sine}\nwindow: 3\n", "unknown key 'window'"),
                                            ("name: x\ndata: {builtin: seed_sine\n", "malformed YAML")])
def test_bad_yaml_is_a_clear_error_and_changes_nothing(state, text, fragment):
    from flows.training import training_flow

    p = state["folder"] / "badyaml.yaml"
    p.write_text(text)
    before = snapshot(state["folder"])
    with pytest.raises(ConfigError, match=fragment):
        training_flow(str(p))
    assert snapshot(state["folder"]) == before


def test_a_failure_after_training_registers_nothing(state, monkeypatch):
    """A crash between logging the model and registering it leaves the registry as it was."""
    from flows import training
    from rnn_pipeline import registry

    def broken_gate(*a, **kw):
        raise PipelineError("simulated failure while scoring the champion")

    monkeypatch.setattr(registry, "gate", broken_gate)
    before = snapshot(state["folder"])
    with pytest.raises(PipelineError, match="simulated failure"):
        training.training_flow(str(state["config"]))
    assert snapshot(state["folder"]) == before


def test_a_registration_failing_part_way_is_rolled_back(state, monkeypatch):
    from rnn_pipeline import registry
    from rnn_pipeline.tracking import mlflow_stores

    folder = state["folder"]
    before = snapshot(folder)
    c = client_for(folder)
    source = c.get_model_version("tiny", before[1]["champion"]).source
    real = mlflow.MlflowClient.set_registered_model_alias

    def fail_on_champion(self, name, alias, version):
        if alias == "champion":
            raise RuntimeError("registry went away")
        return real(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", fail_on_champion)
    decision = registry.GateDecision(True, "test", 0.1, 0.2, before[1]["champion"])
    with mlflow_stores(uri_for(folder)), pytest.raises(RuntimeError, match="registry went away"):
        registry.register(source, "tiny", decision, "mse", state["first"]["mlflow_run_id"])
    assert snapshot(folder) == before  # the new version is gone and the challenger alias is back where it was
