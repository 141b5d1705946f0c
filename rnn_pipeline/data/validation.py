"""Checks on a raw series frame. Each failure raises DataValidationError naming file, column, row and value.

Rows are counted 1-based over data rows (the header is not a row), as a spreadsheet user would read them.
"""

from __future__ import annotations

import logging

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


def parse_time(frame: pd.DataFrame, source: str, time_column: str) -> pd.Series:
    """The time column as numbers or datetimes, strictly increasing. Raises on blanks, junk, duplicates, disorder."""
    raw = frame[time_column]
    if raw.isna().any():
        pos = int(np.flatnonzero(raw.isna().to_numpy())[0])
        raise DataValidationError("missing timestamp", source=source, column=time_column, row=_row(pos))
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw):
        t = raw
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns (and will raise) on mixed UTC offsets: handled below
            t = pd.to_datetime(raw, errors="coerce", format="mixed")
        if not pd.api.types.is_datetime64_any_dtype(t):  # mixed offsets (local time across DST): compare in UTC
            t = pd.to_datetime(raw, errors="coerce", format="mixed", utc=True)
        if t.isna().any():
            pos = int(np.flatnonzero(t.isna().to_numpy())[0])
            raise DataValidationError("not a timestamp", source=source, column=time_column, row=_row(pos),
                                      value=raw.iloc[pos])
    values = t.to_numpy()
    dup = pd.Series(values).duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise DataValidationError("duplicate timestamp", source=source, column=time_column, row=_row(pos),
                                  value=str(t.iloc[pos]))
    if len(values) > 1:
        back = np.flatnonzero(values[1:] < values[:-1])
        if back.size:
            pos = int(back[0]) + 1
            raise DataValidationError(f"timestamps are not sorted: comes after {t.iloc[pos - 1]}", source=source,
                                      column=time_column, row=_row(pos), value=str(t.iloc[pos]))
    return t.reset_index(drop=True)


def numeric_columns(frame: pd.DataFrame, source: str, columns: list[str], missing: str) -> pd.DataFrame:
    """The value columns as float64, with the missing-value policy applied (error / interpolate / ffill).
    Infinite values are always an error; so is a gap that the policy cannot fill (a leading NaN under ffill)."""
    out = {}
    for col in columns:
        raw = frame[col]
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
        nan = np.isnan(arr)
        if nan.any():
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
            arr = s.to_numpy()
        out[col] = arr
    return pd.DataFrame(out)


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
                    feature_columns: list[str], missing: str) -> tuple[pd.Series, pd.DataFrame]:
    """Run every check on a raw frame; return (time, values) where values holds targets then features as float64."""
    if frame.shape[0] == 0:
        raise DataValidationError("no data rows", source=source)
    cols = [*target_columns, *feature_columns]
    check_columns(frame, source, time_column, cols)
    time = parse_time(frame, source, time_column)
    values = numeric_columns(frame, source, cols, missing)
    check_variance(values, source, target_columns)
    return time, values
