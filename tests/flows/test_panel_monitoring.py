"""Monitoring a panel champion: batches of several series judged series by series (drift on each series' own
z-scores and error against its own test figure), the share of series drifted, a bad batch quarantined naming the
series, and a retrain of the global model on every series' history."""

import json
import shutil
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import write_config

from rnn_pipeline.data.datasets import synthetic_panel
from rnn_pipeline.monitoring.store import MonitoringStore

pytestmark = pytest.mark.slow
TRAIN_STEPS, BATCH = 240, 60


@pytest.fixture(scope="module")
def full():
    frame = synthetic_panel(4, TRAIN_STEPS + 3 * BATCH, season=12, seed=11, regime_switches=False,
                            trend=0.0)  # stationary: a batch of the same process must not drift
    frame["value"] += np.repeat([0.0, 50.0, 500.0, -20.0], TRAIN_STEPS + 3 * BATCH)
    return frame


def panel_config(folder, extra=""):
    return write_config(folder, name="panmon", n_trials=1, epochs=8, data="""path: panel.csv
          id_column: series
          time_column: time
          target_columns: [value]""", extra=textwrap.dedent(f"""\
        features: {{window: 24, horizon: 6}}
        evaluation: {{season: 12, plots: false}}
        monitoring:
          incoming: "{folder / 'incoming'}"
          drift_threshold: auto
          drift_share: 0.5
          error_ratio: 3.0
        """) + extra, empty_store=not (folder / "state" / "mlflow.db").exists())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness, full):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("panmon")
    full[full.time < TRAIN_STEPS].to_csv(folder / "panel.csv", index=False)
    s = training_flow(str(panel_config(folder)))
    assert s["promoted"] and s["task"] == "panel"
    return folder


@pytest.fixture
def env(tmp_path, trained):
    shutil.copytree(trained / "state", tmp_path / "state")
    shutil.copy(trained / "panel.csv", tmp_path / "panel.csv")
    (tmp_path / "incoming").mkdir()
    return tmp_path


def batch(full, k, series=("s0", "s1", "s2", "s3")):
    start = TRAIN_STEPS + k * BATCH
    part = full[(full.time >= start) & (full.time < start + BATCH) & full.series.isin(series)]
    return part.sample(frac=1.0, random_state=k).sort_values("time", kind="stable")  # series interleaved by time


def client(folder):
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def history(folder):
    store = MonitoringStore(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    try:
        return store.history("panmon")
    finally:
        store.dispose()


def test_a_panel_batch_is_judged_series_by_series_and_one_shifted_series_drifts(env, full):
    from flows.monitoring import monitoring_flow

    folder = env
    batch(full, 0).to_csv(folder / "incoming" / "b001.csv", index=False)
    b2 = batch(full, 1)
    s2 = b2.series == "s2"
    b2.loc[s2, "value"] = 500.0 + 3.0 * (b2.loc[s2, "value"] - 500.0) + 8.0  # s2: a new level and amplitude
    b2.to_csv(folder / "incoming" / "b002.csv", index=False)
    cfg = str(panel_config(folder, "registry: {floor: []}\n"))
    first, second = monitoring_flow(cfg)["batches"]

    assert first["verdict"] == "ok", first
    assert first["error_ratio"] < 3.0
    assert second["verdict"] in ("drift", "degraded") and second["action"].startswith("retrain")
    c = client(folder)
    runs = c.search_runs([c.get_experiment_by_name("panmon-monitoring").experiment_id],
                         order_by=["attributes.start_time ASC"])
    ok_run, shifted_run = runs[0], runs[1]
    assert ok_run.data.metrics["n_series"] == 4 and ok_run.data.metrics["n_series_drifted"] == 0
    assert shifted_run.data.metrics["n_series_drifted"] == 1
    assert shifted_run.data.metrics["series_drift_share"] == pytest.approx(0.25)
    table = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=shifted_run.info.run_id, artifact_path="per_series.json",
        tracking_uri=f"sqlite:///{folder / 'state' / 'mlflow.db'}")).read())
    rows = {r[0]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert rows["s2"]["drifted"] is True and not any(rows[s]["drifted"] for s in ("s0", "s1", "s3"))
    # each series' error on its own z-scores: the shifted series' error grew, the others' did not
    assert rows["s2"]["error_ratio"] > 3 * max(rows[s]["error_ratio"] for s in ("s0", "s1", "s3"))
    assert "champion_coverage_80" in shifted_run.data.metrics

    # the retrain learned the global model from every series' history so far: 240 + 2 x 60 steps each
    v2 = c.get_model_version("panmon", "2")
    assert v2.tags["trigger"] == "monitoring:" + second["verdict"] + ":b002.csv"
    ref = mlflow.artifacts.download_artifacts(run_id=v2.run_id, artifact_path="reference",
                                              tracking_uri=f"sqlite:///{folder / 'state' / 'mlflow.db'}")
    meta = json.load(open(f"{ref}/reference.json"))
    reference = pd.read_parquet(f"{ref}/reference.parquet")
    assert reference.groupby("series").size().to_dict() == {s: TRAIN_STEPS + 2 * BATCH for s in ("s0", "s1", "s2", "s3")}
    assert meta["task"] == "panel" and meta["n_series"] == 4 and set(meta["series_test_std_mse"]) == {
        "s0", "s1", "s2", "s3"}


def test_a_batch_naming_an_unknown_series_or_rewriting_one_is_quarantined_naming_it(env, full):
    from flows.monitoring import monitoring_flow

    folder = env
    cfg = str(panel_config(folder))
    b = batch(full, 0)
    pd.concat([b, b[b.series == "s1"].assign(series="s9")]).to_csv(folder / "incoming" / "b001.csv", index=False)
    stale = b.copy()
    stale.loc[stale.series == "s3", "time"] -= BATCH  # s3's rows repeat times it already has
    stale.to_csv(folder / "incoming" / "b002.csv", index=False)
    b.head(1).to_csv(folder / "incoming" / "b0025.csv", index=False)  # one row: too few windows to judge drift
    b.to_csv(folder / "incoming" / "b003.csv", index=False)
    first, second, one_row, third = monitoring_flow(cfg)["batches"]
    h = history(folder)
    assert first["verdict"] == "invalid" and second["verdict"] == "invalid" and one_row["verdict"] == "invalid"
    assert "a drift check needs at least 2" in h["message"].tolist()[2]
    msg1, msg2 = h["message"].tolist()[:2]
    assert "series 's9' is not one of the champion's 4 series" in msg1 and "b001.csv" in msg1
    assert "series 's3'" in msg2 and "does not continue the series" in msg2
    assert third["verdict"] == "ok"  # nothing of the bad batches was kept: the good one still continues every series


def test_the_inference_log_of_a_panel_is_judged_per_series(trained, full):
    """Logged windows of two series (as the service logs them, each naming its series) and their posted actuals: the
    series whose actuals moved has the error, the other does not."""
    from rnn_pipeline import registry
    from rnn_pipeline.config import load_config
    from rnn_pipeline.forecasting.windows import lag_matrix, target_matrix
    from rnn_pipeline.panel.bundle import PanelInputs
    from rnn_pipeline.panel.monitoring import PanelMonitor
    from rnn_pipeline.serving.inference_log import encode
    from rnn_pipeline.tracking import mlflow_stores

    folder = trained
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    with mlflow_stores(uri):
        v1 = client(folder).get_model_version("panmon", "1")
        bundle = registry.bundle_of(registry.load("models:/panmon/1"))
        ref = mlflow.artifacts.download_artifacts(run_id=v1.run_id, artifact_path="reference")
    cfg = load_config(str(folder / "panmon.yaml"))
    mon = PanelMonitor.load(Path(ref), cfg, bundle, "1")
    rows = []
    for sid in ("s1", "s3"):
        values = full[full.series == sid]["value"].to_numpy()[:, None]
        first = np.arange(TRAIN_STEPS, TRAIN_STEPS + 30)
        x, y = lag_matrix(values, first, 24), target_matrix(values, first, 6, 1)
        if sid == "s3":
            y = y + 5.0  # s3's actuals moved away from its forecasts
        got = bundle.predict_windows(x, bundle.series_index([sid] * len(x)))
        for (inp, out, _), actual in zip(bundle.log_records(PanelInputs(x, [sid] * len(x)), got), y):
            posted = {"values": {"value": actual[:, 0].tolist()}}
            rows.append(encode({"inputs": inp, "output": out}) | {"actual": json.dumps(posted)})
    frame = pd.DataFrame(rows)
    outcome = mon.judge_log(cfg, frame, frame)
    assert set(outcome.series) == {"s1", "s3"} and outcome.n_windows == 60
    assert outcome.series["s3"]["error_ratio"] > 20 * outcome.series["s1"]["error_ratio"]
    assert outcome.verdict == "degraded" and outcome.error_ratio >= 3.0
