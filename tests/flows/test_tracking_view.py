"""What a user sees of a training run in the MLflow and Prefect UIs: a model-training experiment, a parent run named
after the model, version and trigger, trials as nested runs with true durations and states, the same metric names on
parent and trials, the dataset, markdown descriptions on the version and the model, and the Prefect summary
artifact and flow run name. One training run (with a trial forced to be pruned and one to fail) serves the module."""

import shutil
import time

import mlflow
import optuna
import pytest
from conftest import migrated_mlflow_store, write_config

from rnn_pipeline import tune
from rnn_pipeline.data.datasets import seed_sine

pytestmark = pytest.mark.slow
TRIGGER = "view-check"


def uri_for(folder):
    return f"sqlite:///{folder / 'state' / 'mlflow.db'}"


def client_for(folder):
    return mlflow.MlflowClient(uri_for(folder), registry_uri=uri_for(folder))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    """Model 'tiny' v1 trained once; its tuning's 2nd trial is pruned after its first epoch and its 3rd fails, so the
    study runs a 4th (failed trials do not count towards n_trials=3)."""
    from flows.training import training_flow

    real, calls = tune.fit_model, [0]

    def fit_model(params, data, cfg, **kw):
        on_epoch = kw.get("on_epoch")
        if on_epoch is None:  # the final fit
            return real(params, data, cfg, **kw)
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("forced failure")
        if calls[0] != 2:
            time.sleep(0.3)  # a tiny trial can finish in under 0.1 s: make its true duration known to be long
        if calls[0] == 2:
            def prune_after_first(epoch, val_loss):
                on_epoch(epoch, val_loss)
                raise optuna.TrialPruned("forced")
            kw["on_epoch"] = prune_after_first
        return real(params, data, cfg, **kw)

    folder = tmp_path_factory.mktemp("view")
    cfg = write_config(folder, n_trials=3, trial_epochs=2, epochs=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tune, "fit_model", fit_model)
        summary = training_flow(str(cfg), reason=TRIGGER)
    assert summary["n_pruned"] == 1 and summary["n_failed"] == 1 and summary["n_complete"] == 2
    c = client_for(folder)
    run = c.get_run(summary["mlflow_run_id"])
    trials = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return {"folder": folder, "summary": summary, "client": c, "run": run, "trials": trials}


def test_the_experiment_is_a_model_training_experiment(trained):
    exp = trained["client"].get_experiment(trained["run"].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_without_a_kind_gets_one_and_a_kind_set_by_hand_stays(tmp_path):
    from rnn_pipeline.tracking import experiment_for, mlflow_stores

    shutil.copyfile(migrated_mlflow_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri)
    old = c.create_experiment("old")
    mine = c.create_experiment("mine", tags={"mlflow.experimentKind": "forecasting"})
    with mlflow_stores(uri):
        assert experiment_for("old", None) == old and experiment_for("mine", None) == mine
    assert c.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert c.get_experiment(mine).tags["mlflow.experimentKind"] == "forecasting"


def test_the_parent_run_is_named_after_the_model_version_and_trigger(trained):
    assert trained["run"].info.run_name == f"tiny v1 ({TRIGGER})"
    assert trained["run"].data.tags["mlflow.runName"] == trained["run"].info.run_name


def test_trials_are_nested_runs_with_true_durations_and_visible_states(trained):
    trials = trained["trials"]
    assert len(trials) == 4
    by_state = {}
    for t in trials:
        by_state.setdefault(t.data.tags["trial_state"], []).append(t)
        assert t.info.end_time - t.info.start_time >= t.data.metrics["trial_seconds"] * 1000 * 0.5
        assert t.info.start_time >= trained["run"].info.start_time
    assert {k: len(v) for k, v in by_state.items()} == {"complete": 2, "pruned": 1, "failed": 1}
    assert {t.info.status for t in by_state["complete"]} == {"FINISHED"}
    (pruned,), (failed,) = by_state["pruned"], by_state["failed"]
    assert pruned.info.status == "KILLED" and pruned.info.run_name.endswith("(pruned)")
    assert failed.info.status == "FAILED" and failed.info.run_name.endswith("(failed)")
    assert "forced failure" in failed.data.tags["error"]
    # the runs carry the trials' true times (each complete trial spent at least 0.3 s in fit_model), not the
    # milliseconds it took to write the run afterwards
    assert min(t.info.end_time - t.info.start_time for t in by_state["complete"]) >= 300


def test_parent_and_trials_use_the_same_metric_names(trained):
    parent = trained["run"].data.metrics
    complete = [t for t in trained["trials"] if t.data.tags["trial_state"] == "complete"]
    for name in ("val_loss", "best_val_loss"):
        assert name in parent and all(name in t.data.metrics for t in complete), name
    assert parent["best_val_loss"] == pytest.approx(trained["summary"]["final_fit"]["best_val_loss"])
    assert "test_mse" in parent  # the test metrics keep their names


def test_the_dataset_is_logged_with_the_run_digest(trained):
    inputs = trained["run"].inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "seed_sine" and ds.digest == trained["summary"]["data_digest"][:16]
    assert "seed_sine" in ds.source and ds.schema and f'"num_rows": {len(seed_sine())}' in ds.profile
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_the_version_and_the_model_have_markdown_descriptions(trained):
    c, s = trained["client"], trained["summary"]
    v = c.get_model_version("tiny", "1")
    assert v.description.startswith("**Gate: promoted**") and s["reason"] in v.description
    assert "| metric | this version | persistence |" in v.description
    assert f"| **mse** | {s['metrics']['mse']:.4g} |" in v.description
    assert s["data_digest"][:16] in v.description and "builtin:seed_sine" in v.description
    assert f"`{TRIGGER}`" in v.description and f"runs:/{s['mlflow_run_id']}" in v.description
    m = c.get_registered_model("tiny").description
    assert "config `tiny`" in m and "Forecasts `value` 1 step(s) ahead" in m
    assert f"**Champion: v1** — {s['reason']}" in m


def test_prefect_shows_the_summary_artifact_and_names_the_flow_run(trained):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.training import summary_table

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["training-tiny"])))
        ours = [a for a in arts if trained["summary"]["mlflow_run_id"] in a.data]
        assert len(ours) == 1 and ours[0].type == "markdown"
        assert summary_table(trained["summary"]) in ours[0].data
        assert client.read_flow_run(ours[0].flow_run_id).name == f"tiny ({TRIGGER})"


def test_a_run_that_fails_is_named_so(tmp_path, prefect_harness, monkeypatch):
    import flows.training as training

    def broken(*args, **kwargs):
        raise RuntimeError("artifacts broke")

    monkeypatch.setattr(training, "log_artifacts", broken)
    cfg = write_config(tmp_path, name="tiny_fail", n_trials=1, trial_epochs=1, epochs=1)
    with pytest.raises(RuntimeError, match="artifacts broke"):
        training.training_flow(str(cfg))
    c = client_for(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("tiny_fail").experiment_id], "tags.model_name = 'tiny_fail'")
    assert run.info.run_name == "tiny_fail (failed)" and run.info.status == "FAILED"


def test_names_and_keys():
    from flows.training import artifact_key, run_name
    from rnn_pipeline import registry

    assert artifact_key("Seed_Sine v2") == "training-seed-sine-v2"
    assert run_name("seed_sine") == "seed_sine (training…)"
    assert run_name("seed_sine", "4", "monitoring:degraded:b001.csv") == "seed_sine v4 (monitoring:degraded:b001.csv)"
    d = registry.decide(0.0123456789, 0.02, 0.05, "mse", "1", floor={"persistence": 0.05})
    text = registry.version_description(d, "mse", "abc", metrics={"mse": 0.0123456789, "mae": 0.0912345},
                                        baselines={"persistence": {"mse": 0.05, "mae": 0.2}}, tags={"trigger": "manual"})
    assert "| metric | this version | persistence (floor) | champion v1 |" in text
    assert "| **mse** | 0.01235 | 0.05 | 0.02 |" in text and "| mae | 0.09123 | 0.2 | – |" in text


def test_reconcile_renames_a_parent_run_left_under_its_provisional_name(tmp_path):
    from rnn_pipeline.registry import reconcile

    shutil.copyfile(migrated_mlflow_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = c.create_experiment("m")
    run = c.create_run(exp, run_name="m (training…)", tags={"model_name": "m"})
    assert reconcile(c, "m", exp)["failed_runs"] == [run.info.run_id]
    after = c.get_run(run.info.run_id).info
    assert after.run_name == "m (interrupted)" and after.status == "FAILED"


def test_the_runs_table_gets_a_saved_view_with_the_columns_that_compare_runs(trained):
    """MLflow's runs table shows no metric column by default: the training run saves a view (the experiment tag the
    UI's "Save as new view" writes) with the gate metric, the skills against the baselines, the tuned architecture
    and the gate's decision; a user's own view under that id is left alone."""
    import json

    from rnn_pipeline.tracking import VIEW_NAME, VIEW_TAG, save_runs_view

    c, run = trained["client"], trained["run"]
    exp_id = run.info.experiment_id
    envelope = json.loads(c.get_experiment(exp_id).tags[VIEW_TAG])
    assert envelope["name"] == VIEW_NAME and envelope["createdAt"] <= envelope["updatedAt"]
    state = json.loads(envelope["state"])
    cols = state["selectedColumns"]
    assert cols[0] == "metrics.`test_mse`"
    assert {"metrics.`skill_vs_persistence`", "metrics.`skill_vs_ridge`", "params.`best.hidden`",
            "tags.`gate.decision`"} <= set(cols)
    assert len(cols) <= 12  # few enough to fit beside the run names
    assert all(c.split(".", 1)[1].strip("`") in {**run.data.metrics, **run.data.params, **run.data.tags}
               for c in cols)  # every column is a key the run logged
    assert state["orderByKey"] == "attributes.start_time" and state["orderByAsc"] is False

    mine = json.dumps({"name": "my view", "createdAt": 1, "updatedAt": 1, "state": "{}"})
    c.set_experiment_tag(exp_id, VIEW_TAG, mine)
    save_runs_view(c, exp_id, run)
    assert c.get_experiment(exp_id).tags[VIEW_TAG] == mine
