"""Rolling-origin backtests without Prefect: where the origins fall, every model scored from the same origins, refits
at every k-th origin, a panel's origins pooled over its series, and the config's checks."""

import numpy as np
import pandas as pd
import pytest

from rnn_pipeline import tasks
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.data.datasets import synthetic_panel
from rnn_pipeline.errors import ConfigError
from rnn_pipeline.forecasting import backtest
from rnn_pipeline.forecasting.evaluation import persistence
from rnn_pipeline.forecasting.windows import prepare_series


def series(n=600, horizon=6):
    t = np.arange(n)
    y = np.sin(2 * np.pi * t / 24) + 0.1 * np.random.default_rng(0).standard_normal(n) + 5
    return prepare_series(pd.Series(t), pd.DataFrame({"v": y}), "s", ["v"], [], window=24, max_window=24,
                          horizon=horizon, scaler="standard", val=0.2, test=0.2)


def test_origins_step_back_from_the_end_of_the_test_period_and_must_fit_in_it():
    data = series()
    pos = backtest.origin_positions(data, 24, 5, 6)
    assert pos.tolist() == [600 - 6 - 6 * k for k in (4, 3, 2, 1, 0)]  # the last window ends the series
    assert pos[0] >= data.points.test_start
    with pytest.raises(ConfigError, match="backtest: 40 origins 6 steps apart need 240 steps of the test period"):
        backtest.origin_positions(data, 24, 40, 6)


def test_every_model_is_scored_from_the_same_origins_and_summarised_over_them():
    data = series()
    pos = backtest.origin_positions(data, 24, 4, 6)

    def repeat_last(x):  # the RNN's place: here, persistence itself
        return np.repeat(x[:, -1:, :1], data.horizon, axis=1)

    per = backtest.series_forecasts(data, repeat_last, 24, pos, 24, {"ridge": 24, "ridge_last": 24}, [1.0])
    assert set(per) == {"rnn", "persistence", "seasonal_naive", "ridge", "ridge_last"}
    np.testing.assert_allclose(per["rnn"]["mse"], per["persistence"]["mse"])
    truth = np.stack([data.values[p:p + 6, 0] for p in pos])
    np.testing.assert_allclose(per["persistence"]["mae"],
                               np.abs(persistence(data, pos)[..., 0] - truth).mean(axis=1))
    result = backtest.summarise(per, [str(p) for p in pos], 6)
    assert result["n_origins"] == 4 and [o["origin"] for o in result["origins"]] == [1, 2, 3, 4]
    assert result["models"]["rnn"]["mse"] == pytest.approx(per["rnn"]["mse"].mean())
    assert result["models"]["rnn"]["rmse"] == pytest.approx(np.sqrt(per["rnn"]["mse"].mean()))
    assert result["models"]["seasonal_naive"]["std_mse"] < result["models"]["persistence"]["std_mse"]
    assert "persistence" in backtest.table(result, "mse")


def test_refit_every_k_origins_refits_at_the_first_and_every_kth():
    data = series()
    pos = backtest.origin_positions(data, 24, 5, 6)
    calls = []

    def refit(position):
        calls.append(position)
        return lambda x: np.zeros((len(x), data.horizon, 1))

    backtest.series_forecasts(data, None, 24, pos, None, {}, [1.0], refit, 2)
    assert calls == [pos[0], pos[2], pos[4]]


def test_a_task_refit_learns_only_from_before_its_origin(monkeypatch):
    cfg = PipelineConfig(name="b", data={"path": "x.csv", "target_columns": ["v"]},
                         features={"window": 24, "horizon": 6}, tuning={"n_trials": 0},
                         model={"architecture": "direct", "hidden": 8},
                         training={"max_epochs": 1, "ensemble_trials": 1}, backtest={"origins": 2, "refit": 1})
    t = tasks.for_config(cfg)
    data = series()
    from rnn_pipeline import tune

    params = tune.default_params(cfg)
    seen = {}
    real = tune.fit_model

    def spy(p, d, c, **kw):
        seen.setdefault("cuts", []).append((d.points.val_start, d.points.test_start))
        return real(p, d, c, **kw)

    monkeypatch.setattr(tune, "fit_model", spy)
    bundle = t.refit_bundle(params, data, 570, "cpu")
    val_len = data.points.test_start - data.points.val_start
    assert seen["cuts"] == [(570 - val_len, 570)]  # trained on targets before 570 - val_len, stopped on the rest
    assert bundle.predict_windows(np.zeros((2, 24, 1))).shape == (2, 6, 1)
    # the refits' origins, for a flow that fits them elsewhere: origins 1 and 2 (refit 1), given back as fitted
    positions = t.refit_positions(data, bundle, params)
    assert positions == [int(p) for p in backtest.origin_positions(data, 24, 2, 6)]
    fitted = {p: t.refit_bundle(params, data, p, "cpu") for p in positions}
    seen.clear()
    here = t.backtest(data, bundle, None, params=params)
    assert len(seen["cuts"]) == 2  # fitted in the backtest, one after another
    seen.clear()
    given = t.backtest(data, bundle, None, params=params, refitted=fitted)
    assert "cuts" not in seen  # nothing refitted: the given ones forecast
    assert given["models"]["rnn"]["mse"] == pytest.approx(here["models"]["rnn"]["mse"], rel=1e-6)


def test_a_panel_pools_each_origin_over_its_series_on_their_z_scores():
    frame = synthetic_panel(3, 300, season=12, seed=2, regime_switches=False)
    cfg = PipelineConfig(name="p", data={"path": "x.csv", "id_column": "series", "target_columns": ["value"]},
                         features={"window": 24, "horizon": 4}, split={"val": 0.2, "test": 0.2},
                         tuning={"n_trials": 0}, training={"max_epochs": 1, "ensemble_trials": 1},
                         evaluation={"intervals": []})
    t = tasks.for_config(cfg)
    data = t.prepare(t.read(frame, "p.csv"), "p.csv")
    from rnn_pipeline import tune

    params = tune.default_params(cfg)
    fit = tune.fit_final([params], data, cfg, device="cpu")
    bundle = t.bundle(fit.model, data, params)
    result = t.backtest(data, bundle, 12, origins=3, step=4)
    assert result["n_origins"] == 3 and set(result["models"]["rnn"]) >= {"std_mse", "std_mae", "std_rmse"}
    assert "mse" not in result["models"]["rnn"]  # the series' units differ: z-scores only
    # origin 1's pooled figure is the mean of the three series' own
    own = []
    for k, part in enumerate(data.parts):
        pos = backtest.origin_positions(part, 24, 3, 4)
        per = backtest.series_forecasts(part, lambda x, k=k: bundle.predict_windows(x, np.full(len(x), k)), 24, pos,
                                        12, t.chosen_ridge_windows(part, 24, pos), [0.01, 0.1, 1.0, 10.0, 100.0])
        own.append(per["rnn"]["std_mse"][0])
    assert result["origins"][0]["rnn_std_mse"] == pytest.approx(np.mean(own))


def test_the_config_checks_the_backtest():
    base = {"name": "c", "data": {"path": "x.csv"}}
    with pytest.raises(ValueError, match="backtest.gate needs origins > 0 and refit 0"):
        PipelineConfig(**base, backtest={"origins": 3, "refit": 1, "gate": True})
    with pytest.raises(ValueError, match="backtest.refit: single series only"):
        PipelineConfig(**{**base, "data": {"path": "x.csv", "id_column": "s"}}, backtest={"origins": 3, "refit": 1})
    with pytest.raises(ValueError, match="backtest: forecasting only"):
        PipelineConfig(**{**base, "task": "classification"}, backtest={"origins": 3})


def test_rmse_keys_summarise_table_and_plot(tmp_path):
    data = series()
    pos = backtest.origin_positions(data, 24, 3, 6)
    per = backtest.series_forecasts(data, lambda x: np.repeat(x[:, -1:, :1], 6, axis=1), 24, pos, None, {}, [1.0])
    result = backtest.summarise(per, ["a", "b", "c"], 6)
    rnn = result["models"]["rnn"]
    assert rnn["rmse"] == pytest.approx(np.sqrt(rnn["mse"]))  # pooled: the root of the mean mse
    assert rnn["rmse_std"] == pytest.approx(np.std(np.sqrt(per["rnn"]["mse"])))
    assert result["origins"][0]["rnn_std_rmse"] == pytest.approx(np.sqrt(per["rnn"]["std_mse"][0]))
    for key in ("rmse", "std_rmse", "mae"):
        assert f"{key} mean ± std" in backtest.table(result, key)
        assert backtest.plot(tmp_path / f"{key}.png", result, key).exists()


def test_a_panel_series_too_short_for_the_origins_is_named():
    frame = synthetic_panel(2, 300, season=12, seed=3, regime_switches=False)
    frame = frame[(frame.series == "s0") | (frame.time >= 150)]  # s1: 150 rows, a shorter test period
    cfg = PipelineConfig(name="p", data={"path": "x.csv", "id_column": "series", "target_columns": ["value"]},
                         features={"window": 24, "horizon": 4}, split={"val": 0.2, "test": 0.2},
                         tuning={"n_trials": 0}, backtest={"origins": 12})
    t = tasks.for_config(cfg)
    data = t.prepare(t.read(frame, "p.csv"), "p.csv")
    with pytest.raises(ConfigError, match="series 's1': backtest: 12 origins 4 steps apart need 48 steps"):
        t.check_backtest(data)
