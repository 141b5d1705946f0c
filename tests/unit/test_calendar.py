"""Calendar features (features.calendar): known-future covariates computed from the timestamps, the same way in
training, prediction, serving and monitoring; and they reach the model: a spike at one hour of the day that a short
window cannot see coming is forecast only with them."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline import tasks, tune
from rnn_pipeline.bundle import load_bundle
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting import calendar


def spiky(n=24 * 60, seed=0, tz=None):
    """Hourly noise with a spike of 5 at 12:00 every day: nothing in the 4 hours before announces it."""
    rng = np.random.default_rng(seed)
    time = pd.date_range("2024-01-01", periods=n, freq="h", tz=tz)
    value = 0.3 * rng.standard_normal(n) + np.where(time.hour == 12, 5.0, 0.0)
    return pd.DataFrame({"time": time, "value": value})


def config(cal=(), **over) -> PipelineConfig:
    d = {"name": "cal", "data": {"path": "x.csv", "time_column": "time", "target_columns": ["value"]},
         "features": {"window": 4, "horizon": 1, "calendar": list(cal)}, "split": {"val": 0.15, "test": 0.15},
         "model": {"cell": "gru", "hidden": 16, "norm": "none"},
         "tuning": {"n_trials": 0}, "training": {"max_epochs": 15, "patience": 15, "ensemble_trials": 1, "lr": 0.01},
         "evaluation": {"intervals": []}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    return PipelineConfig(**d)


def fitted(frame, cal=(), **over):
    t = tasks.for_config(config(cal, **over))
    data = t.prepare(t.read(frame, "x.csv"), "x.csv")
    params = tune.default_params(t.cfg)
    torch.manual_seed(0)
    fit = tune.fit_final([params], data, t.cfg, device="cpu")
    return t, data, t.bundle(fit.model, data, params)


def test_cycles_are_phases_as_sine_and_cosine():
    cal = calendar.frame(pd.Series(pd.to_datetime(["2024-03-04 06:00", "2024-03-04 18:00"])), ["hour", "dayofweek"])
    assert cal.columns.tolist() == ["cal_hour_sin", "cal_hour_cos", "cal_dayofweek_sin", "cal_dayofweek_cos"]
    np.testing.assert_allclose(cal["cal_hour_sin"], [1.0, -1.0], atol=1e-12)  # 06:00 and 18:00: a quarter, 3 quarters
    assert cal["cal_dayofweek_sin"].iloc[0] == pytest.approx(np.sin(2 * np.pi * 0.25 / 7))  # a Monday, 06:00
    with pytest.raises(DataValidationError, match="column 'time', row 1: features.calendar needs timestamps"):
        calendar.frame(pd.Series([1, 2]), ["hour"])
    with pytest.raises(DataValidationError, match="row 2: not a timestamp"):
        calendar.frame(pd.Series(["2024-01-01", "soon"]), ["hour"])
    with pytest.raises(ValueError, match="calendar"):
        config(["fortnight"])


def test_calendar_columns_reach_the_model_and_forecast_what_the_window_cannot_see():
    frame = spiky()
    scores = {}
    for cal in ((), ("hour",)):
        t, data, b = fitted(frame, cal)
        assert data.feature_columns == calendar.columns(list(cal))
        if cal:  # the phases as they are: no series' own scaler reads an hour its own way
            assert list(data.scaling.offset[1:]) == [0.0, 0.0] and list(data.scaling.scale[1:]) == [1.0, 1.0]
            np.testing.assert_allclose(data.z[:, 1].numpy(), data.values[:, 1], atol=1e-6)
        ev = t.evaluate(data, b, t.season(data))
        scores[cal] = ev["metrics"]["mse"]
    # without the hour, the spike is a surprise (its share of the variance stays); with it, it is forecast
    assert scores[("hour",)] < 0.3 * scores[()], scores


def test_the_bundle_computes_the_calendar_from_the_times_a_request_sends(tmp_path):
    frame = spiky(24 * 20, seed=1, tz="UTC")
    t, data, b = fitted(frame, ("hour", "dayofweek"), training={"max_epochs": 2})
    hist = frame.tail(10)
    out = b.predict_frame(hist)
    # the same inputs as the model's own prepared window ending at the last row
    x = data.values[-4:][None]
    np.testing.assert_allclose(out["value_h1"].to_numpy(), b.predict_windows(x)[:, 0, 0], rtol=1e-6)
    # times as text, with another UTC offset for the same instants: the same answer
    shifted = hist.assign(time=hist.time.dt.tz_convert("Europe/Berlin").astype(str))
    np.testing.assert_allclose(b.predict_frame(shifted)["value_h1"], out["value_h1"], rtol=1e-6)
    with pytest.raises(DataValidationError, match="input lacks column 'time': the model reads calendar features"):
        b.predict_frame(hist.drop(columns="time"))
    # saved and loaded, the bundle keeps its calendar; GET /metadata names it and asks for the times
    paths = b.save(tmp_path)
    loaded = load_bundle(paths["preprocess"], paths["weights"])
    assert loaded.calendar["cycles"] == ["hour", "dayofweek"]
    np.testing.assert_allclose(loaded.predict_frame(hist)["value_h1"], out["value_h1"], rtol=1e-6)
    meta = loaded.describe()
    assert meta["input_columns"] == ["value"] and meta["calendar"] == ["hour", "dayofweek"]
    # the HTTP request: histories with their times; /docs' example is a valid one
    from rnn_pipeline.config import ServingConfig
    from rnn_pipeline.serving.schemas import PredictRequest

    _, example = loaded.request_example()
    req = PredictRequest(**example)
    assert len(req.series[0].time) == 4 and loaded.request_inputs(req, ServingConfig()).shape == (1, 4, 5)
    body = {"series": [{"history": {"value": hist.value.tolist()}, "time": [str(s) for s in hist.time]}]}
    got = loaded.predict_inputs(loaded.request_inputs(PredictRequest(**body), ServingConfig()))
    np.testing.assert_allclose(got[:, 0, 0], out["value_h1"], rtol=1e-6)
    with pytest.raises(DataValidationError, match=r"series\[0\].time: .*send 'time'"):
        loaded.request_inputs(PredictRequest(series=[{"history": {"value": hist.value.tolist()}}]), ServingConfig())


def test_a_numeric_time_column_with_a_calendar_is_refused():
    frame = spiky(200).assign(time=np.arange(200))
    t = tasks.for_config(config(("hour",)))
    with pytest.raises(DataValidationError, match="x.csv, column 'time', row 1: features.calendar needs timestamps"):
        t.read(frame, "x.csv")


def test_monitoring_a_calendar_champion_computes_the_calendar_of_a_batch_and_leaves_it_out_of_drift(tmp_path):
    from rnn_pipeline.forecasting.monitoring import ForecastingMonitor, reference_meta, write_reference

    frame = spiky(24 * 30, seed=2)
    t, data, b = fitted(frame.iloc[: 24 * 25], ("hour",), training={"max_epochs": 2})
    meta = reference_meta("time", [*data.target_columns, *data.feature_columns], 1, b.window, 1, 1.0, data.time, "x")
    mon = ForecastingMonitor.load(write_reference(tmp_path, data.time, data.values, meta), t.cfg, b, "1")
    assert not any(c.startswith("cal_") for c in mon.features.columns)  # a function of the time, not data
    state = mon.initial_state([])
    batch = mon.read_batch(frame.iloc[24 * 25:].reset_index(drop=True), "b.csv", t.cfg, state)
    assert batch.columns.tolist() == ["time", "value", "cal_hour_sin", "cal_hour_cos"]
    np.testing.assert_allclose(batch["cal_hour_sin"], np.sin(2 * np.pi * batch.time.dt.hour / 24), atol=1e-12)
    outcome = mon.judge(t.cfg, state, batch)
    assert outcome.n_windows == 24 * 5 and outcome.champion_mse is not None
