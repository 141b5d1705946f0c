"""Store contracts, shared by the unit tests (on SQLite) and tests/flows/test_stores.py (on PostgreSQL): a module of
its own, so that either file also runs alone."""

import json

import numpy as np
import pytest

from rnn_pipeline.errors import DataValidationError, PipelineError
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.monitoring.store import LockHeld, MonitoringStore
from rnn_pipeline.serving import inference_log as ilog

# what the log keeps of a prediction depends only on the columns, not on the network or the scaling
BUNDLE = ForecastBundle(None, None, target_columns=["value"], feature_columns=["temp"], window=5, horizon=2)


def log_rows(n, version="1", horizon=2, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 5, 2)), rng.normal(size=(n, horizon, 1))
    ids = [ilog.new_id() for _ in range(n)]
    return ids, x, y, ilog.prediction_rows(BUNDLE, x, y, ids, version, "m", "api", 1.5)


def log_contract(url: str) -> None:
    store = ilog.InferenceLog(url)
    try:
        ids, x, y, rows = log_rows(30)
        writer = ilog.LogWriter(store, flush_seconds=0.05)
        writer.put(rows[:10])
        writer.put(rows[10:])
        assert writer.flush(10) and writer.written == 30 and writer.failed == 0
        writer.close()
        got = store.predictions("m")
        assert got["prediction_id"].tolist() == ids and got["seq"].is_monotonic_increasing
        first = got.iloc[0]
        assert json.loads(first.inputs) == {"columns": ["value", "temp"], "values": x[0].tolist()}
        assert json.loads(first.output) == {"value": y[0, :, 0].tolist()}
        assert first.input_digest == ilog.digest({"columns": ["value", "temp"], "values": x[0].tolist()})
        assert first.model_version == "1" and first.latency_ms == 1.5 and first.actual is None

        # actuals: all or none
        good = [(ids[i], {"values": {"value": [1.0, 2.0]}}) for i in range(5)]
        assert store.add_actuals("m", good) == 5
        for bad, error in [([(ids[5], {"values": {"value": [1.0]}})], DataValidationError),        # wrong horizon
                           ([(ids[6], {"values": {"other": [1.0, 2.0]}})], DataValidationError),   # wrong target
                           ([(ids[7], {"label": "x"})], DataValidationError),                       # a label
                           ([(ids[8], {"values": {"value": [1.0, 2.0]}}), ("nope", {"label": "x"})],
                            ilog.UnknownPredictions),
                           ([(ids[9], {"values": {"value": [1.0, 2.0]}}), good[0]], ilog.DuplicateActuals),
                           ([(ids[9], {"values": {"value": [1.0, 2.0]}})] * 2, DataValidationError)]:
            with pytest.raises(error):
                store.add_actuals("m", bad)
        with pytest.raises(ilog.UnknownPredictions):  # another model's predictions are not this model's
            store.add_actuals("other-model", [(ids[10], {"values": {"value": [1.0, 2.0]}})])
        labelled = store.labelled("m")
        assert labelled["prediction_id"].tolist() == ids[:5]
        assert store.labelled("m", after_actual_seq=int(labelled["actual_seq"].iloc[2]))["prediction_id"].tolist() \
            == ids[3:5]
        assert store.predictions("m", after_seq=int(got["seq"].iloc[-3]))["prediction_id"].tolist() == ids[-2:]
        assert store.last_seqs("m") == (int(got["seq"].max()), int(labelled["actual_seq"].max()))
        assert store.last_seqs("nobody") == (0, 0)
    finally:
        store.dispose()


def _row(digest, **kw):
    return {"model_name": "m", "batch": f"{digest}.csv", "digest": digest, "status": "judged", "verdict": "ok",
            "action": "none", "drift_share": 0.25, "feature_scores": {"x": {"score": 0.1, "drifted": False}}, **kw}


def store_contract(url):
    store = MonitoringStore(url)
    try:
        store.record(_row("d1"))
        with pytest.raises(PipelineError, match="already judged"):
            store.record(_row("d1", verdict="drift"))
        row_id = store.record(_row("d2", verdict="drift", action="retrain started"))
        store.update(row_id, action="retrain → promoted", new_version="2")
        hist = store.history("m")
        assert hist["verdict"].tolist() == ["ok", "drift"]
        assert hist["action"].tolist() == ["none", "retrain → promoted"]
        assert store.seen("m", "d2")["new_version"] == "2" and store.seen("m", "d3") is None
        with store.lock("monitor:m", ttl_seconds=60):
            with pytest.raises(LockHeld, match="another monitoring run is in progress"):
                with store.lock("monitor:m", ttl_seconds=60):
                    pass
        with store.lock("monitor:m", ttl_seconds=60):  # released after the first holder
            pass
    finally:
        store.dispose()
