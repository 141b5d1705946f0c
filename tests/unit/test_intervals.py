"""Prediction intervals (split conformal on the validation windows): the half-widths' quantile, bounds around every
forecast in its own units (per series for panels), nested levels, coverage measured on data of known noise, the
saved model keeping them, and the config's levels."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline import tasks, tune
from rnn_pipeline.bundle import load_bundle
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.data.datasets import synthetic_panel
from rnn_pipeline.forecasting import intervals
from rnn_pipeline.forecasting.windows import WindowSet


class Zero(torch.nn.Module):
    """Forecasts 0 for every step and target: its errors are the targets themselves."""

    def __init__(self, horizon, targets):
        super().__init__()
        self.h, self.t = horizon, targets

    def forward(self, x, all_steps=False):
        return torch.zeros(len(x), self.h, self.t)


def test_the_half_width_is_the_finite_sample_quantile_of_the_absolute_validation_errors():
    y = np.random.default_rng(0).permutation(np.arange(1.0, 201.0))  # the zero model's errors: 1..200, shuffled
    z = torch.from_numpy(np.r_[np.zeros(2), y].astype("float32"))[:, None]
    val = WindowSet(z, 1, 2, 1, np.arange(2, 202))  # 200 windows of L = 2, H = 1: targets 1..200
    hw = intervals.conformal_halfwidths(Zero(1, 1), val, [0.8, 0.95])
    # the ceil((n + 1) a)-th smallest of n = 200 errors: the 161st (161.0) and the 191st (191.0)
    assert hw[:, 0, 0].tolist() == [161.0, 191.0]


def test_interval_scores_on_known_numbers():
    y_true = np.array([0.0, 1.0, 5.0])[:, None, None]  # inside, on the bound, 3 above the upper bound
    y_pred = np.zeros((3, 1, 1))
    m = intervals.interval_metrics(y_true, intervals.bounds(y_pred, np.full((1, 1, 1, 1), 2.0)), np.array([2.0]),
                                   [0.8])
    # on the std scale (std 2): actuals 0, 0.5, 2.5, bounds -1 and 1
    assert m["coverage_80"] == pytest.approx(2 / 3) and m["std_width_80"] == pytest.approx(2.0)
    assert m["std_interval_score_80"] == pytest.approx(2 + (2 / 0.2) * 1.5 / 3)  # width + 2/alpha * 1.5 once
    lo = [0.1 * 1, 0.1 * 1.5, 0.1 * 3.5]  # tau 0.1 below the actual: tau * distance
    hi = [0.1 * 1, 0.1 * 0.5, 0.9 * 1.5]  # tau 0.9: (1 - tau) * distance when below, tau * distance above
    assert m["std_pinball"] == pytest.approx(np.mean(lo + hi))


def _noisy_series(n=3000, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return pd.DataFrame({"time": t, "value": np.sin(2 * np.pi * t / 24) + noise * rng.standard_normal(n)})


def test_intervals_cover_close_to_their_level_on_a_series_of_known_noise_and_survive_saving(tmp_path):
    cfg = PipelineConfig(name="iv", data={"path": "x.csv", "target_columns": ["value"]},
                         features={"window": 48, "horizon": 4}, split={"val": 0.3, "test": 0.3},
                         model={"architecture": "direct", "norm": "none", "highway": True, "hidden": 8},
                         tuning={"n_trials": 0}, training={"max_epochs": 3, "ensemble_trials": 1},
                         evaluation={"intervals": [0.8, 0.95], "season": None, "plots": False})
    t = tasks.for_config(cfg)
    frame = _noisy_series()
    data = t.prepare(t.read(frame, "s.csv"), "s.csv")
    params = tune.default_params(cfg)
    torch.manual_seed(0)
    fit = tune.fit_final([params], data, cfg, device="cpu")
    b = t.bundle(fit.model, data, params)
    assert b.levels == [0.8, 0.95] and np.asarray(b.intervals["halfwidth"]).shape == (2, 4, 1)
    ev = t.evaluate(data, b, None)
    m = ev["metrics"]
    # Gaussian noise of std 0.3 around a learnable cycle: coverage near the level, and the 95% interval about
    # 1.96 / 1.28 times the 80% one
    assert 0.72 < m["coverage_80"] < 0.88 and 0.90 < m["coverage_95"] < 0.99
    assert 1.3 < m["std_width_95"] / m["std_width_80"] < 1.8
    hist = frame.tail(48)
    out = b.predict_frame(hist)
    lo80, hi80, lo95, hi95 = (out[f"value_h1_{s}"].iloc[0] for s in ("lo80", "hi80", "lo95", "hi95"))
    assert lo95 < lo80 < out["value_h1"].iloc[0] < hi80 < hi95  # nested, around the forecast
    paths = b.save(tmp_path)
    again = load_bundle(paths["preprocess"], paths["weights"])
    pd.testing.assert_frame_equal(again.predict_frame(hist), out)
    [answer] = again.answers(again.predict_windows(hist[["value"]].to_numpy()[None]))
    assert answer["intervals"]["80"]["lo"]["value"][0] == pytest.approx(lo80)


def test_a_panels_intervals_are_each_series_own_size():
    frame = synthetic_panel(2, 400, season=12, seed=6, regime_switches=False)
    frame.loc[frame.series == "s1", "value"] *= 10  # ten times the size (noise included)
    cfg = PipelineConfig(name="pi", data={"path": "x.csv", "id_column": "series", "target_columns": ["value"]},
                         features={"window": 24, "horizon": 3}, split={"val": 0.2, "test": 0.2},
                         tuning={"n_trials": 0}, training={"max_epochs": 2, "ensemble_trials": 1})
    t = tasks.for_config(cfg)
    data = t.prepare(t.read(frame, "p.csv"), "p.csv")
    params = tune.default_params(cfg)
    fit = tune.fit_final([params], data, cfg, device="cpu")
    b = t.bundle(fit.model, data, params)
    hist = pd.concat([frame[frame.series == s].tail(24) for s in ("s0", "s1")])
    out = b.predict_frame(hist)
    width = (out["value_h1_hi80"] - out["value_h1_lo80"]).to_numpy()
    scale = [p.scaling.scale[0] for p in data.parts]  # each series' training std
    assert scale[1] / scale[0] > 5
    assert width[1] / width[0] == pytest.approx(scale[1] / scale[0], rel=1e-6)  # one calibration, each series' size
    assert "coverage_80" in t.evaluate(data, b, None)["metrics"]


def test_no_intervals_when_the_config_asks_for_none_and_levels_are_checked():
    cfg = PipelineConfig(name="n", data={"path": "x.csv"}, evaluation={"intervals": []})
    assert tasks.for_config(cfg).intervals(None, None, 10) is None
    assert PipelineConfig(name="n", data={"path": "x.csv"}, evaluation={"intervals": [0.95, 0.8, 0.8]}).evaluation \
        .intervals == [0.8, 0.95]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        PipelineConfig(name="n", data={"path": "x.csv"}, evaluation={"intervals": [80]})


def test_monitoring_reports_the_champions_interval_coverage_on_a_judged_batch():
    from types import SimpleNamespace

    from rnn_pipeline.config import load_config
    from rnn_pipeline.forecasting.monitoring import ForecastingMonitor
    from rnn_pipeline.monitoring.drift import DriftResult

    halfwidths = np.array([1.0, 2.0])[:, None, None, None]  # (levels, 1, H, T)
    bundle = SimpleNamespace(levels=[0.8, 0.95], halfwidths=lambda series=None: halfwidths)
    m = ForecastingMonitor(None, {"test_mse": 1.0}, None, bundle, "3")
    y_pred = np.zeros((10, 1, 1))
    y_true = np.r_[np.zeros(6), np.full(2, 1.5), np.full(2, 3.0)][:, None, None]  # 6 within 1, 8 within 2
    out = m._outcome(load_config("seed_sine"), DriftResult(0.0, 0), y_true, y_pred)
    assert out.coverage == {"80": pytest.approx(0.6), "95": pytest.approx(0.8)}
    assert out.metrics()["champion_coverage_80"] == pytest.approx(0.6)
    assert "80% interval covers 60.0%" in m.describe(out)
    old = ForecastingMonitor(None, {"test_mse": 1.0}, None, SimpleNamespace(), "3")  # registered before intervals
    assert old._outcome(load_config("seed_sine"), DriftResult(0.0, 0), y_true, y_pred).coverage is None
