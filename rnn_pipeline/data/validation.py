"""Checks on a raw series frame. Each failure raises DataValidationError naming file, column, row and value.

Rows are counted 1-based over data rows (the header is not a row), as a spreadsheet user would read them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rnn_pipeline.errors import DataValidationError

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38: a model computes in float32


def _row(pos: int) -> int:
    return int(pos) + 1


def check_columns(frame: pd.DataFrame, source: str, time_column: str, value_columns: list[str]) -> None:
    have = [str(c) for c in frame.columns]
    for col in [time_column, *value_columns]:
        if col not in frame.columns:
            raise DataValidationError(f"missing column '{col}' (columns present: {', '.join(have)})", source=source)


def _text(raw: pd.Series, pos: int) -> str:
    """A cell of the time column as the file gives it, quoted (the original text, not the parsed value)."""
    v = raw.iloc[pos]
    return repr(v) if isinstance(v, str) else f"'{v}'"


def _localize(t: pd.Series, tz: str, raw: pd.Series, source: str, column: str) -> pd.Series:
    """Naive datetimes as local times in `tz`. A local time that does not exist there, or is ambiguous (a
    daylight-saving change) and cannot be told from its neighbours, is an error naming its row."""
    try:
        out = t.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
    except (ValueError, TypeError):  # pytz/pandas raise AmbiguousTimeError (a ValueError) when it cannot infer
        out = t.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    bad = out.isna() & t.notna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError(f"local time that does not exist or is ambiguous in data.timezone {tz!r} (a "
                                  "daylight-saving change): give it with its UTC offset", source=source,
                                  column=column, row=_row(pos), value=raw.iloc[pos])
    return out


def _parse_text_times(raw: pd.Series, source: str, time_column: str, timezone: str | None) -> pd.Series:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns (and will raise) on mixed UTC offsets: handled below
        t = pd.to_datetime(raw, errors="coerce", format="mixed")
    if not pd.api.types.is_datetime64_any_dtype(t):  # objects: mixed offsets, or some with an offset, some without
        aware = np.array([getattr(x, "tzinfo", None) is not None for x in t])
        naive = t.notna().to_numpy() & ~aware
        if aware.any() and naive.any() and timezone is None:
            first = int(np.flatnonzero(aware | naive)[0])
            pos = int(np.flatnonzero(aware if naive[first] else naive)[0])  # the first row of the other kind
            has = "with a UTC offset" if aware[pos] else "without a UTC offset"
            other = "has none" if aware[pos] else "has one"
            raise DataValidationError(
                f"timestamp {has}, but row {_row(first)} ({_text(raw, first)}) {other}: a time column must not mix "
                f"the two ({int(naive.sum())} without, {int(aware.sum())} with an offset); give every timestamp its "
                "offset, or set data.timezone (e.g. 'UTC' or 'Europe/Berlin') to the zone of those without one",
                source=source, column=time_column, row=_row(pos), value=raw.iloc[pos])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            utc = pd.to_datetime(raw.where(~naive), errors="coerce", format="mixed", utc=True)  # compare in UTC
        if naive.any():  # with data.timezone: the ones without an offset are local times there
            local = _localize(pd.to_datetime(raw.where(naive), errors="coerce", format="mixed"), timezone, raw,
                              source, time_column)
            utc = utc.where(~naive, local.dt.tz_convert("UTC"))
        t = utc
    elif timezone is not None and t.dt.tz is None:
        t = _localize(t, timezone, raw, source, time_column)
    if t.isna().any():
        pos = int(np.flatnonzero(t.isna().to_numpy())[0])
        raise DataValidationError("not a timestamp", source=source, column=time_column, row=_row(pos),
                                  value=raw.iloc[pos])
    return t.dt.tz_convert(timezone) if timezone is not None else t


def parse_time(frame: pd.DataFrame, source: str, time_column: str, timezone: str | None = None) -> pd.Series:
    """The time column as numbers or datetimes, strictly increasing. Raises on blanks, junk, duplicates, disorder,
    and on timestamps without a UTC offset mixed with ones that have one. With `timezone` (data.timezone), naive
    timestamps are local times there and every timestamp is converted to it."""
    raw = frame[time_column]
    if raw.isna().any():
        pos = int(np.flatnonzero(raw.isna().to_numpy())[0])
        raise DataValidationError("missing timestamp", source=source, column=time_column, row=_row(pos))
    if pd.api.types.is_numeric_dtype(raw):
        if timezone is not None:
            raise DataValidationError(f"data.timezone is {timezone!r}, but the time column holds numbers, not "
                                      "timestamps: drop data.timezone", source=source, column=time_column)
        t = raw
    elif pd.api.types.is_datetime64_any_dtype(raw):
        t = raw
        if timezone is not None:
            t = _localize(t, timezone, raw, source, time_column) if t.dt.tz is None else t.dt.tz_convert(timezone)
    else:
        t = _parse_text_times(raw, source, time_column, timezone)
    values = t.to_numpy()

    def instants(*positions):  # what the text stands for, where parsing moved it to another zone
        if pd.api.types.is_datetime64_any_dtype(t) and t.dt.tz is not None and not \
                pd.api.types.is_datetime64_any_dtype(raw):
            return f" (in {t.dt.tz}: {' and '.join(str(t.iloc[p]) for p in positions)})"
        return ""

    dup = pd.Series(values).duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        same = int(np.flatnonzero(values[:pos] == values[pos])[0])
        raise DataValidationError(f"duplicate timestamp: the same time as row {_row(same)} ({_text(raw, same)})"
                                  f"{instants(same, pos)}", source=source, column=time_column, row=_row(pos),
                                  value=str(raw.iloc[pos]))
    if len(values) > 1:
        back = np.flatnonzero(values[1:] < values[:-1])
        if back.size:
            pos = int(back[0]) + 1
            raise DataValidationError(f"timestamps are not sorted: comes after row {pos} ({_text(raw, pos - 1)})"
                                      f"{instants(pos - 1, pos)}", source=source, column=time_column, row=_row(pos),
                                      value=str(raw.iloc[pos]))
    return t.reset_index(drop=True)


def span(td: pd.Timedelta) -> str:
    """A duration as a person writes it: '3 h', '15 min', '1 day 6 h', '90 ms'."""
    ns = int(td.value)
    parts = []
    for name, size in (("day", 86_400 * 10**9), ("h", 3_600 * 10**9), ("min", 60 * 10**9), ("s", 10**9),
                       ("ms", 10**6), ("us", 10**3), ("ns", 1)):
        k, ns = divmod(ns, size)
        if k:
            parts.append(f"{k} {name}{'s' if name == 'day' and k > 1 else ''}")
    return " ".join(parts) or "0 s"


@dataclass
class Steps:
    """What check_steps found: `grid`, the regular time column (None when the series is regular already) and
    `positions`, each row's place on it; `warning` says what filling the gaps added."""

    grid: pd.Series | None = None
    positions: np.ndarray | None = None
    warning: str | None = None


def _infer_offset(idx: pd.DatetimeIndex):
    """The time step of a datetime column: pandas' inferred frequency when the column is regular; else the most
    common frequency inferred over short runs of rows (a few gaps leave most runs regular); else the most common
    step."""
    from collections import Counter

    from pandas.tseries.frequencies import to_offset

    try:
        f = pd.infer_freq(idx)
    except (TypeError, ValueError):
        f = None
    if f:
        return to_offset(f), True
    k = 6
    found = Counter()
    for s in range(0, len(idx) - k + 1, max(1, (len(idx) - k) // 400)) if len(idx) >= k else []:  # <= 400 runs
        try:
            found[pd.infer_freq(idx[s:s + k])] += 1
        except (TypeError, ValueError):
            pass
    found.pop(None, None)
    if found:
        return to_offset(found.most_common(1)[0][0]), False
    steps, counts = np.unique(np.diff(idx.asi8), return_counts=True)
    return to_offset(pd.Timedelta(int(steps[np.argmax(counts)]), unit="ns")), False


MAX_GRID = 10_000_000  # rows a gap-filled series may reach (a wrong data.freq could ask for billions)


def check_steps(time: pd.Series, raw: pd.Series, source: str, time_column: str, freq: str | None = None,
                missing: str = "error") -> Steps:
    """The time steps must be regular: every step one time step (data.freq, or read from the column: the frequency
    pandas infers, or the most common step). A step of several time steps is a gap: an error naming the first one
    (its two rows as the file gives them, its size) and how many there are, unless `missing` fills ('interpolate',
    'ffill'): then the gaps' rows are added on the regular grid (Steps.grid, to be filled with the values). Any
    other step (shorter than the time step, or not a whole number of them) is an error. `raw`: the column as read,
    quoted in messages. A numeric time column gets the same check with its most common step."""
    n = len(time)
    numeric = not pd.api.types.is_datetime64_any_dtype(time)
    if numeric and freq is not None:
        raise DataValidationError(f"data.freq {freq!r} is for a datetime time column; this one holds numbers (its "
                                  "step is read from it): drop data.freq", source=source, column=time_column)
    if n < 2 or (n < 3 and freq is None):
        return Steps()
    local_days = False  # calendar steps of a tz-aware column: a daylight-saving change makes a day 23 or 25 h
    if numeric:
        v = time.to_numpy()
        d = np.diff(v)
        if np.issubdtype(v.dtype, np.integer):
            steps, counts = np.unique(d, return_counts=True)
            f = steps[np.argmax(counts)]
            whole, k = d % f == 0, d // f
        else:
            scale = float(np.median(d))
            steps, counts = np.unique(np.round(d / scale, 6), return_counts=True)
            f = float(steps[np.argmax(counts)]) * scale
            k = np.rint(d / f)
            whole = (k >= 1) & (np.abs(d - k * f) <= 1e-6 * f)
        expected = f"{f:g}"

        def size(a, b):
            return f"{v[b] - v[a]:g}"
    else:
        from pandas.tseries.frequencies import to_offset

        idx = pd.DatetimeIndex(time).as_unit("ns")
        if freq is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                off, regular = to_offset(freq), False
        else:
            off, regular = _infer_offset(idx)
        if regular:
            return Steps()
        tick = isinstance(off, pd.offsets.Tick) and (idx.tz is None or pd.Timedelta(off) < pd.Timedelta(days=1))
        local_days = not tick and idx.tz is not None
        expected = span(pd.Timedelta(off)) if tick else f"one step of {off.freqstr!r}"
        if tick:  # a fixed step: arithmetic on nanoseconds
            f = int(pd.Timedelta(off).value)
            d = np.diff(idx.asi8)
            whole, k = d % f == 0, d // f
        else:  # calendar steps (months, business days, local days across daylight saving): the grid itself
            grid = pd.date_range(idx[0], idx[-1], freq=off)
            on = grid.get_indexer(idx)
            if on[0] != 0:
                raise DataValidationError(f"the first timestamp is not on the time step {off.freqstr!r}",
                                          source=source, column=time_column, row=1, value=raw.iloc[0])
            k = np.diff(on)
            whole = (on[1:] >= 0) & (k >= 1)

        def size(a, b):
            return span(idx[b] - idx[a])
    odd = np.flatnonzero(~whole)
    if odd.size:
        pos = int(odd[0]) + 1
        how = f"{size(pos - 1, pos)} after row {_row(pos - 1)} ({_text(raw, pos - 1)})"
        raise DataValidationError(
            f"irregular time step: {how} where {expected} is expected ({_n(odd.size, 'such step')} in this column); the "
            f"steps must be whole multiples of it (set data.freq if the time step is not {expected}"
            + (f"; data.timezone if the days are local days in a zone other than {idx.tz}" if local_days else "") + ")",
            source=source, column=time_column, row=_row(pos), value=raw.iloc[pos])
    gaps = np.flatnonzero(k > 1)
    if not gaps.size:
        return Steps()
    first = int(gaps[0])
    missing_steps = int((k[gaps] - 1).sum())
    where = (f"{_n(gaps.size, 'gap')} in the time steps ({_n(missing_steps, 'missing step')} in all), the first from row "
             f"{_row(first)} ({_text(raw, first)}) to row {_row(first + 1)} ({_text(raw, first + 1)}): "
             f"{size(first, first + 1)} where {expected} is expected")
    if missing not in ("interpolate", "ffill"):
        raise DataValidationError(f"{where}; set data.missing to 'interpolate' or 'ffill' to fill the gaps (or "
                                  f"data.freq if the time step is not {expected})", source=source, column=time_column)
    positions = np.r_[0, np.cumsum(k)].astype(np.int64)
    total = int(positions[-1]) + 1
    if total > max(MAX_GRID, 10 * n):
        raise DataValidationError(f"{where}: filling them would make {total} rows of {n}; check data.freq",
                                  source=source, column=time_column)
    if numeric:
        grid = (v[0] + np.arange(total) * f).astype(v.dtype)
        grid[positions] = v  # the file's own values where it has them
    elif tick:
        grid = pd.date_range(idx[0], periods=total, freq=pd.Timedelta(off))
    grid = pd.Series(grid, name=time.name)
    warning = (f"{source}, column '{time_column}': {where}; missing: {missing} added {_n(missing_steps, 'row')} on "
               "the regular grid for them and filled their values")
    return Steps(grid, positions, warning)


def _numeric(raw: pd.Series, source: str, col: str) -> np.ndarray:
    """A value column as float64, NaN where it is blank. Non-numeric, infinite and float32-overflowing values are
    errors."""
    if pd.api.types.is_bool_dtype(raw):
        raise DataValidationError("boolean column where numbers are expected", source=source, column=col)
    num = pd.to_numeric(raw, errors="coerce")
    junk = num.isna() & raw.notna()
    if pd.api.types.is_object_dtype(raw):
        junk &= raw.astype(str).str.strip().ne("")
    if junk.any():
        pos = int(np.flatnonzero(junk.to_numpy())[0])
        raise DataValidationError("non-numeric value", source=source, column=col, row=_row(pos), value=raw.iloc[pos])
    arr = num.to_numpy(dtype="float64")
    inf = np.isinf(arr)
    if inf.any():
        pos = int(np.flatnonzero(inf)[0])
        raise DataValidationError("infinite value", source=source, column=col, row=_row(pos), value=float(arr[pos]))
    huge = np.abs(arr) > FLOAT32_MAX  # NaN compares False
    if huge.any():
        pos = int(np.flatnonzero(huge)[0])
        raise DataValidationError(f"value beyond float32's range (|x| > {FLOAT32_MAX:.8g}): it would be infinite "
                                  "in the model", source=source, column=col, row=_row(pos), value=float(arr[pos]))
    return arr


def _fill(arr: np.ndarray, source: str, col: str, missing: str) -> np.ndarray:
    """The missing-value policy: 'error' refuses a NaN, 'interpolate' / 'ffill' fill it (never a leading one)."""
    nan = np.isnan(arr)
    if not nan.any():
        return arr
    if missing == "error":
        pos = int(np.flatnonzero(nan)[0])
        raise DataValidationError(f"missing value ({int(nan.sum())} in this column); set data.missing to "
                                  "'interpolate' or 'ffill' to fill gaps", source=source, column=col, row=_row(pos))
    s = pd.Series(arr)
    # interpolation fills a gap from both of its neighbours (so the value after a gap informs it; use ffill
    # for strictly causal filling); neither policy invents values before the first observation
    s = s.interpolate(limit_area="inside").ffill() if missing == "interpolate" else s.ffill()
    if s.isna().all():
        raise DataValidationError("column has no values at all", source=source, column=col)
    if s.isna().any():
        pos = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise DataValidationError("leading missing value that cannot be filled from earlier rows", source=source,
                                  column=col, row=_row(pos))
    return s.to_numpy()


def numeric_columns(frame: pd.DataFrame, source: str, columns: list[str], missing: str) -> pd.DataFrame:
    """The value columns as float64, with the missing-value policy applied (error / interpolate / ffill).
    Infinite values are always an error; so is a gap that the policy cannot fill (a leading NaN under ffill)."""
    return pd.DataFrame({col: _fill(_numeric(frame[col], source, col), source, col, missing) for col in columns})


def _n(k: int, word: str) -> str:
    """'1 gap', '3 gaps', '2 such steps'."""
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def _rows(positions: np.ndarray, most: int = 5) -> str:
    shown = ", ".join(str(_row(p)) for p in positions[:most])
    return f"row {shown}" if len(positions) == 1 else f"rows {shown}" + (
        f" and {len(positions) - most} more" if len(positions) > most else "")


def check_variance(values: pd.DataFrame, source: str, columns: list[str]) -> None:
    for col in columns:
        if np.nanstd(values[col].to_numpy()) == 0:
            raise DataValidationError(f"target is constant (every value is {values[col].iloc[0]!r}): nothing to learn",
                                      source=source, column=col)


def check_outliers(values: np.ndarray, columns: list[str], train_rows: int, source: str, threshold: float,
                   policy: str) -> list[str]:
    """Values more than `threshold` robust deviations from their column's training median, anywhere in the series.
    A robust deviation is |x - median| / spread, over the first `train_rows` rows (the training split), where spread
    is the larger of 1.4826 MAD and IQR / 1.349 (both estimate the std of normal data and ignore a few wild values;
    the IQR keeps a column that is zero half the time, such as night-time irradiance, from flagging every sunny
    hour); the std stands in when both are 0, and a column constant over training is skipped. `policy`: 'warn'
    logs one warning per column (its first such row and value, and how many) and returns the messages; 'error'
    raises DataValidationError on the first; 'ignore' checks nothing. values: (n, len(columns))."""
    if policy == "ignore":
        return []
    found = []
    for j, col in enumerate(columns):
        x = values[:, j]
        train = x[:train_rows]
        median = float(np.median(train))
        q1, q3 = np.percentile(train, [25, 75])
        spread = max(1.4826 * float(np.median(np.abs(train - median))), float(q3 - q1) / 1.349) or float(np.std(train))
        if spread == 0:
            continue
        dev = np.abs(x - median) / spread
        far = np.flatnonzero(dev > threshold)
        if not far.size:
            continue
        pos = int(far[0])
        count = "1 such value" if far.size == 1 else f"{far.size} such values, the first shown"
        problem = (f"extreme value, {dev[pos]:.3g} robust deviations from the training median {median:.6g} (more "
                   f"than data.outlier_threshold {threshold:g}; {count} in this column)")
        if policy == "error":
            raise DataValidationError(f"{problem}; set data.outliers to 'warn' to train anyway", source=source,
                                      column=col, row=_row(pos), value=float(x[pos]))
        message = str(DataValidationError(problem, source=source, column=col, row=_row(pos), value=float(x[pos])))
        log.warning(message)
        found.append(message)
    return found


def check_length(n: int, source: str, needed: int, why: str) -> None:
    if n < needed:
        raise DataValidationError(f"series too short: {n} rows, need at least {needed} ({why})", source=source)


def validate_series(frame: pd.DataFrame, source: str, time_column: str, target_columns: list[str],
                    feature_columns: list[str], missing: str, freq: str | None = None,
                    timezone: str | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """Run every check on a raw frame; return (time, values) where values holds targets then features as float64.
    With a filling `missing` policy, gaps in the time steps become rows on the regular grid, filled like blank
    values; what was filled is logged and listed in ``values.attrs["warnings"]`` (prepare_series hands them on to
    the run's data warnings). `freq`, `timezone`: data.freq and data.timezone (see check_steps, parse_time)."""
    if frame.shape[0] == 0:
        raise DataValidationError("no data rows", source=source)
    cols = [*target_columns, *feature_columns]
    check_columns(frame, source, time_column, cols)
    time = parse_time(frame, source, time_column, timezone)
    steps = check_steps(time, frame[time_column], source, time_column, freq, missing)
    warnings = [] if steps.warning is None else [steps.warning]
    added = 0
    if steps.grid is not None:
        time, added = steps.grid, len(steps.grid) - len(time)
    out = {}
    for col in cols:
        arr = _numeric(frame[col], source, col)
        blank = np.flatnonzero(np.isnan(arr))
        if steps.grid is not None:
            full = np.full(len(steps.grid), np.nan)
            full[steps.positions] = arr
            arr = full
        out[col] = _fill(arr, source, col, missing)
        if blank.size or added:
            parts = [f"{blank.size} blank in the file, {_rows(blank)}"] if blank.size else []
            parts += [f"{added} in the rows added for gaps in the time steps"] if added else []
            warnings.append(f"{source}, column '{col}': missing: {missing} filled {_n(blank.size + added, 'value')} "
                            f"({'; '.join(parts)})")
    values = pd.DataFrame(out)
    check_variance(values, source, target_columns)
    for w in warnings:
        log.warning(w)
    values.attrs["warnings"] = warnings
    return time, values
