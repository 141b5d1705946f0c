"""Quantile forecasters (model.quantiles): the network outputs its quantiles beside its point forecast, trained with the
pinball loss; they never cross, and on a synthetic panel with known Gaussian noise they sit where the noise puts them
(coverage and width); the bundle answers them in every form."""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_panel import fitted

from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.data.datasets import synthetic_panel
from rnn_pipeline.forecasting.windows import pinball_loss
from rnn_pipeline.models import ForecasterSpec, build_forecaster

NOISE = 0.5


@pytest.fixture(scope="module")
def panel():
    frame = synthetic_panel(4, 400, season=12, seed=3, regime_switches=False, noise=NOISE, trend=0.0)
    t, data, b = fitted(frame, model={"quantiles": [0.1, 0.5, 0.9], "norm": "none"}, training={"max_epochs": 20},
                        features={"window": 24})
    return frame, t, data, b


def test_levels_are_checked_and_sorted():
    cfg = PipelineConfig(name="q", data={"builtin": "seed_sine"}, model={"quantiles": [0.9, 0.05, 0.9]})
    assert cfg.model.quantiles == [0.05, 0.9]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        PipelineConfig(name="q", data={"builtin": "seed_sine"}, model={"quantiles": [0.1, 1.0]})
    with pytest.raises(ValueError, match="increasing levels in"):
        ForecasterSpec(cell="gru", hidden=4, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=2,
                       quantiles=(0.9, 0.1))


@pytest.mark.parametrize("channels, norm_kind", [("mixed", "none"), ("independent", "revin"), ("mixed", "last")])
def test_quantiles_never_cross_and_come_beside_the_point_forecast(channels, norm_kind):
    torch.manual_seed(0)
    m = build_forecaster(ForecasterSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_features=3, n_targets=2,
                                        horizon=3, channels=channels, norm=norm_kind, quantiles=(0.1, 0.5, 0.9)))
    x = torch.randn(5, 10, 3)
    q = m(x, quantiles=True)
    assert q.shape == (5, 3, 2, 3)
    assert (q.diff(dim=-1) >= 0).all()
    point, both_q = m(x, quantiles="both")
    assert point.shape == (5, 3, 2) and torch.allclose(point, m(x)) and torch.allclose(both_q, q)
    y = torch.randn(5, 3, 2)  # the pinball loss at 0.5 is half the absolute error
    assert pinball_loss(q[..., 1:2], y, [0.5]).item() == pytest.approx(0.5 * (q[..., 1] - y).abs().mean().item(), rel=1e-6)


def test_on_known_gaussian_noise_the_quantiles_cover_and_spread_as_the_noise_does(panel):
    frame, t, data, b = panel
    ev = t.evaluate(data, b, 12)
    m = ev["metrics"]
    # each quantile holds its share of the test actuals below it, within a few points
    for level, key in ((0.1, "below_q10"), (0.5, "below_q50"), (0.9, "below_q90")):
        assert abs(m[key] - level) < 0.05, (key, m[key])
    assert abs(m["qcoverage_80"] - 0.8) < 0.06
    # the 10-90 band is about as wide as the noise's: 2 x 1.2816 x sigma in original units
    x = np.stack([data.parts[0].values[i - 24:i] for i in range(300, 380)])
    q = b.predict_windows(x, np.zeros(len(x), dtype=int), quantiles=True)
    width = (q[..., 2] - q[..., 0]).mean()
    assert width == pytest.approx(2 * norm.ppf(0.9) * NOISE, rel=0.25)
    assert m["std_crps"] == pytest.approx(2 * m["std_quantile_loss"])


def test_the_bundle_answers_quantiles_for_several_series(panel, tmp_path):
    from rnn_pipeline.bundle import load_bundle
    from rnn_pipeline.config import ServingConfig
    from rnn_pipeline.serving.schemas import PredictRequest

    frame, t, data, b = panel
    paths = b.save(tmp_path)
    loaded = load_bundle(paths["preprocess"], paths["weights"])
    assert loaded.quantile_levels == (0.1, 0.5, 0.9)
    hist = {sid: frame[frame.series == sid].value.tail(24).tolist() for sid in ("s2", "s0")}
    req = PredictRequest(series=[{"id": sid, "history": {"value": h}} for sid, h in hist.items()])
    x = loaded.request_inputs(req, ServingConfig())
    answers = loaded.answers(loaded.predict_inputs(x), x)
    for a in answers:
        q10, q50, q90 = (np.array(a["quantiles"][k]["value"]) for k in ("10", "50", "90"))
        assert (q10 <= q50).all() and (q50 <= q90).all()
        point = np.array(a["forecast"]["value"])  # trained on the MSE, it lies near the median
        assert np.abs(point - q50).max() < 0.5 * (q90 - q10).mean()
    frame_out = loaded.predict_frame(frame[frame.series.isin(["s2", "s0"])].groupby("series").tail(24))
    assert {"value_h1_q10", "value_h4_q90"} <= set(frame_out.columns)
    assert (frame_out["value_h1_q10"] <= frame_out["value_h1_q90"]).all()


def test_crps_is_a_forecasting_gate_metric_on_the_test_windows():
    from rnn_pipeline.forecasting.evaluation import crps

    with pytest.raises(ValueError, match="crps with backtest.gate"):
        PipelineConfig(name="q", data={"builtin": "seed_sine"}, registry={"metric": "crps"},
                       backtest={"origins": 3, "gate": True})
    with pytest.raises(ValueError, match="'crps' is a forecasting metric"):
        PipelineConfig(name="q", task="classification", data={"builtin": "rotten_tomatoes", "text_column": "text"},
                       registry={"metric": "crps"})
    y, point = np.zeros((4, 2, 1)), np.ones((4, 2, 1))
    assert crps(y, point) == pytest.approx(1.0)  # a point forecast's CRPS is its absolute error
    q = np.stack([point - 1, point, point + 1], axis=-1)  # a band around it, whose lower quantile hits the actual
    assert crps(y, point, q, (0.1, 0.5, 0.9)) < crps(y, point)


def test_a_quantile_model_started_from_its_linear_highway_learns_a_band():
    """The highway's linear start puts every quantile at the mean forecast; early stopping judges the pinball loss (what
    the model trains on), so training that spreads the quantiles is kept (judged on the median's MSE, the start won and
    the band stayed at zero width)."""
    frame = synthetic_panel(4, 300, season=12, seed=3, regime_switches=False, noise=NOISE, trend=0.0)
    t, data, b = fitted(frame, model={"quantiles": [0.1, 0.9], "highway": True, "norm": "last"},
                        training={"max_epochs": 5})
    x = np.stack([data.parts[0].values[i - 12:i] for i in range(200, 240)])
    q = b.predict_windows(x, np.zeros(len(x), dtype=int), quantiles=True)
    assert (q[..., 1] - q[..., 0]).mean() > 0.5 * 2 * norm.ppf(0.9) * NOISE


def test_the_summary_of_a_point_model_gated_on_crps_has_no_quantile_line():
    from rnn_pipeline.forecasting.task import interval_lines

    assert interval_lines({"std_crps": 0.3, "std_mae": 0.3}) == []
    lines = interval_lines({"std_crps": 0.3, "std_quantile_loss": 0.15, "qcoverage_80": 0.79})
    assert lines == ["quantiles: CRPS 0.3000 std, pinball 0.1500, 80% band covers 79.0%"]


def test_intervals_from_the_quantiles_are_the_quantile_bands(tmp_path):
    """evaluation.interval_method quantiles: a level's interval is the model's (1 - level) / 2 and (1 + level) / 2
    quantiles, in every answer and figure; the config must hold them."""
    from rnn_pipeline.bundle import load_bundle

    frame = synthetic_panel(3, 300, season=12, seed=4, regime_switches=False, noise=NOISE, trend=0.0)
    t, data, b = fitted(frame, model={"quantiles": [0.1, 0.9], "norm": "none"}, training={"max_epochs": 8},
                        evaluation={"intervals": [0.8], "interval_method": "quantiles"})
    assert b.intervals == {"levels": [0.8], "method": "quantiles", "pairs": [[0, 1]]}
    m = t.evaluate(data, b, 12)["metrics"]
    assert m["coverage_80"] == pytest.approx(m["qcoverage_80"])
    hist = frame[frame.series.isin(["s0", "s2"])].groupby("series").tail(12)
    paths = b.save(tmp_path)
    out = load_bundle(paths["preprocess"], paths["weights"]).predict_frame(hist)
    np.testing.assert_allclose(out["value_h2_lo80"], out["value_h2_q10"])
    np.testing.assert_allclose(out["value_h4_hi80"], out["value_h4_q90"])
    with pytest.raises(ValueError, match="the 95% interval from quantiles needs model.quantiles 0.025 and 0.975"):
        PipelineConfig(name="q", data={"builtin": "seed_sine"}, model={"quantiles": [0.1, 0.9]},
                       evaluation={"interval_method": "quantiles"})
