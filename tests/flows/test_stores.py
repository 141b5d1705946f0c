"""Stores by URL: the embedded defaults, and the server-backed configuration on PostgreSQL when one is reachable."""


import pytest
from conftest import write_config

from rnn_pipeline.config import StoresConfig
from rnn_pipeline.stores import resolve


def test_embedded_defaults_live_under_one_root(tmp_path):
    st = resolve(StoresConfig(root=str(tmp_path / "s")), {})
    assert st.mlflow_uri == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    assert st.optuna_url == f"sqlite:///{tmp_path / 's' / 'optuna.db'}"
    assert st.artifact_location == (tmp_path / "s" / "artifacts").as_uri()


def test_urls_from_config_and_environment(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    st = resolve(StoresConfig(root=str(tmp_path)), env)
    assert st.mlflow_uri == "http://mlflow.example:5000" and st.artifact_location is None  # the server decides
    st = resolve(StoresConfig(root=str(tmp_path), mlflow_uri="postgresql://h/db", optuna_url="postgresql://h/o"), env)
    assert st.mlflow_uri == "postgresql://h/db" and st.optuna_url == "postgresql://h/o"
    assert st.artifact_location == (tmp_path / "artifacts").as_uri()


@pytest.mark.slow
def test_training_flow_on_postgresql_stores(tmp_path, pg_databases, prefect_harness):
    """MLflow tracking + registry and the Optuna study in PostgreSQL; the flow, the gate and resume all work."""
    import mlflow
    import optuna

    from flows.training import training_flow

    mlflow_url, optuna_url, monitoring_url = pg_databases
    cfg = write_config(tmp_path, name="pg", empty_store=False, n_trials=2, trial_epochs=2, epochs=2,
                       extra=f"stores: {{root: '{tmp_path / 'state'}', mlflow_uri: '{mlflow_url}', "
                             f"optuna_url: '{optuna_url}', monitoring_url: '{monitoring_url}'}}\n")
    first = training_flow(str(cfg))
    assert first["promoted"] and first["model_version"] == "1"
    second = training_flow(str(cfg))
    assert second["model_version"] == "2" and second["resumed_trials"] == 2
    client = mlflow.MlflowClient(mlflow_url, registry_uri=mlflow_url)
    assert str(client.get_model_version_by_alias("pg", "champion").version) == "1"
    assert client.get_model_version("pg", "2").tags["gate.decision"] == "kept_champion"
    assert len(optuna.load_study(study_name=first["study"], storage=optuna_url).trials) == 2
    assert not (tmp_path / "state" / "mlflow.db").exists() and not (tmp_path / "state" / "optuna.db").exists()

    # the monitoring flow on the same stores: its row lands in the PostgreSQL monitoring store
    from flows.monitoring import monitoring_flow
    from rnn_pipeline.data.datasets import sine_stream
    from rnn_pipeline.monitoring.store import MonitoringStore

    incoming = tmp_path / "state" / "incoming" / "pg"
    incoming.mkdir(parents=True)
    sine_stream(1000, 250, seed=3).to_csv(incoming / "b1.csv", index=False)
    summary = monitoring_flow(str(cfg))
    assert [b["batch"] for b in summary["batches"]] == ["b1.csv"]
    store = MonitoringStore(monitoring_url)
    hist = store.history("pg")
    store.dispose()
    assert hist["batch"].tolist() == ["b1.csv"] and hist["verdict"].iloc[0] in ("ok", "drift", "degraded")
    assert not (tmp_path / "state" / "monitoring.db").exists()


def test_monitoring_store_contract_on_postgresql(pg_databases):
    from contracts import store_contract

    store_contract(pg_databases[2])


def test_inference_log_contract_on_postgresql(pg_databases):
    from contracts import log_contract

    log_contract(pg_databases[2])
