"""Checks on a raw series frame. Each failure raises DataValidationError naming file, column, row and value. The
time column's own checks (parsing, regular steps) are in timesteps.py.

Rows are counted 1-based over data rows (the header is not a row), as a spreadsheet user would read them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rnn_pipeline.data.timesteps import _n, _row, check_steps, parse_time
from rnn_pipeline.errors import DataValidationError

log = logging.getLogger(__name__)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e38: a model computes in float32


def check_columns(frame: pd.DataFrame, source: str, time_column: str, value_columns: list[str]) -> None:
    have = [str(c) for c in frame.columns]
    for col in [time_column, *value_columns]:
        if col not in frame.columns:
            raise DataValidationError(f"missing column '{col}' (columns present: {', '.join(have)})", source=source)


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


def _rows(positions: np.ndarray, most: int = 5) -> str:
    shown = ", ".join(str(_row(p)) for p in positions[:most])
    return f"row {shown}" if len(positions) == 1 else f"rows {shown}" + (
        f" and {len(positions) - most} more" if len(positions) > most else "")


def check_variance(values: pd.DataFrame, source: str, columns: list[str]) -> None:
    for col in columns:
        if np.nanstd(values[col].to_numpy()) == 0:
            raise DataValidationError(f"target is constant (every value is {values[col].iloc[0]!r}): nothing to learn",
                                      source=source, column=col)


def _robust_spread(x: np.ndarray) -> float:
    """The larger of 1.4826 MAD and IQR / 1.349: each estimates the std of normal data and ignores a few wild values."""
    q1, q3 = np.percentile(x, [25, 75])
    return max(1.4826 * float(np.median(np.abs(x - np.median(x)))), float(q3 - q1) / 1.349)


def check_outliers(values: np.ndarray, columns: list[str], train_rows: int, source: str, threshold: float,
                   policy: str) -> list[str]:
    """Values more than `threshold` robust deviations from their column's training median, anywhere in the series.
    A robust deviation is |x - median| / spread, over the first `train_rows` rows (the training split), where spread
    is the larger of 1.4826 MAD and IQR / 1.349 (both estimate the std of normal data and ignore a few wild values).
    A column whose median value holds a quarter of its training rows or more (irradiance is zero at night, and on a
    cloudy coast for most of the day) also measures that spread over its other values, and takes the larger: the
    quartiles of a series that is mostly zero would flag every sunny hour. The std stands in when MAD and IQR are 0,
    and a column constant over training is skipped. `policy`: 'warn' logs one warning per column (its first such row and
    value, and how many) and returns the messages; 'error' raises DataValidationError on the first; 'ignore' checks
    nothing. values: (n, len(columns))."""
    if policy == "ignore":
        return []
    found = []
    for j, col in enumerate(columns):
        x = values[:, j]
        train = x[:train_rows]
        median = float(np.median(train))
        spread = _robust_spread(train) or float(np.std(train))
        off = train[train != median]
        if 4 <= len(off) <= 0.75 * len(train):
            spread = max(spread, _robust_spread(off))
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
