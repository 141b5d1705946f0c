"""Data: the built-ins, every bad input, and the leakage-free split / scaling / windows."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline import datasets
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.features import (WindowSet, fit_scaler, lag_matrix, prepare_series, split_points,
                                   target_matrix)
from rnn_pipeline.validation import validate_series


def validate(frame, source="data.csv", missing="error", features=()):
    return validate_series(frame, source, "time", ["value"], list(features), missing)


def test_seed_sine_is_exactly_the_seed_series():
    np.random.seed(42)
    t = np.arange(0, 1000)
    expected = np.sin(0.1 * t) + 0.5 * np.cos(0.05 * t) + 0.1 * np.random.randn(1000)
    frame = datasets.seed_sine()
    np.testing.assert_array_equal(frame["value"].to_numpy(), expected)
    np.random.seed(1)
    a = np.random.rand()
    np.random.seed(1)  # the loader restores the caller's global RNG state
    datasets.seed_sine()
    assert np.random.rand() == a


def test_seed_split_keeps_the_seeds_test_set():
    frame = datasets.seed_sine()
    time, values = validate(frame, "builtin:seed_sine")
    data = prepare_series(time, values, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                          val=0.15, test=0.2)
    test_targets = data.points.first_targets("test", 50, 1)
    np.testing.assert_array_equal(test_targets, np.arange(810, 1000))  # the seed's y_test: 190 points
    train = data.points.first_targets("train", 50, 1)
    val = data.points.first_targets("val", 50, 1)
    assert train[0] == 50 and train[-1] < val[0] and val[-1] < 810  # validation inside the seed's first 80%
    # the same test targets for any window length tried by the tuner
    np.testing.assert_array_equal(data.points.first_targets("test", 30, 1), test_targets)


def test_greensboro_weather_is_a_real_multicolumn_series():
    frame = datasets.greensboro_weather()
    assert len(frame) == 8760 and {"temp_air", "temp_dew", "pressure", "ghi"} <= set(frame.columns)
    time, values = validate_series(frame, "builtin:greensboro_weather", "time", ["temp_air"],
                                   ["temp_dew", "pressure"], "error")
    assert time.is_monotonic_increasing and 14 < values["temp_air"].mean() < 15


def test_split_windows_never_predict_across_a_boundary():
    n, L, H = 300, 20, 5
    points = split_points(pd.Series(np.arange(n)), 0.2, 0.2, L, H)
    for split, (lo, hi) in {"train": (0, points.val_start), "val": (points.val_start, points.test_start),
                            "test": (points.test_start, n)}.items():
        ft = points.first_targets(split, L, H)
        assert ft.min() >= max(lo, L) and ft.max() + H - 1 < hi


def test_split_by_dates():
    time = pd.Series(pd.date_range("2024-01-01", periods=200, freq="h"))
    p = split_points(time, 0.1, 0.1, 10, 1, val_start="2024-01-05", test_start="2024-01-07 12:00")
    assert time[p.val_start] == pd.Timestamp("2024-01-05") and time[p.test_start] == pd.Timestamp("2024-01-07 12:00")


def test_scaler_is_fitted_on_training_rows_only():
    frame = datasets.seed_sine()
    time, values = validate(frame)
    a = prepare_series(time, values, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                       val=0.15, test=0.2)
    values2 = values.copy()
    values2.loc[a.points.val_start:, "value"] *= 100  # change everything after the training rows
    b = prepare_series(time, values2, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                       val=0.15, test=0.2)
    np.testing.assert_array_equal(a.scaling.offset, b.scaling.offset)
    np.testing.assert_array_equal(a.scaling.scale, b.scaling.scale)
    train = values["value"].to_numpy()[: a.points.val_start]
    assert a.scaling.offset[0] == pytest.approx(train.mean()) and a.scaling.scale[0] == pytest.approx(train.std())


@pytest.mark.parametrize("kind", ["standard", "minmax", "none"])
def test_scalers_round_trip(kind):
    x = np.random.default_rng(0).normal(3, 2, size=(100, 3))
    s = fit_scaler(kind, x[:60])
    np.testing.assert_allclose(s.inverse(s.transform(x)), x)
    if kind == "minmax":
        z = s.transform(x[:60])
        assert z.min() == pytest.approx(0) and z.max() == pytest.approx(1)


def test_windows_are_views_and_match_a_plain_loop():
    z = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    ws = WindowSet(z, 1, 4, 2, np.arange(4, 19))
    assert ws._view.data_ptr() == z.data_ptr()  # no copy of the series
    x, y = ws.batch(torch.tensor([0, 3]))
    np.testing.assert_array_equal(x[1].numpy(), z[3:7].numpy())
    np.testing.assert_array_equal(y[1].numpy(), z[7:9, :1].numpy())
    x, y_all = ws.batch(torch.tensor([3]), all_steps=True)  # step j's H next target values
    for j in range(4):
        np.testing.assert_array_equal(y_all[0, j].numpy(), z[3 + j + 1: 3 + j + 3, :1].numpy())
    lm = lag_matrix(z.numpy(), np.array([7]), 4)
    np.testing.assert_array_equal(lm[0], z[3:7].numpy())
    np.testing.assert_array_equal(target_matrix(z.numpy(), np.array([7]), 2, 1)[0], z[7:9, :1].numpy())


# --- every bad input gets one clear line naming file / column / row / value -------------------------------

def frame(values, time=None):
    return pd.DataFrame({"time": time if time is not None else range(len(values)), "value": values})


@pytest.mark.parametrize("make, fragments", [
    (lambda: pd.DataFrame({"t": [1, 2], "value": [1.0, 2.0]}), ["data.csv", "missing column 'time'"]),
    (lambda: pd.DataFrame({"time": [1, 2], "v": [1.0, 2.0]}), ["missing column 'value'", "columns present: time, v"]),
    (lambda: frame(["1.0", "2.5", "abc", "4"]), ["column 'value'", "row 3", "non-numeric", "'abc'"]),
    (lambda: frame([1.0, np.nan, 3.0]), ["column 'value'", "row 2", "missing value"]),
    (lambda: frame([1.0, np.inf, 3.0]), ["column 'value'", "row 2", "infinite"]),
    (lambda: frame([1.0, 2.0, 3.0], time=[1, 2, 2]), ["column 'time'", "row 3", "duplicate timestamp"]),
    (lambda: frame([1.0, 2.0, 3.0], time=[1, 3, 2]), ["column 'time'", "row 3", "not sorted"]),
    (lambda: frame([1.0, 2.0], time=["2024-01-01", "yesterday-ish"]), ["row 2", "not a timestamp"]),
    (lambda: frame([5.0] * 10), ["column 'value'", "constant"]),
    (lambda: frame([]), ["no data rows"]),
])
def test_bad_series(make, fragments):
    with pytest.raises(DataValidationError) as e:
        validate(make())
    msg = str(e.value)
    assert all(f in msg for f in fragments), msg
    assert "\n" not in msg


def test_missing_value_policies():
    f = frame([1.0, np.nan, 3.0, np.nan])
    _, v = validate(f, missing="interpolate")
    np.testing.assert_allclose(v["value"], [1, 2, 3, 3])
    _, v = validate(f, missing="ffill")
    np.testing.assert_allclose(v["value"], [1, 1, 3, 3])
    with pytest.raises(DataValidationError, match="leading missing value"):
        validate(frame([np.nan, 1.0, 2.0]), missing="ffill")


def test_series_too_short_names_the_need():
    time, values = validate(frame(np.sin(np.arange(55.0))))
    with pytest.raises(DataValidationError, match=r"series too short: 55 rows.*L=50"):
        prepare_series(time, values, "x.csv", ["value"], [], window=50, max_window=50, horizon=1,
                       scaler="standard", val=0.15, test=0.2)


@pytest.mark.parametrize("content, fragment", [
    (None, "file not found"),
    (b"", "file is empty"),
    (b"time,value\n", "no data rows"),
    (b'time,value\n1,"2\n', "cannot be parsed as CSV"),
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "cannot be parsed as CSV"),
])
def test_unreadable_files(tmp_path, content, fragment):
    p = tmp_path / "d.csv"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataValidationError) as e:
        datasets.read_table(p)
    assert fragment in str(e.value) and str(p) in str(e.value)


def test_corrupt_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataValidationError, match="d.parquet.*cannot be"):
        datasets.read_table(p)


def test_csv_and_parquet_read_alike(tmp_path):
    f = datasets.seed_sine()
    f.to_csv(tmp_path / "s.csv", index=False)
    f.to_parquet(tmp_path / "s.parquet")
    a = datasets.read_table(tmp_path / "s.csv")
    b = datasets.read_table(tmp_path / "s.parquet")
    np.testing.assert_allclose(a["value"], b["value"])


def test_local_times_across_a_dst_change_and_tz_aware_split_dates():
    # Europe/Berlin local times with offsets, crossing the October 2024 change: compared in UTC
    stamps = pd.date_range("2024-10-26 22:00", periods=200, freq="h", tz="Europe/Berlin")
    f = pd.DataFrame({"time": [t.isoformat() for t in stamps], "value": np.sin(np.arange(200) / 5)})
    time, _ = validate(f)
    assert str(time.dt.tz) == "UTC" and time.is_monotonic_increasing
    p = split_points(time, 0.1, 0.1, 10, 1, val_start="2024-11-01", test_start=pd.Timestamp("2024-11-03", tz="UTC"))
    assert time[p.val_start] == pd.Timestamp("2024-11-01", tz="UTC")
    assert time[p.test_start] == pd.Timestamp("2024-11-03", tz="UTC")


def test_unquoted_yaml_dates_are_accepted(tmp_path):
    from rnn_pipeline.config import load_config

    c = tmp_path / "c.yaml"
    c.write_text("name: x\ndata: {path: d.csv}\nsplit: {val_start: 2024-01-05, test_start: 2024-01-07 12:00:00}\n")
    cfg = load_config(c)
    time = pd.Series(pd.date_range("2024-01-01", periods=200, freq="h"))
    p = split_points(time, 0.1, 0.1, 10, 1, val_start=cfg.split.val_start, test_start=cfg.split.test_start)
    assert time[p.test_start] == pd.Timestamp("2024-01-07 12:00")


def test_a_season_longer_than_the_training_rows_is_refused_before_training():
    from rnn_pipeline.errors import ConfigError
    from rnn_pipeline.evaluate import check_season

    time, values = validate(datasets.seed_sine())
    data = prepare_series(time, values, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                          val=0.15, test=0.2)
    check_season(data, 63)
    with pytest.raises(ConfigError, match="evaluation.season is 1000 steps"):
        check_season(data, 1000)


def test_interpolation_does_not_invent_leading_values():
    with pytest.raises(DataValidationError, match="row 1: leading missing value"):
        validate(frame([np.nan, 1.0, 2.0]), missing="interpolate")
