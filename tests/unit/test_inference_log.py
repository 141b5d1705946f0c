"""The inference log's contract, on SQLite here (and on PostgreSQL in test_stores): predictions written in the
background, actuals all or none, the joins monitoring reads, and rows set aside rather than lost when the database
is away."""

import json

import numpy as np
import pandas as pd
import pytest
from contracts import log_contract, log_rows

from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.serving import inference_log as ilog


def test_inference_log_contract_on_sqlite(tmp_path):
    log_contract(f"sqlite:///{tmp_path / 'log.db'}")


def test_rows_the_database_refuses_are_set_aside_not_lost(tmp_path):
    store = ilog.InferenceLog(f"sqlite:///{tmp_path / 'log.db'}")
    fallback = tmp_path / "failed.jsonl"
    writer = ilog.LogWriter(store, flush_seconds=0.01, fallback=fallback, retries=2)
    store.write_predictions = lambda rows: (_ for _ in ()).throw(RuntimeError("database is away"))
    ids, _, _, rows = log_rows(3)
    writer.put(rows)
    assert writer.flush(10)
    writer.close()
    assert writer.failed == 3 and "database is away" in writer.last_error
    kept = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert [r["prediction_id"] for r in kept] == ids and all(len(r["input_digest"]) == 64 for r in kept)
    store.dispose()


def test_actuals_from_a_file():
    frame = pd.DataFrame({"prediction_id": ["a", "b"], "value_h2": [2.0, 4.0], "value_h1": [1.0, 3.0]})
    assert ilog.actuals_from_frame(frame, "f.csv") == [("a", {"values": {"value": [1.0, 2.0]}}),
                                                       ("b", {"values": {"value": [3.0, 4.0]}})]
    assert ilog.actuals_from_frame(pd.DataFrame({"prediction_id": ["a"], "label": [1]}), "f.csv") == \
        [("a", {"label": "1"})]
    with pytest.raises(DataValidationError, match="f.csv, column 'value_h1', row 2: missing value"):
        ilog.actuals_from_frame(frame.assign(value_h1=[1.0, None]), "f.csv")
    with pytest.raises(DataValidationError, match="missing column 'prediction_id'"):
        ilog.actuals_from_frame(frame.drop(columns="prediction_id"), "f.csv")
    with pytest.raises(DataValidationError, match="needs a 'label' column"):
        ilog.actuals_from_frame(frame[["prediction_id"]], "f.csv")


def test_window_statistics_match_the_reference_features_and_skip_overflowing_windows():
    from rnn_pipeline.monitoring.drift import window_features
    from rnn_pipeline.monitoring.log import window_stats

    rng = np.random.default_rng(1)
    series = rng.normal(size=(80, 2))
    ref = window_features(series, ["a", "b"], 1, 10)  # rows for targets 10..79: windows series[i-10:i]
    x = np.stack([series[i - 10:i] for i in range(10, 80)])
    got = window_stats(x, ["a", "b"])
    np.testing.assert_allclose(got.to_numpy(), ref[got.columns].to_numpy(), rtol=1e-9, atol=1e-12)
    huge = x.copy()
    huge[3] = 1e300
    assert len(window_stats(huge, ["a", "b"])) == len(x) - 1
