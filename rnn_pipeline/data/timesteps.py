"""The time column: parsing (UTC offsets, time zones) and the regular-step check (gaps, irregular steps, filling the
gaps onto the regular grid). Each failure raises DataValidationError naming file, column, row and value.

Rows are counted 1-based over data rows (the header is not a row), as a spreadsheet user would read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rnn_pipeline.errors import DataValidationError


def _row(pos: int) -> int:
    return int(pos) + 1


def _n(k: int, word: str) -> str:
    """'1 gap', '3 gaps', '2 such steps'."""
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


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
