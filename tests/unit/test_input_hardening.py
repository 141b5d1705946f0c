"""Bad input that used to get through: gaps and irregular time steps, duplicate column names, several config errors
at once, timestamps mixing ones with and without a UTC offset. Each is one clear error naming file, column, row and
value (or, for a config, every problem), and changes nothing."""

import sys

import numpy as np
import pandas as pd
import pytest

from rnn_pipeline.config import load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.errors import ConfigError, DataValidationError
from rnn_pipeline.forecasting.windows import before_test_end, prepare_series

HOURS = ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 05:00", "2024-01-01 06:00",
         "2024-01-01 09:00", "2024-01-01 10:00"]  # two gaps: 02:00 -> 05:00 and 06:00 -> 09:00


def validate(frame, missing="error", **kw):
    return validate_series(frame, "data.csv", "time", ["value"], [], missing, **kw)


def series(times, values=None):
    return pd.DataFrame({"time": times, "value": np.arange(1.0, len(times) + 1) if values is None else values})


def one_line_error(frame, **kw) -> str:
    with pytest.raises(DataValidationError) as e:
        validate(frame, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- 1. gaps and irregular steps -----------------------------------------------------------------------------------

def test_a_gap_in_an_hourly_series_is_an_error_naming_it_and_counting_them():
    msg = one_line_error(series(HOURS))
    assert msg.startswith("data.csv, column 'time': 2 gaps in the time steps (4 missing steps in all), the first from "
                          "row 3 ('2024-01-01 02:00') to row 4 ('2024-01-01 05:00'): 3 h where 1 h is expected; "
                          "set data.missing to 'interpolate' or 'ffill'"), msg


@pytest.mark.parametrize("missing, filled", [("interpolate", [3.0, 3 + 1 / 3, 3 + 2 / 3, 4.0]),
                                             ("ffill", [3.0, 3.0, 3.0, 4.0])])
def test_a_filling_policy_reindexes_the_gaps_and_says_how_many_values_it_filled(missing, filled):
    values = [1.0, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0]
    time, v = validate(series(HOURS, values), missing=missing)
    assert len(time) == len(v) == 11
    assert list(time) == list(pd.date_range("2024-01-01", periods=11, freq="h"))
    np.testing.assert_allclose(v["value"].to_numpy()[2:6], filled)
    assert not v["value"].isna().any()
    warnings = v.attrs["warnings"]
    assert len(warnings) == 2
    assert warnings[0].startswith("data.csv, column 'time': 2 gaps in the time steps (4 missing steps in all)")
    assert f"missing: {missing} added 4 rows on the regular grid" in warnings[0]
    assert warnings[1] == (f"data.csv, column 'value': missing: {missing} filled 5 values (1 blank in the file, "
                           "row 2; 4 in the rows added for gaps in the time steps)")
    # the run's data warnings (logged by the flow, tagged data.warnings on the MLflow run) carry them
    long = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=300, freq="h"), "value": np.sin(np.arange(300))})
    long = long.drop(index=[100, 101, 102])
    data = prepare_series(*validate(long, missing=missing), "data.csv", ["value"], [], window=10, max_window=10,
                          horizon=1, scaler="standard", val=0.15, test=0.2)
    assert len(data.values) == 300 and data.warnings[:2] == validate(long, missing=missing)[1].attrs["warnings"]
    assert "filled 3 values" in data.warnings[1]


def test_filled_blank_values_are_counted_even_without_gaps():
    _, v = validate(series(range(6), [1.0, np.nan, 3.0, np.nan, np.nan, 6.0]), missing="interpolate")
    assert v.attrs["warnings"] == ["data.csv, column 'value': missing: interpolate filled 3 values (3 blank in the "
                                   "file, rows 2, 4, 5)"]
    _, v = validate(series(range(6), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), missing="interpolate")
    assert v.attrs["warnings"] == []


@pytest.mark.parametrize("times, fragments", [
    (["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00", "2024-01-01 02:30", "2024-01-01 03:00",
      "2024-01-01 04:00"],
     ["column 'time', row 4: irregular time step: 30 min after row 3 ('2024-01-01 02:00') where 1 h is expected "
      "(2 such steps in this column)", "(value: '2024-01-01 02:30')"]),
    (["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00:05", "2024-01-01 03:00", "2024-01-01 04:00"],
     ["row 3: irregular time step: 1 h 5 s after row 2", "(value: '2024-01-01 02:00:05')"]),
])
@pytest.mark.parametrize("missing", ["error", "interpolate"])
def test_steps_shorter_than_the_frequency_or_jittered_are_an_error_whatever_the_policy(times, fragments, missing):
    msg = one_line_error(series(times), missing=missing)
    assert msg.startswith("data.csv, column 'time', row") and all(f in msg for f in fragments), msg


def test_numeric_time_columns_get_the_same_check_and_stay_numeric():
    msg = one_line_error(series([0, 1, 2, 5, 6, 7]))
    assert "1 gap in the time steps (2 missing steps in all), the first from row 3 ('2') to row 4 ('5'): 3 where " \
           "1 is expected" in msg
    time, v = validate(series([0, 1, 2, 5, 6, 7]), missing="ffill")
    assert time.tolist() == list(range(8)) and v["value"].tolist() == [1, 2, 3, 3, 3, 4, 5, 6]
    validate(series(np.arange(0, 100, 5)))  # a regular step other than 1 is fine
    validate(series(np.round(np.arange(0, 3, 0.1), 10)))  # so is a fractional one


def test_data_freq_sets_the_step_and_is_checked():
    msg = one_line_error(series(pd.date_range("2024-01-01", periods=6, freq="h")), freq="15min")
    assert "1 h where 15 min is expected" in msg and "5 gaps" in msg
    msg = one_line_error(series(pd.date_range("2024-01-01", periods=6, freq="h")), freq="2h")
    assert "row 2: irregular time step: 1 h after row 1 ('2024-01-01 00:00:00') where 2 h is expected" in msg
    with pytest.raises(DataValidationError, match="data.freq 'h' is for a datetime time column"):
        validate(series(range(10)), freq="h")


def test_calendar_steps_are_read_from_the_column():
    months = pd.date_range("2024-01-01", periods=12, freq="MS")
    validate(series(months))  # 28-31 days apart, but regular
    msg = one_line_error(series(months.delete(3)))
    assert "1 gap in the time steps (1 missing step in all), the first from row 3 ('2024-03-01 00:00:00') to row 4 " \
           "('2024-05-01 00:00:00'): 61 days where one step of 'MS' is expected" in msg
    time, _ = validate(series(months.delete(3)), missing="interpolate")
    assert list(time) == list(months)


@pytest.mark.parametrize("name", ["seed_sine", "greensboro_weather", "sand_point_weather", "miami_weather"])
def test_the_built_in_series_are_regular(name):
    frame, source = datasets.load(builtin=name)
    cols = [c for c in frame.columns if c != "time"]
    time, values = validate_series(frame, source, "time", cols[:1], cols[1:], "error")
    assert len(time) == len(frame) and values.attrs["warnings"] == []


def test_the_new_data_settings_are_validated_and_leave_the_study_digest_alone(tmp_path):
    base = "name: x\ndata: {builtin: seed_sine%s}\n"
    p = tmp_path / "c.yaml"
    p.write_text(base % "")
    plain = load_config(p)
    assert plain.data.freq is None and plain.data.timezone is None
    p.write_text(base % ", freq: 15min, timezone: Europe/Berlin")
    cfg = load_config(p)
    assert (cfg.data.freq, cfg.data.timezone) == ("15min", "Europe/Berlin") and cfg.digest() != plain.digest()
    p.write_text(base % ", freq: hourly, timezone: Mars/Olympus")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).splitlines()[1:] == [
        "  data.freq: not a pandas offset alias such as 'h', '15min', 'D' or 'MS' (got 'hourly')",
        "  data.timezone: unknown time zone (give an IANA name such as 'UTC' or 'Europe/Berlin') (got 'Mars/Olympus')"]


# ---- 2. duplicate column names -------------------------------------------------------------------------------------

def test_a_header_naming_a_column_twice_is_an_error_naming_file_and_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("time,x,y, x\n1,2,3,4\n2,3,4,5\n")
    with pytest.raises(DataValidationError) as e:
        datasets.load(path="d.csv", base_dir=tmp_path)
    assert str(e.value) == (f"{p}, column 'x': duplicate column name in the header (columns 2 and 4); column names "
                            "must be unique")
    ok = tmp_path / "ok.csv"
    ok.write_text("time,x,x.1\n1,2,3\n")  # a column really called x.1 is fine
    assert list(datasets.read_table(ok).columns) == ["time", "x", "x.1"]


def test_duplicate_columns_in_parquet_and_in_batch_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnn_pipeline.serving.batch import read_input

    pq.write_table(pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4]), pa.array([5, 6])],
                                        names=["time", "v", "v"]), tmp_path / "d.parquet")
    with pytest.raises(DataValidationError, match=r"d.parquet, column 'v': duplicate column name in the header "
                                                  r"\(columns 2 and 3\)"):
        datasets.read_table(tmp_path / "d.parquet")
    (tmp_path / "b.csv").write_text("window_id,value,value\n1,2,3\n")
    with pytest.raises(DataValidationError, match="column 'value': duplicate column name"):
        read_input(str(tmp_path / "b.csv"))
    with pytest.raises(DataValidationError, match="column 'value': duplicate column name"):
        read_input((tmp_path / "b.csv").as_uri())


# ---- 3. every config problem at once -------------------------------------------------------------------------------

THREE_BAD = "name: x\ndata: {builtin: seed_sine}\nbogus: 1\nfeatures: {window: -3}\nmodel: {cell: transformer}\n"


def test_three_bad_fields_are_all_named_one_a_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(THREE_BAD)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).splitlines() == [
        f"{p}: 3 problems:",
        "  features.window: Input should be greater than or equal to 1 (got -3)",
        "  model.cell: Input should be 'rnn_tanh', 'rnn_relu', 'lstm' or 'gru' (got 'transformer')",
        "  unknown key 'bogus'"]


def test_checks_across_keys_report_every_problem_too(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine, path: d.csv, target_columns: [a], feature_columns: [a]}\n"
                 "task: classification\nregistry: {metric: mse}\ntuning: {space: {window: [4]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{p}: 2 problems:"  # the data section's own checks (the cross-section ones need it valid)
    assert "exactly one of 'builtin' or 'path'" in lines[1] and "are both target and feature" in lines[2]
    p.write_text("name: x\ndata: {builtin: seed_sine}\ntask: classification\nregistry: {metric: mse, floor: [x]}\n"
                 "tuning: {space: {window: [4]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{p}: 3 problems:" and "registry.metric 'mse' is a forecasting metric" in lines[1]
    assert "tuning.space.window: a forecasting setting" in lines[2] and "unknown baseline 'x'" in lines[3]


def test_a_value_fitting_no_member_of_a_union_is_one_problem(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine}\ntuning: {space: {window: abc}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (f"{p}: tuning.space.window: Input should be a valid dictionary or instance of IntRange; "
                            "or Input should be a valid list (got 'abc')")


def test_problems_from_set_say_so(tmp_path):
    from rnn_pipeline.overrides import parse_overrides

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine}\nfeatures: {window: -3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, parse_overrides(["model.hidden=abc"]), overrides_source="--set")
    assert str(e.value).splitlines() == [
        f"{p}: 2 problems:", "  features.window: Input should be greater than or equal to 1 (got -3)",
        "  model.hidden: Input should be a valid integer, unable to parse string as an integer (got 'abc') "
        "(from --set)"]
    with pytest.raises(ConfigError) as e:
        load_config("seed_sine", parse_overrides(["model.hidden=abc", "model.layers=0"]), overrides_source="--set")
    assert str(e.value).splitlines()[0] == "--set: 2 problems:"


def test_the_cli_prints_every_config_problem_on_its_own_line(tmp_path, monkeypatch, capsys):
    from flows import cli

    p = tmp_path / "bad.yaml"
    p.write_text(THREE_BAD + f"stores: {{root: '{tmp_path / 'state'}'}}\n")
    monkeypatch.setattr(sys, "argv", ["rnn-pipeline", "train", "--config", str(p)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[0] == f"error: {p}: 3 problems:" and len(err) == 4
    assert "features.window" in err[1] and "model.cell" in err[2] and "unknown key 'bogus'" in err[3]
    assert not (tmp_path / "state").exists()


# ---- 4. timestamps with and without a UTC offset -------------------------------------------------------------------

MIXED = ["2024-01-01 00:00", "2024-01-01 01:00+02:00", "2024-01-01 02:00"]


def test_timestamps_mixing_offsets_and_none_are_an_error_quoting_the_text():
    msg = one_line_error(series(MIXED))
    assert msg == ("data.csv, column 'time', row 2: timestamp with a UTC offset, but row 1 ('2024-01-01 00:00') has "
                   "none: a time column must not mix the two (2 without, 1 with an offset); give every timestamp its "
                   "offset, or set data.timezone (e.g. 'UTC' or 'Europe/Berlin') to the zone of those without one "
                   "(value: '2024-01-01 01:00+02:00')")
    msg = one_line_error(series(["2024-01-01 00:00+01:00", "2024-01-01 01:00+01:00", "2024-01-01 02:00"]))
    assert "row 3: timestamp without a UTC offset, but row 1 ('2024-01-01 00:00+01:00') has one" in msg
    assert msg.endswith("(value: '2024-01-01 02:00')")


def test_data_timezone_localizes_naive_timestamps_and_converts_the_others():
    times = ["2024-01-01 00:00+01:00", "2024-01-01 01:00", "2024-01-01 03:00+02:00", "2024-01-01 03:00"]
    time, _ = validate(series(times), timezone="Europe/Berlin")
    assert str(time.dt.tz) == "Europe/Berlin"
    assert list(time) == list(pd.date_range("2024-01-01 00:00", periods=4, freq="h", tz="Europe/Berlin"))
    time, _ = validate(series(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00"]), timezone="UTC")
    assert time.iloc[0] == pd.Timestamp("2024-01-01", tz="UTC")
    # Parquet / built-in datetimes too
    time, _ = validate(series(pd.date_range("2024-01-01", periods=5, freq="h")), timezone="Asia/Tokyo")
    assert time.iloc[0] == pd.Timestamp("2024-01-01", tz="Asia/Tokyo")
    # an error after the conversion quotes the file's text, and says what it stood for
    msg = one_line_error(series(MIXED), timezone="UTC")
    assert "row 2: timestamps are not sorted: comes after row 1 ('2024-01-01 00:00') (in UTC: 2024-01-01 " \
           "00:00:00+00:00 and 2023-12-31 23:00:00+00:00) (value: '2024-01-01 01:00+02:00')" in msg


def test_a_local_time_skipped_by_daylight_saving_and_a_numeric_time_column_are_refused():
    msg = one_line_error(series(["2024-03-31 01:00", "2024-03-31 02:30", "2024-03-31 04:00"]),
                         timezone="Europe/Berlin")
    assert "column 'time', row 2: local time that does not exist or is ambiguous in data.timezone " \
           "'Europe/Berlin'" in msg and "(value: '2024-03-31 02:30')" in msg
    with pytest.raises(DataValidationError, match="data.timezone is 'UTC', but the time column holds numbers"):
        validate(series(range(5)), timezone="UTC")


def test_data_timezone_reaches_the_split_and_monitoring_batches():
    from rnn_pipeline.forecasting.monitoring import read_batch

    times = [t.isoformat() for t in pd.date_range("2024-01-01", periods=10, freq="h")]
    frame = series(times)
    kept = before_test_end(frame, "data.csv", "time", "2024-01-01 05:00", timezone="Europe/Berlin")
    assert len(kept) == 5
    with pytest.raises(DataValidationError, match="row 3: timestamp with a UTC offset"):
        read_batch(series(["2024-01-01 10:00", "2024-01-01 11:00", "2024-01-01 12:00+01:00"]), "b.csv", "time",
                   ["value"], "error")
    b = read_batch(series(["2024-01-01 10:00", "2024-01-01 11:00", "2024-01-01 12:00+01:00"]), "b.csv", "time",
                   ["value"], "error", after=pd.Timestamp("2024-01-01 09:00", tz="Europe/Berlin"),
                   timezone="Europe/Berlin")
    assert str(b["time"].dt.tz) == "Europe/Berlin" and b["time"].iloc[2] == pd.Timestamp("2024-01-01 12:00",
                                                                                          tz="Europe/Berlin")


def test_the_forecasting_task_reads_freq_timezone_and_reports_the_filled_values(tmp_path):
    """The config's data.freq / data.timezone / data.missing reach validation; the run's data warnings (what the
    training flow logs and tags as data.warnings) say how many values were filled."""
    from rnn_pipeline import tasks

    stamps = pd.date_range("2024-01-01", periods=400, freq="h", tz="Europe/Berlin").tz_localize(None)
    frame = pd.DataFrame({"time": stamps.strftime("%Y-%m-%d %H:%M"), "value": np.sin(np.arange(400) / 5)})
    frame.loc[[10, 11, 12], "value"] = np.nan
    frame = frame.drop(index=[200, 201]).reset_index(drop=True)
    frame.to_csv(tmp_path / "d.csv", index=False)
    c = tmp_path / "c.yaml"
    c.write_text("name: x\ndata: {path: d.csv, missing: ffill, freq: h, timezone: Europe/Berlin}\n"
                 "features: {window: 24}\n")
    cfg = load_config(c)
    t = tasks.for_config(cfg)
    raw, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    data = t.prepare(t.read(raw, source), source)
    assert len(data.time) == 400 and str(data.time.dt.tz) == "Europe/Berlin"
    warnings = t.warnings(data)
    assert "1 gap in the time steps (2 missing steps in all), the first from row 200 ('2024-01-09 07:00') to " \
           "row 201 ('2024-01-09 10:00'): 3 h where 1 h is expected" in warnings[0]
    assert warnings[1] == ("d.csv, column 'value': missing: ffill filled 5 values (3 blank in the file, rows 11, 12, "
                           "13; 2 in the rows added for gaps in the time steps)")
    c.write_text("name: x\ndata: {path: d.csv}\n")
    cfg = load_config(c)
    with pytest.raises(DataValidationError, match=r"d.csv, column 'time': 1 gap in the time steps"):
        tasks.for_config(cfg).read(raw, source)
