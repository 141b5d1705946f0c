"""Fair evaluation and the gate's floor: standardised and per-target metrics, the headline, the linear baselines
fitted on the training windows only, and decisions against the naive floor (library functions, no flows)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV

from rnn_pipeline import tasks
from rnn_pipeline.config import load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.errors import ConfigError
from rnn_pipeline.forecasting.evaluation import evaluate, forecast_score, headline, ridge_baseline, ridge_on_lags
from rnn_pipeline.forecasting.windows import prepare_series
from rnn_pipeline.registry import decide


@pytest.fixture(scope="module")
def two_units():
    """Two targets in very different units: a = +-1 (training mean 0, std 1), b = 50 -+ 10 (mean 50, std 10).
    20 rows, L = 2, H = 1: rows 0-11 train, 12-15 validation, 16-19 test (4 test windows)."""
    t = np.arange(20)
    sign = (-1.0) ** t
    frame = pd.DataFrame({"time": t, "a": sign, "b": 50 - 10 * sign})
    time, values = validate_series(frame, "two.csv", "time", ["a", "b"], [], "error")
    return prepare_series(time, values, "two.csv", ["a", "b"], [], window=2, max_window=2, horizon=1,
                          scaler="minmax", val=0.2, test=0.2)


def test_standardised_and_per_target_metrics_by_hand(two_units):
    data = two_units
    assert (data.points.val_start, data.points.test_start) == (12, 16)
    truth = lambda x: np.stack([-x[:, -1:, 0], 100 - x[:, -1:, 1]], axis=-1)  # the series' next value exactly
    ev = evaluate(data, lambda x: truth(x) + 1.0, 2, None, [1.0])  # every forecast 1 too high, in both units
    m = ev["metrics"]
    # original units: errors (1, 1); standardised: (1/1, 1/10), whatever scaler the model uses (minmax here)
    assert m["mse"] == pytest.approx(1.0) and m["mae"] == pytest.approx(1.0)
    assert m["std_mse"] == pytest.approx((1 + 0.01) / 2) and m["std_mae"] == pytest.approx((1 + 0.1) / 2)
    assert m["std_rmse"] == pytest.approx(np.sqrt(0.505))
    # MASE: in-sample naive errors are 2 (a) and 20 (b), i.e. 2 and 2 standardised
    assert m["mase"] == pytest.approx(1.0 / 11) and m["std_mase"] == pytest.approx(0.55 / 2)
    a, b = ev["per_target"]["a"], ev["per_target"]["b"]
    assert (a["mse"], a["std_mse"], a["mase"]) == pytest.approx((1.0, 1.0, 0.5))
    assert (b["mse"], b["std_mse"], b["mase"], b["std_mase"]) == pytest.approx((1.0, 0.01, 0.05, 0.05))
    # persistence on an alternating series is off by 2 (a) and 20 (b): standardised, 2 and 2
    p = ev["baselines"]["persistence"]
    assert (p["mse"], p["std_mse"]) == pytest.approx((202.0, 4.0))
    # several targets: the headline, and so the skills, are standardised (in original units it would be 0.995)
    assert ev["headline"] == "std_mse"
    assert ev["skill"]["persistence"] == pytest.approx(1 - 0.505 / 4)
    assert {"persistence", "ridge", "ridge_last"} == set(ev["baselines"])  # no season, no seasonal naive
    # the gate's score of the same forecasts is the same figure
    y_true = np.stack([data.values[16:20, :2]], axis=1).reshape(4, 1, 2)
    assert forecast_score(y_true, y_true + 1.0, data, "std_mse") == pytest.approx(m["std_mse"])
    assert forecast_score(y_true, y_true + 1.0, data, "mae") == pytest.approx(1.0)


def test_the_headline_is_standardised_only_for_several_targets():
    assert headline("mse", 1) == "mse" and headline("mse", 7) == "std_mse"
    assert headline("mae", 2) == "std_mae" and headline("rmse", 1) == "rmse"
    assert headline("f1_macro", 1) == "f1_macro"


def _seed(values=None, **kw):
    frame = datasets.seed_sine()
    if values is not None:
        frame["value"] = values
    time, vals = validate_series(frame, "s", "time", ["value"], [], "error")
    return prepare_series(time, vals, "s", ["value"], [], window=50, max_window=50, horizon=kw.pop("horizon", 1),
                          scaler="standard", val=0.15, test=0.2, **kw)


def test_the_linear_baselines_are_fitted_on_the_training_windows_only():
    data = _seed()
    alphas = [0.1, 1.0, 10.0]
    changed = data.values[:, 0].copy()
    # validation rows that no test window reads (its 50 inputs reach back into validation)
    lo, hi = data.points.val_start, data.points.test_start - 50
    changed[lo:hi] += 5.0
    other = _seed(changed)
    for last_value in (False, True):
        np.testing.assert_allclose(ridge_on_lags(other, 50, alphas, last_value),
                                   ridge_on_lags(data, 50, alphas, last_value), rtol=1e-10)


def test_ridge_last_is_nlinear_normalised_ridge():
    """Checked against the recipe written out window by window: z-score every column with the training rows,
    subtract each window's last value per column (inputs) and per target (targets), fit on the training windows,
    add the last value back, return to original units."""
    frame = datasets.greensboro_weather().iloc[:700]
    cols, L, H, T = ["temp_air", "pressure", "ghi"], 12, 3, 2
    time, values = validate_series(frame, "w", "time", cols[:T], cols[T:], "error")
    data = prepare_series(time, values, "w", cols[:T], cols[T:], window=L, max_window=L, horizon=H,
                          scaler="minmax", val=0.15, test=0.2)
    alphas = [0.01, 1.0, 100.0]
    v = data.values
    mu, sd = v[: data.points.val_start].mean(0), v[: data.points.val_start].std(0)
    z = (v - mu) / sd

    def windows(split):
        xs, ys, lasts = [], [], []
        for t in data.points.first_targets(split, L, H):
            win, last = z[t - L:t], z[t - 1]
            xs.append((win - last).ravel())
            ys.append((z[t:t + H, :T] - last[:T]).ravel())
            lasts.append(last[:T])
        return np.array(xs), np.array(ys), np.array(lasts)

    x, y, _ = windows("train")
    x_test, _, last = windows("test")
    pred = RidgeCV(alphas=alphas).fit(x, y).predict(x_test).reshape(-1, H, T) + last[:, None, :]
    expected = pred * sd[:T] + mu[:T]
    got = ridge_on_lags(data, L, alphas, last_value=True)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-8)
    assert not np.allclose(got, ridge_on_lags(data, L, alphas))  # not the plain Ridge


def test_the_ridge_baseline_reads_the_look_back_validation_prefers():
    """A noisy pattern that repeats every 30 steps: Ridge on 40 lags can copy the last period, on 10 lags it cannot.
    The baseline picks 40 on validation and forecasts the model's test windows with it; given one window, it is
    that window's Ridge."""
    rng = np.random.default_rng(0)
    period = rng.standard_normal(30)
    y = np.tile(period, 40) + 0.05 * rng.standard_normal(1200)
    frame = pd.DataFrame({"time": np.arange(1200), "y": y})
    time, values = validate_series(frame, "p.csv", "time", ["y"], [], "error")
    data = prepare_series(time, values, "p.csv", ["y"], [], window=10, max_window=40, horizon=5, scaler="standard",
                          val=0.2, test=0.2)
    idx = data.points.first_targets("test", 10, 5)
    pred, chosen, scores = ridge_baseline(data, [10, 40], [0.1, 1.0], False, idx)
    assert chosen == 40 and set(scores) == {10, 40} and scores[40] < 0.1 * scores[10]
    np.testing.assert_allclose(pred, ridge_on_lags(data, 40, [0.1, 1.0]), rtol=1e-8, atol=1e-8)
    one, w, _ = ridge_baseline(data, [10], [0.1, 1.0], True, idx)
    assert w == 10
    np.testing.assert_allclose(one, ridge_on_lags(data, 10, [0.1, 1.0], last_value=True), rtol=1e-8, atol=1e-8)
    # evaluate() records the choice, and the model's window alone is the default
    ev = evaluate(data, lambda x: np.repeat(x[:, -1:, :1], 5, axis=1), 10, None, [0.1, 1.0], [10, 40])
    assert ev["baseline_windows"] == {"ridge": 40, "ridge_last": 40}
    assert evaluate(data, lambda x: np.repeat(x[:, -1:, :1], 5, axis=1), 10, None, [0.1, 1.0])[
        "baseline_windows"] == {"ridge": 10, "ridge_last": 10}


# ---- the floor -----------------------------------------------------------------------------------------------------
def test_a_first_model_that_loses_to_persistence_is_not_champion():
    d = decide(2.42, None, 0.0, "mse", None, floor={"persistence": 1.0})
    assert not d.promoted and d.below_floor and d.label == "below_floor"
    assert d.reason == "not promoted: loses to persistence (skill -1.42)"
    assert d.floor == {"persistence": {"score": 1.0, "skill": pytest.approx(-1.42)}}
    first = decide(0.5, None, 0.0, "mse", None, floor={"persistence": 1.0, "seasonal_naive": 2.0})
    assert first.promoted and first.reason == ("first model: no champion yet; beats persistence (skill 0.5), "
                                               "seasonal_naive (skill 0.75)")
    assert decide(0.5, None, 0.0, "mse", None, floor={}).reason == "first model: no champion yet"  # floor off


def test_a_challenger_below_the_floor_is_not_promoted_even_when_it_beats_the_champion():
    d = decide(0.5, 0.8, 0.0, "mse", "3", floor={"persistence": 0.4})
    assert not d.promoted and d.label == "below_floor" and d.champion_version == "3"
    assert d.reason == "not promoted: loses to persistence (skill -0.25)"
    ok = decide(0.5, 0.8, 0.0, "mse", "3", floor={"persistence": 0.6})
    assert ok.promoted and ok.reason.startswith("challenger mse 0.5 beats champion v3")
    kept = decide(0.5, 0.45, 0.0, "mse", "3", floor={"persistence": 0.6})
    assert not kept.promoted and kept.label == "kept_champion"


def test_the_floor_is_strict_and_names_every_baseline_lost_to():
    tie = decide(0.4, None, 0.0, "std_mse", None, floor={"persistence": 0.4})
    assert not tie.promoted and tie.reason == "not promoted: loses to persistence (skill 0)"
    d = decide(0.5, None, 0.0, "mse", None, floor={"persistence": 0.4, "ridge": 0.6, "seasonal_naive": 0.1})
    assert d.reason == "not promoted: loses to persistence (skill -0.25); also to seasonal_naive (skill -4)"
    nan = decide(float("nan"), None, 0.0, "mse", None, floor={"persistence": 0.4})
    assert not nan.promoted


def test_a_classifier_floor_compares_higher_is_better_scores_by_difference():
    d = decide(0.30, None, 0.0, "f1_macro", None, floor={"majority": 0.35})
    assert not d.promoted and d.reason == "not promoted: loses to majority (skill -0.05)"
    assert decide(0.9, None, 0.0, "f1_macro", None, floor={"majority": 0.35}).promoted
    # log loss is an error: lower is better
    assert not decide(0.9, None, 0.0, "log_loss", None, floor={"majority": 0.7}).promoted


def test_the_default_floor_and_a_configured_one():
    def floor(task: str, season, configured=None):
        cfg = load_config("japanese_vowels" if task == "classification" else "seed_sine",
                          {"registry": {"floor": configured}})
        return tasks.for_config(cfg).floor(season)

    assert floor("forecasting", 24) == ["persistence", "seasonal_naive"]
    assert floor("forecasting", None) == ["persistence"]
    assert floor("classification", None) == ["majority"]
    assert floor("forecasting", None, ["ridge_last", "ridge"]) == ["ridge_last", "ridge"]
    assert floor("forecasting", 24, []) == []
    with pytest.raises(ConfigError, match="registry.floor lists seasonal_naive, but this series has no season"):
        floor("forecasting", None, ["seasonal_naive"])


SEED = "data: {builtin: seed_sine}\n"


@pytest.mark.parametrize("text, message", [
    (SEED + "registry: {floor: [ridge, nope]}", "unknown baseline 'nope' for this forecasting config (one of "
                                                "persistence, seasonal_naive, ridge, ridge_last)"),
    ("task: classification\ndata: {builtin: rotten_tomatoes, text_column: text}\nregistry: {floor: [summary_logreg]}",
     "unknown baseline 'summary_logreg' for this classification config (one of majority, tfidf_logreg)"),
    (SEED + "evaluation: {season: null}\nregistry: {floor: [seasonal_naive]}", "evaluation.season is null"),
])
def test_an_unknown_floor_baseline_is_a_config_error(tmp_path, text, message):
    from rnn_pipeline.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(f"name: x\n{text}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert message in str(e.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: x\ndata: {builtin: seed_sine}\nregistry: {floor: [ridge_last, persistence]}\n"
                  "evaluation: {season: auto}\n")
    assert load_config(ok).registry.floor == ["ridge_last", "persistence"]
