"""Monitoring from the inference log: predictions served over HTTP and the actuals posted for them are judged by the
monitoring flow; actuals that diverge from the forecasts make the verdict 'degraded'."""

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_monitoring import NAME, history, monitoring_config

from rnn_pipeline.data.datasets import sine_stream
from rnn_pipeline.serving.app import ModelHolder, create_app
from rnn_pipeline.serving.inference_log import InferenceLog
from rnn_pipeline.tracking import mlflow_stores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("monlog")
    (folder / "incoming").mkdir()
    config = monitoring_config(folder, folder / "state")
    text = Path(config).read_text()
    Path(config).write_text(text.replace("monitoring:\n", "monitoring:\n  source: inference_log\n"))
    assert training_flow(config)["promoted"]
    return folder, config


def _serve_round(folder, start: int, n: int, offset: float, seed: int) -> list[str]:
    """n one-step forecasts over a stretch of the seed process, then the actual next values (+ offset) posted."""
    y = sine_stream(start, n + 50, seed=seed)["value"].to_numpy()
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    store = InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    with mlflow_stores(uri):
        holder = ModelHolder(f"models:/{NAME}@champion")
        holder.load()
    with TestClient(create_app(holder, store=store)) as client:
        r = client.post("/predict", json={"series": [{"history": {"value": y[i:i + 50].tolist()}} for i in range(n)]})
        assert r.status_code == 200, r.text
        ids = [p["prediction_id"] for p in r.json()["predictions"]]
        a = client.post("/actuals", json={"actuals": [{"prediction_id": pid, "values": {"value": [y[i + 50] + offset]}}
                                                      for i, pid in enumerate(ids)]})
        assert a.status_code == 200 and a.json() == {"recorded": n}
    store.dispose()
    return ids


def test_monitoring_judges_the_inference_log_and_flags_diverging_actuals(setup):
    from flows.monitoring import monitoring_flow

    folder, config = setup
    _serve_round(folder, 1000, 200, offset=0.0, seed=1)
    [ok] = monitoring_flow(config)["batches"]
    assert ok["batch"] == "inference-log #1-200" and ok["verdict"] == "ok" and ok["action"] == "none"
    assert ok["n_windows"] == 200 and 0.3 < ok["error_ratio"] < 1.5 and ok["drift_share"] < 0.5
    assert monitoring_flow(config)["batches"] == []  # nothing new since: nothing judged

    _serve_round(folder, 1200, 200, offset=1.0, seed=2)  # the actuals now run 1.0 above every forecast
    [bad] = monitoring_flow(config)["batches"]
    assert bad["batch"] == "inference-log #201-400" and bad["verdict"] == "degraded"
    assert bad["error_ratio"] > 10 and bad["champion_mse"] == pytest.approx(1.0, abs=0.3)
    # a forecaster learns from the series, which the log does not hold: no retrain without new batch files
    assert bad["action"] == "retrain skipped (no new series data)" and bad["new_champion_version"] == "1"
    h = history(folder)
    assert h["verdict"].tolist() == ["ok", "degraded"]
    assert h["log_prediction_seq"].tolist() == [200, 400] and h["log_actual_seq"].tolist() == [200, 400]
    assert h["n_windows"].tolist() == [200, 200] and h["report_path"].notna().all()
    # the reference and the log share the window statistics, so drift is judged on the same footing
    assert set(__import__("json").loads(h["feature_scores"].iloc[0])) == {"value_level", "value_spread",
                                                                           "value_step"}


def test_actuals_for_older_predictions_are_judged_in_a_later_pass(setup):
    """Predictions first, actuals in a later pass: the second pass scores them (the join is on arrival of actuals)."""
    from flows.monitoring import monitoring_flow

    folder, config = setup
    y = sine_stream(2000, 80, seed=3)["value"].to_numpy()
    store = InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    try:
        from rnn_pipeline import registry

        with mlflow_stores(f"sqlite:///{folder / 'state' / 'mlflow.db'}"):
            bundle = registry.bundle_of(registry.load(f"models:/{NAME}/1"))
        from rnn_pipeline.serving.inference_log import forecast_rows, new_id

        x = np.stack([y[i:i + 50] for i in range(30)])[:, :, None]
        ids = [new_id() for _ in range(30)]
        store.write_predictions(forecast_rows(bundle, x, bundle.predict_windows(x), ids, "1", NAME, "batch:test"))
        [first] = monitoring_flow(config)["batches"]
        assert first["n_windows"] == 0 and first["error_ratio"] is None  # no actuals yet: drift only
        store.add_actuals(NAME, [(pid, {"values": {"value": [y[i + 50]]}}) for i, pid in enumerate(ids[:20])])
        [second] = monitoring_flow(config)["batches"]
        assert second["n_windows"] == 20 and second["error_ratio"] is not None and second["verdict"] == "ok"
    finally:
        store.dispose()
