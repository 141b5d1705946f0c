"""Panels (many series, one global model) without Prefect: validation per series, the split and scaling per series,
windows that never cross a split or a series, the bundle's answers per series, and the scale-free evaluation."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline import tasks, tune
from rnn_pipeline.bundle import load_bundle
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.data.datasets import synthetic_panel, weather_panel
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.panel import evaluation as panel_eval
from rnn_pipeline.panel.bundle import PanelBundle
from rnn_pipeline.panel.task import PanelTask


def config(**over) -> PipelineConfig:
    d = {"name": "panel", "data": {"path": "x.csv", "id_column": "series", "time_column": "time",
                                   "target_columns": ["value"]},
         "features": {"window": 12, "horizon": 4}, "split": {"val": 0.2, "test": 0.2},
         "tuning": {"n_trials": 0}, "training": {"max_epochs": 2, "ensemble_trials": 1}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    return PipelineConfig(**d)


def prepared(frame, **over):
    t = tasks.for_config(config(**over))
    return t, t.prepare(t.read(frame, "panel.csv"), "panel.csv")


def test_a_forecasting_config_with_an_id_column_is_a_panel():
    assert isinstance(tasks.for_config(config()), PanelTask)
    assert tasks.task_class("panel") is PanelTask


@pytest.mark.parametrize("break_it, words", [
    (lambda f: f.drop(index=f.index[(f.series == "s1") & (f.time == 30)]), ["series 's1'", "gap"]),
    (lambda f: pd.concat([f, f[(f.series == "s2") & (f.time == 50)]]), ["series 's2'", "duplicate timestamp"]),
    (lambda f: f[(f.series != "s0") | (f.time < 20)], ["series 's0'", "too short"]),
    (lambda f: f.assign(value=np.where((f.series == "s1") & (f.time == 7), np.nan, f.value)),
     ["series 's1'", "column 'value'", "row 108"]),
    (lambda f: f.assign(series=np.where(f.index == 5, None, f.series)), ["column 'series'", "row 6", "blank series id"]),
    (lambda f: f.drop(columns="series"), ["missing column 'series'"]),
    (lambda f: f.assign(time=np.where(f.series == "s2", f.time * 2, f.time)), ["series 's2' steps by 2", "by 1"]),
])
def test_bad_panels_are_refused_naming_the_series(break_it, words):
    frame = break_it(synthetic_panel(3, 100, season=12, seed=1)).reset_index(drop=True)
    with pytest.raises(DataValidationError) as e:
        prepared(frame)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_every_series_is_split_and_scaled_on_its_own_training_rows_and_no_window_crosses_a_split_or_a_series():
    frame = synthetic_panel(4, 120, season=12, seed=2)
    frame = frame[~((frame.series == "s3") & (frame.time < 30))]  # a series that starts later (90 rows)
    t, data = prepared(frame)
    assert data.series_ids == ["s0", "s1", "s2", "s3"] and [p.points.n for p in data.parts] == [120, 120, 120, 90]
    L, H = 12, 4
    for k, part in enumerate(data.parts):
        z = data.z[data.points.offsets[k]: data.points.offsets[k] + part.points.n, 0].numpy()
        train = z[: part.points.val_start]
        assert abs(train.mean()) < 1e-5 and abs(train.std() - 1) < 1e-3  # its own training statistics
    for split in ("train", "val", "test"):
        first = data.points.first_targets(split, L, H)
        series = data.points.series_of(first)
        for p, k in zip(first, series):
            local = p - data.points.offsets[k]
            sp = data.parts[k].points
            lo, hi = {"train": (0, sp.val_start), "val": (sp.val_start, sp.test_start),
                      "test": (sp.test_start, sp.n)}[split]
            assert local - L >= 0 and lo <= local and local + H <= hi  # inputs in its series, targets in its split
        assert set(series) == {0, 1, 2, 3}
    x, y = data.windows("train", L).batch()
    assert x.shape[1:] == (L, 1) and y.shape[1:] == (H, 1)


def test_the_cap_spreads_each_series_training_windows_evenly():
    _, data = prepared(synthetic_panel(3, 200, season=12), features={"max_windows_per_series": 10})
    first = data.points.first_targets("train", 12, 4)
    assert len(first) == 30 and np.bincount(data.points.series_of(first)).tolist() == [10, 10, 10]
    assert len(data.points.first_targets("val", 12, 4)) > 30  # validation and test keep every window


def test_the_same_cut_by_time_for_every_series():
    frame = synthetic_panel(3, 100, season=12)
    _, data = prepared(frame, split={"val_start": 60, "test_start": 80})
    assert [(p.points.val_start, p.points.test_start) for p in data.parts] == [(60, 80)] * 3
    late = frame[~((frame.series == "s1") & (frame.time < 65))]  # s1 starts after validation does
    with pytest.raises(DataValidationError, match="series 's1'"):
        prepared(late, split={"val_start": 60, "test_start": 80})


def fitted(frame, **over):
    t, data = prepared(frame, **over)
    params = tune.default_params(t.cfg)
    torch.manual_seed(0)
    fit = tune.fit_final([params], data, t.cfg, device="cpu")
    return t, data, t.bundle(fit.model, data, params)


def test_the_bundle_answers_each_series_in_its_own_units(tmp_path):
    frame = synthetic_panel(3, 120, season=12, seed=3)
    t, data, b = fitted(frame, model={"norm": "none"})  # no per-window normalisation: the series' scaling matters
    hist = pd.concat([frame[frame.series == s].tail(12) for s in ("s2", "s0")])
    out = b.predict_frame(hist)
    points = [f"value_h{h}" for h in range(1, 5)]
    assert out["series"].tolist() == ["s2", "s0"] and out.columns.tolist()[:5] == ["series", *points]
    assert out.shape == (2, 1 + 4 + 4 * 4)  # and each step's 80% and 95% bounds
    assert (out["value_h1_lo95"] < out["value_h1_lo80"]).all() and (out["value_h1_hi80"] < out["value_h1_hi95"]).all()
    for sid in ("s2", "s0"):  # each forecast lies near its own series' level (levels differ by tens)
        last = frame[frame.series == sid].value.tail(12)
        got = out.loc[out.series == sid, points].iloc[0].to_numpy(dtype=float)
        assert np.all(np.abs(got - last.mean()) < 4 * last.std() + 1)
    # the same history under another series' name is scaled with that series' numbers: a different answer
    swapped = b.predict_frame(hist.assign(series=np.where(hist.series == "s2", "s0", "s2")))
    assert not np.allclose(swapped[points].to_numpy(float), out[points].to_numpy(float))
    # several windows of one series in one call (window_id), and the saved bundle answers the same
    paths = b.save(tmp_path)
    again = load_bundle(paths["preprocess"], paths["weights"])
    assert isinstance(again, PanelBundle) and again.series_ids == ["s0", "s1", "s2"]
    x = np.stack([frame[frame.series == "s1"].value.to_numpy()[i:i + 12, None] for i in (0, 40, 80)])
    many = b.windows_frame(x, ["s1"] * 3, window_ids=True)
    got = again.predict_frame(many)
    assert got["series"].tolist() == ["s1"] * 3 and got["window_id"].tolist() == ["0", "1", "2"]
    np.testing.assert_allclose(got[points].to_numpy(float),
                               b.predict_windows(x, np.ones(3, dtype=int)).reshape(3, -1), rtol=1e-6)
    with pytest.raises(DataValidationError, match="unknown series 'nope'"):
        b.predict_frame(hist.assign(series="nope"))
    with pytest.raises(DataValidationError, match="lacks column 'series'"):
        b.predict_frame(hist.drop(columns="series"))


def test_the_evaluation_scores_each_series_beside_its_own_baselines_and_aggregates_scale_free():
    frame = synthetic_panel(3, 160, season=12, seed=4, regime_switches=False)
    frame["value"] += np.repeat([0.0, 100.0, 1000.0], 160)  # positive, and very different sizes
    t, data, b = fitted(frame, evaluation={"season": 12})
    ev = t.evaluate(data, b, 12)
    per = ev["per_series"]
    assert set(per) == {"s0", "s1", "s2"} and ev["n_series"] == 3
    counts = np.array([per[s]["n_test_windows"] for s in ("s0", "s1", "s2")])
    pooled = np.sum(counts * [per[s]["std_mse"] for s in ("s0", "s1", "s2")]) / counts.sum()
    assert ev["metrics"]["std_mse"] == pytest.approx(pooled)
    assert ev["metrics"]["mase"] == pytest.approx(np.mean([per[s]["mase"] for s in ("s0", "s1", "s2")]))
    assert ev["baselines"]["persistence"]["rel_mase"] == pytest.approx(1.0)
    assert "owa" in ev["metrics"] and ev["baselines"]["persistence"]["owa"] == pytest.approx(1.0)
    # a shared cycle the seasonal naive knows: it beats persistence on every series, as it must
    assert ev["baselines"]["seasonal_naive"]["rel_mase"] < 1
    assert sorted(ev["best_series"]) == ["s0", "s1", "s2"] and ev["best_series"] == ev["worst_series"][::-1]
    # the gate's score, from forecasts in original units, is the evaluation's pooled figure
    series = data.points.series_of(ev["first_targets"])
    assert panel_eval.panel_score(ev["y_true"], ev["y_pred"], series, data, "std_mse") == pytest.approx(
        ev["metrics"]["std_mse"], rel=1e-6)


def test_percentage_errors_are_left_out_where_a_series_crosses_zero():
    frame = synthetic_panel(3, 160, season=12, seed=5)
    frame["value"] = frame["value"].abs() + 1.0
    frame.loc[frame.series == "s1", "value"] -= frame.loc[frame.series == "s1", "value"].mean()  # s1 crosses zero
    t, data, b = fitted(frame)
    ev = t.evaluate(data, b, None)
    assert "owa" not in ev["metrics"] and "smape" not in ev["metrics"]
    assert np.isfinite(ev["metrics"]["rel_mase"])


def test_weather_panel_is_three_real_stations():
    frame = weather_panel()
    assert frame.groupby("station").size().to_dict() == {"greensboro": 8760, "miami": 8760, "sand_point": 8760}
    assert list(frame.columns[:2]) == ["station", "time"]


def test_the_id_column_is_checked():
    with pytest.raises(ValueError, match="data.id_column 'value' is also the time, a target or a feature column"):
        config(data={"id_column": "value"})


def test_a_request_may_name_its_series_by_a_number():
    from rnn_pipeline.serving.schemas import PredictRequest

    req = PredictRequest(series=[{"id": 723170, "history": {"value": [1.0, 2.0]}}])
    assert str(req.series[0].id) == "723170"


def test_static_covariates_hold_one_value_per_series_and_are_scaled_over_all_series(tmp_path):
    frame = synthetic_panel(3, 120, season=12, seed=7)
    frame["size"] = frame["series"].map({"s0": 10.0, "s1": 20.0, "s2": 60.0})
    t, data = prepared(frame, data={"static_columns": ["size"]})
    assert data.feature_columns == ["size"]
    j = 1  # after the target
    z = [data.z[data.points.offsets[k], j].item() for k in range(3)]
    mean, std = 30.0, np.std([10.0, 20.0, 60.0])  # every series has as many training rows
    assert z == pytest.approx([(v - mean) / std for v in (10.0, 20.0, 60.0)], rel=1e-5)  # not erased to 0
    assert all(p.scaling.offset[j] == pytest.approx(mean) for p in data.parts)
    params = tune.default_params(t.cfg)
    fit = tune.fit_final([params], data, t.cfg, device="cpu")
    b = t.bundle(fit.model, data, params)
    out = b.predict_frame(frame[frame.series == "s2"].tail(12))
    assert np.isfinite(out.filter(like="value_h").to_numpy()).all()
    changing = frame.assign(size=np.where((frame.series == "s1") & (frame.time == 50), 21.0, frame["size"]))
    with pytest.raises(DataValidationError, match="series 's1', column 'size', row 171: static column changes"):
        prepared(changing, data={"static_columns": ["size"]})
    with pytest.raises(ValueError, match="per-series covariates need a panel"):
        PipelineConfig(name="x", data={"path": "x.csv", "static_columns": ["size"]})


def test_static_and_calendar_covariates_reach_the_global_model():
    """Both kinds are inputs of the model: its forecast moves when only a series' static value or only the times of
    its history change."""
    frame = synthetic_panel(3, 24 * 10, season=24, seed=8)
    frame["time"] = pd.Timestamp("2024-05-01") + pd.to_timedelta(frame["time"], unit="h")
    frame["size"] = frame["series"].map({"s0": 1.0, "s1": 5.0, "s2": 9.0})
    t, data, b = fitted(frame, data={"static_columns": ["size"]}, features={"calendar": ["hour", "dayofweek"]})
    assert data.feature_columns == ["cal_hour_sin", "cal_hour_cos", "cal_dayofweek_sin", "cal_dayofweek_cos", "size"]
    assert b.request_columns == ["value", "size"] and b.calendar["cycles"] == ["hour", "dayofweek"]
    hist = frame[frame.series == "s1"].tail(12)
    base = b.predict_frame(hist).filter(like="value_h").to_numpy(float)
    other_size = b.predict_frame(hist.assign(size=9.0)).filter(like="value_h").to_numpy(float)
    later = b.predict_frame(hist.assign(time=hist.time + pd.Timedelta(hours=7))).filter(like="value_h").to_numpy(float)
    assert not np.allclose(base, other_size) and not np.allclose(base, later)
    # the model's inputs for that history are the prepared data's own last window of the series
    ids, x = b.frame_to_windows(hist)
    np.testing.assert_allclose(x[0], data.parts[1].values[-12:], rtol=1e-9)


def test_a_series_embedding_lets_the_global_model_tell_series_apart():
    """Each series' target is +x or -x of its feature one step earlier: a window of one step cannot tell which, so
    without the series' identity the best global forecast is 0; with a learned vector per series it is the sign."""
    rng = np.random.default_rng(0)
    n, parts = 300, []
    for k, sign in enumerate([1.0, -1.0, 1.0, -1.0]):
        x = rng.standard_normal(n)
        y = np.concatenate([[0.0], sign * x[:-1]]) + 0.05 * rng.standard_normal(n)
        parts.append(pd.DataFrame({"series": f"s{k}", "time": np.arange(n), "value": y, "x": x}))
    frame = pd.concat(parts, ignore_index=True)
    over = dict(data={"feature_columns": ["x"]}, features={"window": 1, "horizon": 1},
                model={"architecture": "direct", "norm": "none", "channels": "mixed", "hidden": 16},
                training={"max_epochs": 30, "patience": 30, "lr": 0.01})
    scores = {}
    for dim in (0, 4):
        t, data, b = fitted(frame, **{**over, "model": {**over["model"], "series_embedding": dim}})
        assert data.z.shape[1] == 2 + (dim > 0)  # the series index, last, with an embedding
        scores[dim] = t.evaluate(data, b, None)["metrics"]["std_mse"]
    assert scores[4] < 0.2 * scores[0], scores
    # the bundle adds each request's series index: the same history under another series' name is read as that one
    hist = frame[frame.series == "s0"].tail(1)
    same = b.predict_frame(hist)["value_h1"].iloc[0]
    other = b.predict_frame(hist.assign(series="s1"))["value_h1"].iloc[0]
    assert np.sign(same) == -np.sign(other)
    with pytest.raises(ValueError, match="model.series_embedding: a panel setting"):
        PipelineConfig(name="x", data={"path": "x.csv"}, model={"series_embedding": 4})
