"""Data: the built-ins, every bad input, and the leakage-free split / scaling / windows."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline.data import datasets
from rnn_pipeline.data.scaling import fit_scaler
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting.windows import WindowSet, lag_matrix, prepare_series, split_points, target_matrix


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
    from rnn_pipeline.forecasting.evaluation import check_season

    time, values = validate(datasets.seed_sine())
    data = prepare_series(time, values, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                          val=0.15, test=0.2)
    check_season(data, 63)
    with pytest.raises(ConfigError, match="evaluation.season is 1000 steps"):
        check_season(data, 1000)


def test_interpolation_does_not_invent_leading_values():
    with pytest.raises(DataValidationError, match="row 1: leading missing value"):
        validate(frame([np.nan, 1.0, 2.0]), missing="interpolate")


# --- split.test_end: the evaluation period's end; rows from it on take no part ------------------------------

def hourly_frame(start="2015-07-01", end="2017-07-01", seed=0):
    time = pd.date_range(start, end, freq="h", inclusive="left")
    rng = np.random.default_rng(seed)
    hours = np.arange(len(time))
    return pd.DataFrame({"time": time, "value": np.sin(2 * np.pi * hours / 24) + 0.1 * rng.normal(size=len(time)),
                         "temp": np.cos(2 * np.pi * hours / 24) + 0.1 * rng.normal(size=len(time))})


PROTOCOL = dict(val_start="2016-07-01", test_start="2016-11-01", test_end="2017-03-01")  # 12/4/4 months, hourly


def prepare_protocol(frame, L, H, missing="error", **split):
    split = {**PROTOCOL, **split}
    from rnn_pipeline.forecasting.windows import before_test_end

    raw = before_test_end(frame, "d.csv", "time", split["test_end"])
    time, values = validate_series(raw, "d.csv", "time", ["value"], ["temp"], missing)
    return prepare_series(time, values, "d.csv", ["value"], ["temp"], window=L, max_window=L, horizon=H,
                          scaler="standard", val=0.15, test=0.2, **split)


@pytest.mark.parametrize("L, H", [(96, 24), (96, 96), (336, 96)])
def test_test_end_gives_exactly_the_windows_whose_targets_lie_in_the_test_period(L, H):
    frame = hourly_frame()
    data = prepare_protocol(frame, L, H)
    in_test = (frame["time"] >= "2016-11-01") & (frame["time"] < "2017-03-01")
    assert in_test.sum() == 2880  # Nov-Feb: 120 days
    first = data.points.first_targets("test", L, H)
    assert len(first) == in_test.sum() - H + 1 == 2880 - H + 1
    assert data.time[first[0]] == pd.Timestamp("2016-11-01")
    assert data.time[first[-1] + H - 1] == pd.Timestamp("2017-02-28 23:00")  # the last target: the last hour before
    # nothing at or after test_end is kept; the validation and training periods are the protocol's
    assert len(data.values) == data.points.n == len(data.time) and data.time.iloc[-1] < pd.Timestamp("2017-03-01")
    val = data.points.first_targets("val", L, H)
    assert data.time[val[0]] == pd.Timestamp("2016-07-01") and len(val) == 2952 - H + 1  # Jul-Oct: 123 days
    assert data.time[data.points.first_targets("train", L, H)[-1] + H - 1] == pd.Timestamp("2016-06-30 23:00")


def test_nothing_at_or_after_test_end_changes_anything():
    frame = hourly_frame().astype({"temp": object})
    after = frame["time"] >= "2017-03-01"
    end = int(after.idxmax())  # the first row at test_end
    frame.loc[end - 1, "value"] = np.nan  # a gap just before test_end, filled by interpolation
    later = frame.copy()
    later.loc[after, "value"] = later.loc[after, "value"] * 100 + 7
    later.loc[end, "value"] = 1e6  # interpolation must not read past test_end
    later.loc[end + 5, "temp"] = "junk"  # nor validation complain about a row that is not used
    later.loc[end + 9, "value"] = np.nan
    a = prepare_protocol(frame, 96, 24, missing="interpolate")
    b = prepare_protocol(later, 96, 24, missing="interpolate")
    np.testing.assert_array_equal(a.values, b.values)
    assert torch.equal(a.z, b.z) and a.points == b.points
    np.testing.assert_array_equal(a.scaling.offset, b.scaling.offset)
    np.testing.assert_array_equal(a.scaling.scale, b.scaling.scale)
    pd.testing.assert_series_equal(a.time, b.time)
    # the same as if the file had ended just before test_end
    c = prepare_protocol(frame[~after], 96, 24, missing="interpolate")
    np.testing.assert_array_equal(a.values, c.values)


def test_test_end_with_fraction_splits_applies_the_fractions_to_the_rows_before_it():
    frame = hourly_frame(end="2015-09-01")  # 1488 rows
    time, values = validate_series(frame, "d.csv", "time", ["value"], [], "error")
    kw = dict(window=48, max_window=48, horizon=6, scaler="standard", val=0.15, test=0.2)
    cut = prepare_series(time, values, "d", ["value"], [], test_end="2015-08-20", **kw)
    keep = time < pd.Timestamp("2015-08-20")
    short = prepare_series(time[keep], values[keep.to_numpy()], "d", ["value"], [], **kw)
    assert cut.points == short.points and cut.points.n == keep.sum() < len(time)
    np.testing.assert_array_equal(cut.values, short.values)
    # numeric time columns work the same way
    p = split_points(pd.Series(np.arange(300.0)), 0.2, 0.2, 20, 5, test_end=250)
    assert p.n == 250 and p.first_targets("test", 20, 5)[-1] + 5 - 1 == 249


@pytest.mark.parametrize("split, message", [
    (dict(test_end="2016-10-01"), "split.test_end must come after split.test_start ('2016-11-01')"),
    (dict(test_end="2016-11-01"), "split.test_end must come after split.test_start"),
    (dict(test_end="2016-11-01 12:00"), "split.test_end leaves 0 test window(s): 12 row(s) from the test start"),
    (dict(test_end="2016-11-02 00:00"), "split.test_end leaves 1 test window(s): 24 row(s)"),
    (dict(test_end="2014-01-01"), "split.test_end is at or before the first row"),
    (dict(test_end="soon"), "split.test_end: not a timestamp"),
])
def test_a_bad_test_end_is_one_clear_error_naming_it(split, message):
    with pytest.raises(DataValidationError) as e:
        prepare_protocol(hourly_frame(), 96, 24, **split)
    assert message in str(e.value) and repr(split["test_end"]) in str(e.value)


def test_test_end_is_a_split_setting(tmp_path):
    from rnn_pipeline.config import load_config

    c = tmp_path / "c.yaml"
    c.write_text("name: x\ndata: {path: d.csv}\n"
                 "split: {val_start: 2016-07-01, test_start: 2016-11-01, test_end: 2017-03-01}\n")
    cfg = load_config(c)
    assert str(cfg.split.test_end) == "2017-03-01" and load_config("seed_sine").split.test_end is None


# ---- extreme values and the season --------------------------------------------------------------------------------
def spiked(value=1e30, row=700):
    """The seed series (time 0..999) with one value replaced at 1-based data row `row`."""
    f = datasets.seed_sine()
    f.loc[row - 1, "value"] = value
    return f


def test_a_value_beyond_float32_is_an_error_naming_row_and_value():
    with pytest.raises(DataValidationError, match=r"data.csv, column 'value', row 700: value beyond float32's range "
                                                  r".*\(value: -5e\+38\)"):
        validate(spiked(-5e38))
    validate(spiked(1e38))  # within float32's range: the outlier check's business, not this one


def _prepare(frame, **kw):
    time, values = validate(frame)
    return prepare_series(time, values, "data.csv", ["value"], [], window=50, max_window=50, horizon=1,
                          scaler="standard", val=0.15, test=0.2, **kw)


def test_a_spike_warns_by_default_and_is_an_error_when_strict(caplog):
    with caplog.at_level("WARNING", logger="rnn_pipeline.data.validation"):
        data = _prepare(spiked())
    assert len(data.warnings) == 1 and "column 'value', row 700: extreme value" in data.warnings[0]
    assert "(value: 1e+30)" in data.warnings[0] and "1 such value in this column" in data.warnings[0]
    assert data.warnings[0] in caplog.text  # logged as well as returned (the flow puts it in the summary)
    with pytest.raises(DataValidationError, match=r"data.csv, column 'value', row 700: extreme value, .* robust "
                                                  r"deviations .*\(value: 1e\+30\)"):
        _prepare(spiked(), outliers="error")
    assert _prepare(spiked(), outliers="ignore").warnings == []
    assert _prepare(datasets.seed_sine(), outliers="error").warnings == []  # ordinary data passes the strict check


def test_outliers_are_measured_against_the_training_split_only():
    from rnn_pipeline.data.validation import check_outliers

    x = np.r_[np.tile([0.0, 1.0], 50), [40.0, 10.0]][:, None]  # train: 0/1, median 0.5, MAD 0.5 -> spread 0.74
    found = check_outliers(x, ["v"], 100, "f", threshold=25.0, policy="warn")
    assert len(found) == 1 and "row 101" in found[0] and "(value: 40.0)" in found[0]  # 10 is 13 deviations out
    assert check_outliers(np.zeros((10, 1)), ["v"], 8, "f", 25.0, "error") == []  # constant: skipped


def test_a_mostly_zero_column_is_measured_by_its_other_values_too():
    """Zero 80% of the time, otherwise 100-110: MAD and IQR are 0, the std (about 42) measures it, as before, and
    the tight spread of the other values never makes them look extreme."""
    from rnn_pipeline.data.validation import check_outliers

    rng = np.random.default_rng(0)
    x = np.where(rng.random(1000) < 0.8, 0.0, rng.uniform(100, 110, 1000))[:, None]
    assert check_outliers(x, ["v"], 700, "f", 25.0, "error") == []
    x[900, 0] = 5000.0  # about 120 std out
    with pytest.raises(DataValidationError, match="row 901: extreme value"):
        check_outliers(x, ["v"], 700, "f", 25.0, "error")


@pytest.mark.parametrize("name", ["greensboro_weather", "miami_weather", "sand_point_weather"])
def test_the_built_in_weather_columns_raise_no_outlier_warning(name):
    """Irradiance is zero half the time (Sand Point's direct irradiance, 69% of training hours): its MAD alone, or
    even its quartiles, would flag every sunny hour; the spread of the values off that zero keeps it quiet, and a
    real spike in the same column is still caught."""
    from rnn_pipeline.data.validation import check_outliers

    frame = datasets.BUILTINS[name]()
    cols = [c for c in frame.columns if c != "time"]
    time, values = validate_series(frame, "w", "time", cols, [], "error")
    data = prepare_series(time, values, "w", cols, [], window=48, max_window=48, horizon=6,
                          scaler="standard", val=0.15, test=0.2, outliers="error")
    assert data.warnings == []
    spiked = values.to_numpy(dtype=float)
    spiked[100, cols.index("dni")] = 1e6
    [found] = check_outliers(spiked, cols, int(len(spiked) * 0.7), "w", 25.0, "warn")
    assert "column 'dni', row 101: extreme value" in found


def test_season_auto_reads_the_time_step():
    from rnn_pipeline.forecasting.evaluation import resolve_season

    values = np.sin(np.arange(600) / 5)
    for freq, season in (("h", 24), ("30min", 48), ("15min", 96), ("10min", 144), ("D", 7), ("2h", None)):
        frame = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=600, freq=freq), "value": values})
        assert resolve_season("auto", _prepare(frame)) == season, freq
    assert resolve_season("auto", _prepare(datasets.seed_sine())) is None  # a numeric time column: no season
    assert resolve_season(None, _prepare(datasets.seed_sine())) is None
    assert resolve_season(63, _prepare(datasets.seed_sine())) == 63
    # too few training rows for two seasons: no season, and no error (an explicit season would be refused)
    short = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=600, freq="10min"), "value": values})
    data = prepare_series(*validate(short), "s", ["value"], [], window=50, max_window=50, horizon=1,
                          scaler="standard", val=0.15, test=0.2, val_start="2024-01-02 23:00")
    assert data.points.val_start < 2 * 144 and resolve_season("auto", data) is None


@pytest.mark.parametrize("name,columns", [
    ("sand_point_weather", ["temp_air", "temp_dew", "relative_humidity", "ghi", "dni", "wind_speed"]),
    ("miami_weather", ["temp_air", "temp_dew", "relative_humidity", "ghi", "dni", "wind_speed", "pressure"])])
def test_the_other_pvlib_weather_files_are_real_hourly_series(name, columns):
    frame, source = datasets.load(builtin=name)
    assert source == f"builtin:{name}" and list(frame.columns) == ["time", *columns]
    assert len(frame) == 8760 and frame["time"].diff().dropna().eq(pd.Timedelta(hours=1)).all()
    assert frame[columns].notna().all().all() and (frame[columns].std() > 0).all()
    assert 15 < frame["temp_air"].mean() < 30 if name == "miami_weather" else -5 < frame["temp_air"].mean() < 10
