"""Model behaviour: it learns, it fails loudly on NaN, and the bundle round-trips exactly."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline.data import datasets
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.forecasting.windows import lag_matrix, prepare_series
from rnn_pipeline.models import ForecasterSpec, RNNForecaster
from rnn_pipeline.train import TrainingDiverged, fit, setup_torch


@pytest.fixture(scope="module")
def seed_data():
    time, values = validate_series(datasets.seed_sine(), "s", "time", ["value"], [], "error")
    return prepare_series(time, values, "s", ["value"], [], window=50, max_window=50, horizon=3, scaler="standard",
                          val=0.15, test=0.2)


def spec(data, cell="gru", hidden=16):
    return ForecasterSpec(cell=cell, hidden=hidden, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=data.horizon)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_every_cell_shapes(cell):
    m = RNNForecaster(ForecasterSpec(cell=cell, hidden=8, layers=2, dropout=0.1, n_features=3, n_targets=2, horizon=4))
    x = torch.randn(5, 11, 3)
    assert m(x).shape == (5, 4, 2) and m(x, all_steps=True).shape == (5, 11, 4, 2)


def test_training_learns_the_seed_series_and_restores_best_weights(seed_data):
    setup_torch(1, 0)
    res = fit(spec(seed_data), seed_data.windows("train", 50), seed_data.windows("val", 50), lr=5e-3, batch_size=32,
              max_epochs=15, patience=15, seed=0)
    vals = [h["val_loss"] for h in res.history]
    assert res.best_val == min(vals) and res.best_epoch == int(np.argmin(vals)) + 1
    assert res.best_val < 0.2 * vals[0]  # it learned: a fifth of the first epoch's loss or better
    assert res.best_val < 0.1  # scaled units: the series has variance ~1 there


def test_fit_is_reproducible(seed_data):
    kw = dict(lr=5e-3, batch_size=32, max_epochs=3, patience=5, seed=3)
    a = fit(spec(seed_data), seed_data.windows("train", 50), seed_data.windows("val", 50), **kw)
    b = fit(spec(seed_data), seed_data.windows("train", 50), seed_data.windows("val", 50), **kw)
    assert a.best_val == b.best_val


def test_all_steps_loss_trains(seed_data):
    res = fit(spec(seed_data, "lstm"), seed_data.windows("train", 50), seed_data.windows("val", 50), lr=5e-3,
              batch_size=32, max_epochs=4, patience=5, loss_steps="all", burn_in=0.5)
    first = res.history[0]
    # it learned (4 epochs take the validation MSE from ~0.7 to ~0.03 in scaled units); the best is at most the
    # first epoch's by construction, so the bar is a fifth of it, and the training loss fell as much
    assert res.best_val < 0.2 * first["val_loss"] and res.best_val < 0.1
    assert res.history[-1]["train_loss"] < 0.2 * first["train_loss"]


def test_divergence_is_an_error(seed_data):
    with pytest.raises(TrainingDiverged, match="not finite"):
        fit(spec(seed_data, "rnn_relu"), seed_data.windows("train", 50), seed_data.windows("val", 50), lr=1e6,
            batch_size=32, max_epochs=5, patience=5, clip_grad_norm=None, optimizer="sgd")


def test_bundle_round_trip_is_exact_and_in_original_units(tmp_path, seed_data):
    res = fit(spec(seed_data), seed_data.windows("train", 50), seed_data.windows("val", 50), lr=5e-3, batch_size=32,
              max_epochs=2, patience=5)
    bundle = ForecastBundle(res.model, seed_data.scaling, ["value"], [], 50, 3)
    paths = bundle.save(tmp_path)
    loaded = ForecastBundle.load(paths["preprocess"], paths["weights"])
    idx = seed_data.points.first_targets("test", 50, 3)
    x = lag_matrix(seed_data.values, idx, 50)
    a, b = bundle.predict_windows(x), loaded.predict_windows(x)
    np.testing.assert_array_equal(a, b)
    # original units: the scaled model output mapped back through the training scaler
    with torch.no_grad():
        z = res.model(torch.from_numpy(seed_data.scaling.transform(x).astype("float32"))).numpy()
    np.testing.assert_allclose(a, z * seed_data.scaling.scale[0] + seed_data.scaling.offset[0], rtol=1e-6)
    # the long-frame interface gives the same numbers, one row per window_id, in order of appearance
    frame = loaded.windows_frame(x[:5])
    frame["window_id"] = frame["window_id"].map({0: 40, 1: 3, 2: 17, 3: 1, 4: 2})
    out = loaded.predict_frame(frame)
    assert out["window_id"].tolist() == [40, 3, 17, 1, 2]
    np.testing.assert_allclose(out[["value_h1", "value_h2", "value_h3"]].to_numpy(), a[:5, :, 0], rtol=1e-6)


def test_bundle_rejects_bad_history(tmp_path, seed_data):
    res = fit(spec(seed_data), seed_data.windows("train", 50), seed_data.windows("val", 50), lr=5e-3, batch_size=32,
              max_epochs=1, patience=5)
    bundle = ForecastBundle(res.model, seed_data.scaling, ["value"], [], 50, 3)
    with pytest.raises(DataValidationError, match="has 10 rows of history; the model needs the last 50"):
        bundle.predict_frame(pd.DataFrame({"value": np.arange(10.0)}))
    with pytest.raises(DataValidationError, match="lacks column"):
        bundle.predict_frame(pd.DataFrame({"other": np.arange(60.0)}))
    bad = pd.DataFrame({"value": np.arange(60.0).astype(object)})
    bad.loc[7, "value"] = "x"
    with pytest.raises(DataValidationError, match="column 'value', row 8: not a finite number"):
        bundle.predict_frame(bad)
    # a plain history with no window_id: the last 50 rows forecast the next 3
    out = bundle.predict_frame(pd.DataFrame({"value": seed_data.values[:120, 0]}))
    np.testing.assert_allclose(out.iloc[0, 1:].to_numpy(dtype=float),
                               bundle.predict_windows(seed_data.values[None, 70:120])[0, :, 0], rtol=1e-6)


def test_evaluation_per_target_and_horizon_matches_a_direct_computation():
    from rnn_pipeline.forecasting.evaluation import evaluate

    frame = datasets.greensboro_weather().iloc[:1500]
    time, values = validate_series(frame, "w", "time", ["temp_air", "pressure"], ["ghi"], "error")
    data = prepare_series(time, values, "w", ["temp_air", "pressure"], ["ghi"], window=24, max_window=24, horizon=2,
                          scaler="standard", val=0.15, test=0.2)

    def shifted(x):  # a deliberately crude forecaster: the last observed target values, +1
        return np.repeat(x[:, -1:, :2], 2, axis=1) + 1.0

    ev = evaluate(data, shifted, 24, None, [1.0])
    idx = data.points.first_targets("test", 24, 2)
    for j, col in enumerate(["temp_air", "pressure"]):
        truth = np.stack([data.values[idx, j], data.values[idx + 1, j]], axis=1)
        pred = np.repeat(data.values[idx - 1, j][:, None], 2, axis=1) + 1.0
        assert ev["per_target"][col]["mse"] == pytest.approx(np.mean((truth - pred) ** 2))
    assert ev["mse_by_horizon"][0] < ev["mse_by_horizon"][1]  # further ahead is harder
    # the same forecaster without the +1 is exactly the persistence baseline
    ev0 = evaluate(data, lambda x: np.repeat(x[:, -1:, :2], 2, axis=1), 24, None, [1.0])
    assert ev0["metrics"]["mse"] == pytest.approx(ev0["baselines"]["persistence"]["mse"])
    assert ev0["skill"]["persistence"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("norm", ["revin", "last"])
def test_the_per_window_norm_leaves_exempt_covariates_as_they_are(norm):
    """A covariate constant over the window (a static value, a slow calendar phase) is erased by a window's own mean
    or last value; the exempt columns at the end reach the network as they are."""
    from rnn_pipeline.models import ForecasterSpec, build_forecaster

    torch.manual_seed(0)
    x = torch.randn(4, 12, 3)
    moved = x.clone()
    moved[..., 2] += 3.0  # the last column: constant shift
    for n_exempt, changes in ((0, False), (1, True)):
        m = build_forecaster(ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=3, n_targets=1,
                                            horizon=2, norm=norm, n_exempt=n_exempt)).eval()
        with torch.no_grad():
            assert torch.allclose(m(x), m(moved), atol=1e-5) != changes, (norm, n_exempt)
