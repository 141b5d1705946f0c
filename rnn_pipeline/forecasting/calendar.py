"""Calendar features: known-future covariates generated from the timestamps (`features.calendar`).

Each named cycle becomes two input columns, its phase as sine and cosine (`cal_hour_sin`, `cal_hour_cos`, ...), so
that 23:00 sits next to 00:00. They are computed from a row's own time, in training, in monitoring and at prediction
(a request sends the rows' times instead of the columns). Because the time steps are regular, the calendar of every
forecast step follows from the window's: the model knows the hours, weekdays or seasons it forecasts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rnn_pipeline.errors import DataValidationError

# cycle -> (its phase in [0, 1) from a DatetimeIndex-like accessor)
CYCLES = {
    "hour": lambda t: (t.hour + t.minute / 60 + t.second / 3600) / 24,
    "dayofweek": lambda t: (t.dayofweek + t.hour / 24) / 7,
    "dayofyear": lambda t: (t.dayofyear - 1 + t.hour / 24) / np.where(t.is_leap_year, 366, 365),
    "month": lambda t: (t.month - 1 + (t.day - 1) / t.days_in_month) / 12,
}
PREFIX = "cal_"


def columns(names: list[str]) -> list[str]:
    """The input columns of the cycles `names`, in order."""
    return [f"{PREFIX}{n}_{f}" for n in names for f in ("sin", "cos")]


def frame(time, names: list[str], source: str | None = None, time_column: str = "time",
          timezone: str | None = None) -> pd.DataFrame:
    """The calendar columns of `names` for the times `time` (a datetime Series or a list of timestamps), read in
    `timezone` (training's zone, see `zone`: naive times are local there, others converted to it; None: the times'
    own wall clock) as training read them. Times that are numbers or not timestamps are an error naming the column
    and row."""
    t = pd.Series(time).reset_index(drop=True)
    if not pd.api.types.is_datetime64_any_dtype(t):
        if pd.api.types.is_numeric_dtype(t):
            raise DataValidationError("features.calendar needs timestamps, and this time column holds numbers",
                                      source=source, column=time_column, row=1, value=t.iloc[0] if len(t) else None)
        parsed = _parse(t)
        if parsed.isna().any():
            r = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise DataValidationError("not a timestamp (the model reads calendar features computed from each row's "
                                      "time)", source=source, column=time_column, row=r + 1, value=t.iloc[r])
        t = parsed
    if timezone is not None:  # training's zone: an instant's calendar is read there
        try:
            t = t.dt.tz_localize(timezone) if t.dt.tz is None else t.dt.tz_convert(timezone)
        except Exception as e:  # a local time that a clock change skips or repeats
            raise DataValidationError(f"cannot read these times in {timezone}: {e} (give them with a UTC offset)",
                                      source=source, column=time_column) from None
    elif t.dt.tz is not None:  # training read wall times: so is this
        t = t.dt.tz_localize(None)
    dt = t.dt
    out = {}
    for n in names:
        phase = 2 * np.pi * np.asarray(CYCLES[n](dt), dtype="float64")
        out[f"{PREFIX}{n}_sin"], out[f"{PREFIX}{n}_cos"] = np.sin(phase), np.cos(phase)
    return pd.DataFrame(out)


def _parse(t: pd.Series) -> pd.Series:
    """Timestamps as text (mixed formats; offsets that differ between rows are read as instants, in UTC)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(t, errors="coerce", format="mixed")
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or not pd.api.types.is_datetime64_any_dtype(parsed):
            parsed = pd.to_datetime(t, errors="coerce", format="mixed", utc=True)
    return parsed


def keep_unscaled(parts, input_columns: list[str], names: list[str]) -> None:
    """Calendar columns enter the model as the phases they are (in [-1, 1]): offset 0 and scale 1 in each prepared
    series' scaling and z, in place (a series' own scaler would read the same hour differently in every series, and
    inflate a cycle that its training rows barely span)."""
    for col in columns(names):
        j = input_columns.index(col)
        for p in parts:
            p.scaling.offset[j], p.scaling.scale[j] = 0.0, 1.0
            p.z[:, j] = torch.from_numpy(p.values[:, j].astype("float32"))


def zone(time: pd.Series, timezone: str | None) -> str | None:
    """The zone training read its times in: data.timezone, else that of tz-aware times (None: wall times)."""
    if timezone is not None:
        return timezone
    tz = getattr(time.dt, "tz", None) if pd.api.types.is_datetime64_any_dtype(time) else None
    return None if tz is None else str(tz)


def add(values: pd.DataFrame, time: pd.Series, names: list[str], source: str | None = None,
        time_column: str = "time", timezone: str | None = None) -> pd.DataFrame:
    """`values` with the calendar columns of `names` appended (replacing any of the same names)."""
    if not names:
        return values
    cal = frame(time, names, source, time_column, timezone)
    cal.index = values.index
    out = values.drop(columns=[c for c in cal.columns if c in values.columns])
    out = pd.concat([out, cal], axis=1)
    out.attrs = values.attrs  # validation's warnings travel with the values
    return out
