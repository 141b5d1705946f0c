"""A panel through the training flow: one global model trained across several series, judged series by series
beside each one's baselines, registered with its per-series scaling, gated on the pooled standardised MSE, and
scored by `predict` and `predict-batch` for several series at once."""

import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import write_config

from rnn_pipeline.data.datasets import synthetic_panel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("panel")
    frame = synthetic_panel(4, 240, season=12, seed=11, regime_switches=False)
    frame["value"] += np.repeat([0.0, 50.0, 500.0, -20.0], 240)
    frame.to_csv(folder / "panel.csv", index=False)
    cfg = write_config(folder, name="pan", n_trials=2, epochs=4, floor=None, data="""path: panel.csv
          id_column: series
          time_column: time
          target_columns: [value]""", extra="""\
        features: {window: 24, horizon: 6}
        evaluation: {season: 12, plots: false}
        model: {quantiles: [0.1, 0.9]}
        """)
    return folder, cfg, frame, training_flow(str(cfg))


def test_a_panel_trains_one_global_model_judged_series_by_series(trained):
    folder, cfg, frame, s = trained
    assert s["task"] == "panel" and s["n_series"] == 4 and s["headline"] == "std_mse"
    assert set(s["per_series"]) == {"s0", "s1", "s2", "s3"}
    assert s["save_load_max_abs_diff"] < 1e-4
    assert {"std_crps", "qcoverage_80", "below_q10"} <= set(s["metrics"])  # a quantile model's figures
    assert set(s["baselines"]) == {"persistence", "seasonal_naive", "ridge", "ridge_last"}
    # the gate scored the registered pyfunc on every series' test windows: the evaluation's pooled figure
    assert s["gate"]["metric"] == "std_mse"
    assert s["gate"]["challenger"] == pytest.approx(s["metrics"]["std_mse"], rel=1e-4)
    # the default floor (persistence and the seasonal naive, on the same pooled figure) decided the promotion
    floor = s["gate"]["floor"]
    assert set(floor) == {"persistence", "seasonal_naive"}
    assert floor["persistence"]["score"] == pytest.approx(s["baselines"]["persistence"]["std_mse"])
    beats = all(s["metrics"]["std_mse"] < s["baselines"][b]["std_mse"] for b in ("persistence", "seasonal_naive"))
    assert s["promoted"] == beats
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri, registry_uri=uri)
    v = c.get_model_version("pan", "1")
    assert v.tags["task"] == "panel" and "test_rel_mase" in v.tags
    run = c.get_run(s["mlflow_run_id"])
    assert run.data.params["n_series"] == "4" and "test_rel_mase" in run.data.metrics
    table = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=s["mlflow_run_id"], artifact_path="evaluation/per_series.json", tracking_uri=uri)).read())
    assert sorted(row[0] for row in table["data"]) == ["s0", "s1", "s2", "s3"]


def test_predict_answers_several_series_in_their_own_units(trained, cli):
    folder, cfg, frame, s = trained
    version = s["model_version"]
    hist = pd.concat([frame[frame.series == sid].tail(30) for sid in ("s3", "s1", "s2")])
    hist.drop(columns="time").to_csv(folder / "hist.csv", index=False)
    model = f"models:/pan/{version}"  # the version just trained, whether or not the floor let it be champion
    code, stdout, stderr = cli("predict", "--config", cfg, "--input", folder / "hist.csv", "--model", model)
    assert code == 0, stderr
    got = pd.read_csv(io.StringIO(stdout))
    points = [f"value_h{h}" for h in range(1, 7)]
    assert got["series"].tolist() == ["s3", "s1", "s2"] and got.columns.tolist()[:7] == ["series", *points]
    assert {"value_h6_lo80", "value_h6_hi95", "value_h1_q10", "value_h6_q90"} <= set(got.columns)
    for sid, level in (("s3", -20.0), ("s1", 50.0), ("s2", 500.0)):
        assert abs(got.loc[got.series == sid, points].iloc[0].astype(float).mean() - level) < 25
    out = folder / "scored.csv"
    code, stdout, stderr = cli("predict-batch", "--config", cfg, "--input", folder / "hist.csv", "--output", out,
                               "--model", model)
    assert code == 0, stderr
    batch = pd.read_csv(out)
    assert batch["series"].tolist() == ["s3", "s1", "s2"]
    np.testing.assert_allclose(batch.filter(like="value_h").to_numpy(), got.filter(like="value_h").to_numpy(),
                               rtol=1e-5)
    hist.assign(series="zz").drop(columns="time").to_csv(folder / "unknown.csv", index=False)
    code, stdout, stderr = cli("predict", "--config", cfg, "--input", folder / "unknown.csv", "--model", model)
    assert code != 0 and "unknown series 'zz'" in stderr


def test_the_service_answers_histories_naming_their_series_and_logs_the_series(trained):
    from fastapi.testclient import TestClient

    from rnn_pipeline.serving.app import ModelHolder, create_app
    from rnn_pipeline.serving.inference_log import InferenceLog
    from rnn_pipeline.tracking import mlflow_stores

    folder, cfg, frame, s = trained
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    store = InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    with mlflow_stores(uri):
        holder = ModelHolder(f"models:/pan/{s['model_version']}")
        holder.load()
    hist = {sid: frame[frame.series == sid].value.tail(24).tolist() for sid in ("s2", "s0")}
    try:
        with TestClient(create_app(holder, store=store, flush_seconds=0.05)) as client:
            assert client.get("/metadata").json()["n_series"] == 4
            r = client.post("/predict", json={"series": [{"id": sid, "history": {"value": h}} for sid, h in hist.items()]})
            assert r.status_code == 200, r.text
            got = [p["forecast"]["value"] for p in r.json()["predictions"]]
            assert abs(np.mean(got[0]) - 500) < 25 and abs(np.mean(got[1])) < 25  # each in its own series' units
            band = r.json()["predictions"][0]["intervals"]["95"]
            assert all(lo < f < hi for lo, f, hi in zip(band["lo"]["value"], got[0], band["hi"]["value"]))
            for p in r.json()["predictions"]:  # the network's quantiles, for each series
                q = p["quantiles"]
                assert list(q) == ["10", "90"]
                assert all(a <= b for a, b in zip(q["10"]["value"], q["90"]["value"]))
            no_id = client.post("/predict", json={"series": [{"history": {"value": hist["s0"]}}]})
            assert no_id.status_code == 422 and "has no 'id'" in no_id.text
            unknown = client.post("/predict", json={"series": [{"id": "zz", "history": {"value": hist["s0"]}}]})
            assert unknown.status_code == 422 and "unknown series 'zz'" in unknown.text
        logged = [json.loads(r)["series"] if isinstance(r, str) else r["series"] for r in store.predictions("pan")["inputs"]]
        assert logged[-2:] == ["s2", "s0"]  # after predict-batch's (the test above, when it ran first)
    finally:
        store.dispose()


def test_a_quantile_model_is_gated_on_its_crps_and_the_floor_on_the_baselines_mae(tmp_path, prefect_harness):
    """registry.metric crps: the registered pyfunc's quantiles give the challenger's CRPS on the test windows (the
    evaluation's figure), and the point baselines' CRPS is their MAE."""
    from flows.training import training_flow

    cfg = write_config(tmp_path, name="qgate", n_trials=1, epochs=4, floor=None, plots=True, extra="""\
        model: {quantiles: [0.1, 0.9]}
        registry: {metric: crps}
        backtest: {origins: 2}
        """)
    s = training_flow(str(cfg))
    assert s["gate"]["metric"] == "crps"
    assert s["gate"]["challenger"] == pytest.approx(s["metrics"]["crps"], rel=1e-4)
    assert s["metrics"]["crps"] != pytest.approx(s["metrics"]["mae"])  # from the quantiles, not the point's MAE
    floor = s["gate"]["floor"]
    assert floor["persistence"]["score"] == pytest.approx(s["baselines"]["persistence"]["mae"])
    assert s["promoted"] == (s["metrics"]["crps"] < min(s["baselines"][b]["mae"] for b in floor))
    assert "rnn" in s["backtest"]["models"]  # a backtest beside a CRPS gate reads the point forecasts' MAE
