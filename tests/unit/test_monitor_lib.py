"""The monitoring library without Prefect: window features, Evidently drift, errors, verdicts, batches, the store."""

import numpy as np
import pandas as pd
import pytest
from contracts import store_contract

from rnn_pipeline.data import datasets
from rnn_pipeline.errors import DataValidationError, PipelineError
from rnn_pipeline.forecasting import monitoring as forecasting
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring.store import MonitoringStore


def test_window_features_match_a_direct_computation():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(40, 2))
    f = forecasting.window_features(v, ["a", "b"], 1, window=5, start=10)
    assert list(f.columns) == ["a_level", "a_spread", "a_step", "b_level", "b_spread", "b_step", "a_next"]
    assert len(f) == 30  # targets 10..39
    for row, i in enumerate(range(10, 40)):
        w = v[i - 5:i]
        np.testing.assert_allclose(f.iloc[row][["a_level", "b_level"]], w.mean(0))
        np.testing.assert_allclose(f.iloc[row][["a_spread", "b_spread"]], w.std(0))
        np.testing.assert_allclose(f.iloc[row][["a_step", "b_step"]], np.abs(np.diff(w, axis=0)).mean(0))
        assert f.iloc[row]["a_next"] == v[i, 0]


def _features(frame, start, window=50):
    return forecasting.window_features(frame[["value"]].to_numpy(), ["value"], 1, window, start=start)


def test_drift_report_separates_a_regime_shift_from_stationary_batches():
    """The demo's setting: wasserstein, threshold 0.25, share 0.5, batches of 250 points."""
    ref = _features(datasets.seed_sine(), 0)
    shares = []
    for k in range(6):
        s = 1000 + 250 * k
        cur = datasets.sine_stream(s - 50, 300, seed=k)
        shares.append(monitor.drift_report(ref, _features(cur, 50), "wasserstein", 0.25).share)
    assert max(shares) < 0.5, shares
    shifted = datasets.sine_stream(5000, 300, amplitude=1.6, frequency=2.0, seed=9)
    res = monitor.drift_report(ref, _features(shifted, 50), "wasserstein", 0.25)
    assert res.share >= 0.75
    assert set(res.scores) == {"value_level", "value_spread", "value_step", "value_next"}
    assert all(v["threshold"] == 0.25 and isinstance(v["drifted"], bool) for v in res.scores.values())
    assert res.n_drifted == sum(v["drifted"] for v in res.scores.values())


@pytest.mark.parametrize("batch", [100, 250])
def test_auto_thresholds_are_calibrated_at_the_batch_size(batch):
    """Fixed thresholds either alarm on stationary batches of 100 windows or miss shifts; thresholds calibrated on the
    reference at the batch's size do neither."""
    ref = _features(datasets.seed_sine(), 0)
    for k in range(5):
        cur = datasets.sine_stream(1000 + batch * k - 50, batch + 50, seed=k)
        assert monitor.drift_report(ref, _features(cur, 50), "wasserstein", "auto").share == 0.0
    shifted = datasets.sine_stream(5000, batch + 50, amplitude=1.6, frequency=2.0, seed=9)
    res = monitor.drift_report(ref, _features(shifted, 50), "wasserstein", "auto")
    assert res.share >= 0.5
    small, large = (monitor.calibrate_thresholds(ref, b) for b in (100, 250))
    assert all(small[c] > large[c] for c in ref.columns if large[c] > 0.1)  # smaller batches wander further
    with pytest.raises(PipelineError, match="calibrated for the wasserstein method"):
        monitor.drift_report(ref, ref, "ks", "auto")


def test_p_value_methods_flag_low_scores():
    ref = _features(datasets.seed_sine(), 0)
    shifted = datasets.sine_stream(5000, 300, amplitude=1.6, frequency=2.0, seed=9)
    res = monitor.drift_report(ref, _features(shifted, 50), "ks", 0.05)
    assert res.share >= 0.75
    assert all(v["drifted"] == (v["score"] < 0.05) for v in res.scores.values())


def test_drift_report_needs_windows():
    ref = _features(datasets.seed_sine(), 0)
    with pytest.raises(PipelineError, match="at least 2 windows"):
        monitor.drift_report(ref, ref.iloc[:1], "wasserstein", None)


def test_batch_errors_use_history_for_inputs_and_score_only_the_batch():
    values = np.arange(30, dtype=float)[:, None]
    y_true, y_pred = forecasting.batch_errors(lambda x: x[:, -1:, :] + 1, values, 1, window=4, horizon=2, start=20)
    assert y_true.shape == (9, 2, 1)  # first targets 20..28: both horizon steps inside the data
    np.testing.assert_array_equal(y_true[:, 0, 0], np.arange(20, 29))
    np.testing.assert_array_equal(y_pred[:, 0, 0], np.arange(20, 29))
    np.testing.assert_array_equal(y_true[:, :1], y_pred)


@pytest.mark.parametrize("share,ratio,expected", [(0.0, 1.0, "ok"), (0.5, 1.0, "drift"), (0.49, None, "ok"),
                                                  (0.0, 1.5, "degraded"), (1.0, 2.0, "degraded"),
                                                  (0.0, float("inf"), "degraded")])
def test_verdict_thresholds(share, ratio, expected):
    assert monitor.verdict(share, ratio, 0.5, 1.5) == expected


def test_read_batch_validates_like_training_data_and_must_continue_the_series():
    ok = forecasting.read_batch(pd.DataFrame({"time": [5, 6], "value": ["1.5", 2]}), "b.csv", "time", ["value"], "error",
                            after=4)
    assert ok["value"].tolist() == [1.5, 2.0]
    with pytest.raises(DataValidationError, match=r"b.csv, column 'value', row 2: non-numeric value \(value: 'x'\)"):
        forecasting.read_batch(pd.DataFrame({"time": [5, 6], "value": [1, "x"]}), "b.csv", "time", ["value"], "error")
    with pytest.raises(DataValidationError, match="missing column 'value'"):
        forecasting.read_batch(pd.DataFrame({"time": [5], "v": [1]}), "b.csv", "time", ["value"], "error")
    with pytest.raises(DataValidationError, match="does not continue the series"):
        forecasting.read_batch(pd.DataFrame({"time": [3, 6], "value": [1, 2]}), "b.csv", "time", ["value"], "error",
                           after=4)


def test_stream_and_retrain_window():
    ref = pd.DataFrame({"t": [1, 2, 3], "v": [1.0, 2, 3]})
    b1, b0 = pd.DataFrame({"t": [4, 5], "v": [4.0, 5]}), pd.DataFrame({"t": [0], "v": [0.0]})
    full = forecasting.stream(ref, [b1, b0], "t")
    assert full["t"].tolist() == [1, 2, 3, 4, 5]  # a batch from before the reference is not part of it
    assert forecasting.retrain_window(full, "recent", 2)["t"].tolist() == [4, 5]
    assert len(forecasting.retrain_window(full, "reference+new", 2)) == 5


def test_list_batches_in_name_order(tmp_path):
    for n in ("b.csv", "a.parquet", ".hidden.csv", "notes.txt"):
        (tmp_path / n).write_text("x")
    (tmp_path / "processed").mkdir()
    assert [p.name for p in monitor.list_batches(tmp_path)] == ["a.parquet", "b.csv"]
    assert monitor.list_batches(tmp_path / "absent") == []




def test_store_on_sqlite(tmp_path):
    store_contract(f"sqlite:///{tmp_path / 'monitoring.db'}")


def test_a_stale_lock_is_taken_over(tmp_path):
    import time

    from rnn_pipeline.locks import locks

    store = MonitoringStore(f"sqlite:///{tmp_path / 'm.db'}")
    with store.lock("monitor:m", ttl_seconds=60):  # creates the table
        pass
    with store.engine.begin() as c:  # a holder on another host whose heartbeat stopped two minutes ago
        c.execute(locks.insert().values(name="monitor:m", owner="elsewhere:1:x", host="elsewhere", pid=1,
                                        since=time.time() - 600, heartbeat=time.time() - 120))
    with store.lock("monitor:m", ttl_seconds=60) as owner:
        assert owner != "elsewhere:1:x"
    store.dispose()


def test_a_store_that_cannot_be_opened_says_which(tmp_path):
    with pytest.raises(PipelineError, match="monitoring store .* cannot be opened"):
        MonitoringStore(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'm.db'}")


def test_a_store_from_the_previous_version_gains_the_new_columns(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:  # the monitoring_batches table as the forecasting-only version created it
        c.execute(sa.text(
            "CREATE TABLE monitoring_batches (id INTEGER PRIMARY KEY AUTOINCREMENT, model_name VARCHAR(200) NOT NULL, "
            "batch VARCHAR(500) NOT NULL, digest VARCHAR(64) NOT NULL, status VARCHAR(20) NOT NULL, "
            "verdict VARCHAR(20) NOT NULL, drift_share FLOAT, error_ratio FLOAT, champion_mse FLOAT, "
            "reference_mse FLOAT, champion_version VARCHAR(20), action VARCHAR(40) NOT NULL, new_version VARCHAR(20), "
            "new_champion_version VARCHAR(20), n_rows INTEGER, n_windows INTEGER, first_time VARCHAR(40), "
            "last_time VARCHAR(40), feature_scores TEXT, data_path VARCHAR(1000), report_path VARCHAR(1000), "
            "mlflow_run_id VARCHAR(64), message TEXT, created_at DATETIME NOT NULL, "
            "CONSTRAINT uq_monitoring_batch UNIQUE (model_name, digest))"))
        c.execute(sa.text(
            "INSERT INTO monitoring_batches (model_name, batch, digest, status, verdict, action, created_at) "
            "VALUES ('m', 'old.csv', 'abc', 'judged', 'ok', 'none', '2026-01-01 00:00:00')"))
    engine.dispose()
    store = MonitoringStore(url)
    try:
        store.record({"model_name": "m", "batch": "new.csv", "digest": "def", "status": "judged", "verdict": "ok",
                      "action": "none", "champion_accuracy": 0.9, "champion_f1": 0.8, "n_labelled": 40})
        hist = store.history("m")
    finally:
        store.dispose()
    assert list(hist.batch) == ["old.csv", "new.csv"]
    assert np.isnan(hist.champion_accuracy[0]) and hist.champion_accuracy[1] == 0.9 and hist.n_labelled[1] == 40


def test_categorical_thresholds_are_on_the_reports_scale():
    """A categorical column is calibrated with Evidently's own Jensen-Shannon test: the report scores a block of the
    reference no further than the calibration's worst block."""
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(size=400), "label": rng.choice(["a", "b", "c"], 400, p=[0.6, 0.3, 0.1])})
    worst = monitor.calibrate_thresholds(ref, 100, k=1.0, floor=0.0, categorical=("label",))
    res = monitor.drift_report(ref, ref.iloc[:100], "wasserstein", "auto", 1.0, categorical=("label",))
    assert 0 < res.scores["label"]["score"] <= worst["label"] + 1e-12


def test_the_reference_picks_the_tasks_monitoring(tmp_path):
    from rnn_pipeline.config import load_config
    from rnn_pipeline.forecasting.monitoring import ForecastingMonitor
    from rnn_pipeline.monitoring.champion import for_reference, monitor_class

    frame = datasets.seed_sine().iloc[:200]
    meta = forecasting.reference_meta("time", ["value"], 1, 10, 1, 0.5, frame["time"], "d")  # no task: forecasting
    folder = forecasting.write_reference(tmp_path / "ref", frame["time"], frame[["value"]].to_numpy(), meta)
    m = for_reference(folder, load_config("seed_sine"), None, "3")
    assert isinstance(m, ForecastingMonitor) and m.version == "3" and len(m.features) == 190
    assert monitor_class("classification").task == "classification"
    with pytest.raises(PipelineError, match=r"unknown task 'x' \(one of forecasting, classification, panel\)"):
        monitor_class("x")
