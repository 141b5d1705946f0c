"""Panels: many series in one long table (`data.id_column`, the time column, targets, features), validated series by
series, split by time and scaled per series on its own training rows, and laid end to end in one tensor so that
training windows are views across every series (forecasting.windows.WindowSet) and never cross from one series
into the next.

Each series is prepared exactly as a single series is (forecasting.windows.prepare_series: its own split, checks and
scaler), so every check that holds for one series holds for each, and errors name the series. The same cut for
every series: `split.val_start`/`test_start` (times); by fractions, each series' own tail."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rnn_pipeline.data.validation import check_columns, validate_series
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting.windows import PreparedSeries, Windowed, before_test_end, prepare_series


def _in_series(e: DataValidationError, source: str, sid: str, rows: np.ndarray | None = None) -> DataValidationError:
    """A series' error, re-raised naming the file and the series; `rows`: the series' row positions in the file,
    so that a row number is the file's (data rows counted from 1, as everywhere)."""
    row = e.row
    if rows is not None and row is not None and 1 <= row <= len(rows):
        row = int(rows[row - 1]) + 1
    where = f"{source}, series {sid!r}"
    src = where if e.source in (None, source) else f"{where} ({e.source})"
    return DataValidationError(e.problem, source=src, column=e.column, row=row, value=e.value)


def series_groups(frame: pd.DataFrame, source: str, id_column: str) -> dict[str, np.ndarray]:
    """Series id (as text) -> the row positions of its rows, in file order; series in order of first appearance.
    Blank ids are an error naming the row."""
    check_columns(frame, source, id_column, [])
    ids = frame[id_column]
    blank = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if blank.any():
        r = int(np.flatnonzero(blank)[0])
        raise DataValidationError("blank series id: every row must name its series", source=source,
                                  column=id_column, row=r + 1, value=None if pd.isna(ids.iloc[r]) else ids.iloc[r])
    keys = ids.astype(str).to_numpy()  # by position: the frame's own index may have holes
    return {str(k): v for k, v in pd.Series(np.arange(len(keys))).groupby(keys, sort=False).indices.items()}


def validate_panel(frame: pd.DataFrame, source: str, d, test_end=None) -> list[tuple[str, pd.Series, pd.DataFrame]]:
    """Every series checked as a single series is (validation.validate_series: time steps regular, no duplicate
    timestamps, numbers finite, targets not constant), after dropping its rows at or after `test_end`.
    `d`: the config's data section. Returns (series id, time, values) per series, in order of first appearance."""
    if frame.shape[0] == 0:
        raise DataValidationError("no data rows", source=source)
    features = [*d.feature_columns, *d.static_columns]
    check_columns(frame, source, d.time_column, [*d.target_columns, *features, d.id_column])
    out = []
    for sid, rows in series_groups(frame, source, d.id_column).items():
        part = frame.iloc[rows].reset_index(drop=True)
        try:
            part = before_test_end(part, source, d.time_column, test_end, d.timezone)
            if part.shape[0] == 0:
                raise DataValidationError(f"split.test_end={test_end!r} leaves none of its rows")
            time, values = validate_series(part, source, d.time_column, d.target_columns, features,
                                           d.missing, freq=d.freq, timezone=d.timezone)
            check_static(values, d.static_columns, source)
        except DataValidationError as e:
            raise _in_series(e, source, sid, rows) from None
        out.append((sid, time, values))
    if not out:
        raise DataValidationError("no series", source=source)
    check_same_step(out, source, d.time_column)
    return out


def check_static(values: pd.DataFrame, static_columns: list[str], source: str) -> None:
    """A static covariate holds one value over its series: the first row where it changes is an error."""
    for col in static_columns:
        v = values[col].to_numpy()
        changed = np.flatnonzero(v != v[0])
        if changed.size:
            r = int(changed[0])
            raise DataValidationError(f"static column changes within the series (row 1 has {v[0]:g}): a static "
                                      "covariate holds one value per series", source=source, column=col, row=r + 1,
                                      value=float(v[r]))


def scale_static(parts: list[PreparedSeries], columns: list[str], static_columns: list[str]) -> None:
    """Static covariates on one scale for every series: the mean and std of their training rows over all series
    (each series' own scaler would map its constant to 0). Each series' scaling and z are set to it, in place."""
    for col in static_columns:
        j = columns.index(col)
        train = np.concatenate([p.values[: p.points.val_start, j] for p in parts])
        mean, std = float(train.mean()), float(train.std())
        std = std if std > 0 else 1.0
        for p in parts:
            p.scaling.offset[j], p.scaling.scale[j] = mean, std
            p.z[:, j] = torch.from_numpy(((p.values[:, j] - mean) / std).astype("float32"))


def check_same_step(series: list[tuple[str, pd.Series, pd.DataFrame]], source: str, time_column: str) -> None:
    """One model reads one time step: every series must step as the first does (each is regular already)."""
    steps = [(sid, time.diff().median()) for sid, time, _ in series if len(time) > 1]
    first_sid, first = steps[0] if steps else (None, None)
    for sid, step in steps[1:]:
        if step != first:
            raise DataValidationError(f"series {sid!r} steps by {step}, series {first_sid!r} by {first}: one model "
                                      "reads series of one time step (resample them first)", source=source,
                                      column=time_column)


@dataclass
class PanelPoints:
    """Where each series lies in the panel's tensor (`offsets`) and how each is split (its own SplitPoints).
    `first_targets` answers as SplitPoints does, with positions in the whole tensor: every window lies inside one
    series. `cap`: at most this many training windows per series, spread evenly over its training split."""

    offsets: np.ndarray
    parts: list
    cap: int | None = None

    @property
    def n(self) -> int:
        return int(self.offsets[-1] + self.parts[-1].n)

    def first_targets(self, split: str, window: int, horizon: int) -> np.ndarray:
        out = []
        for off, p in zip(self.offsets, self.parts):
            idx = p.first_targets(split, window, horizon)
            if split == "train" and self.cap is not None and len(idx) > self.cap:
                idx = idx[np.linspace(0, len(idx) - 1, self.cap).round().astype(int)]
            out.append(idx + off)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def series_of(self, positions: np.ndarray) -> np.ndarray:
        """The series (its position in the panel) each tensor position belongs to."""
        return np.searchsorted(self.offsets, positions, side="right") - 1


@dataclass
class PreparedPanel(Windowed):
    """A validated panel, each series split and scaled on its own training rows (`parts`: one PreparedSeries
    each), laid end to end in `z` for training. What training and tuning read (z, points, windows, n_targets,
    horizon) is what a PreparedSeries offers (Windowed)."""

    source: str
    id_column: str
    series_ids: list[str]
    parts: list[PreparedSeries]
    z: torch.Tensor
    points: PanelPoints
    target_columns: list[str]
    feature_columns: list[str]
    horizon: int
    warnings: list[str] = field(default_factory=list)

    @property
    def n_series(self) -> int:
        return len(self.series_ids)

    def digest(self) -> str:
        h = hashlib.sha256()
        for sid, p in zip(self.series_ids, self.parts):
            h.update(sid.encode())
            h.update(np.ascontiguousarray(p.values).tobytes())
            h.update(pd.util.hash_pandas_object(p.time, index=False).to_numpy().tobytes())
        h.update(",".join([self.id_column, *self.target_columns, *self.feature_columns]).encode())
        return h.hexdigest()


def prepare_panel(series: list[tuple[str, pd.Series, pd.DataFrame]], source: str, id_column: str,
                  target_columns: list[str], feature_columns: list[str], *, window: int, max_window: int,
                  horizon: int, scaler: str, val: float, test: float, val_start=None, test_start=None, test_end=None,
                  outliers: str = "warn", outlier_threshold: float = 25.0,
                  max_windows_per_series: int | None = None, static_columns=()) -> PreparedPanel:
    """Each series prepared as a single series (prepare_series: split, length and outlier checks, the scaler fitted
    on its training rows), errors naming the series; the static covariates (inputs after `feature_columns`) scaled
    over all series together; then laid end to end."""
    feature_columns = [*feature_columns, *static_columns]
    parts = []
    for sid, time, values in series:
        try:
            parts.append(prepare_series(time, values, source, target_columns, feature_columns, window=window,
                                        max_window=max_window, horizon=horizon, scaler=scaler, val=val, test=test,
                                        val_start=val_start, test_start=test_start, test_end=test_end,
                                        outliers=outliers, outlier_threshold=outlier_threshold))
        except DataValidationError as e:
            raise _in_series(e, source, sid) from None
    scale_static(parts, [*target_columns, *feature_columns], list(static_columns))
    lengths = np.array([p.points.n for p in parts])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    points = PanelPoints(offsets, [p.points for p in parts], max_windows_per_series)
    z = torch.cat([p.z for p in parts])
    warnings = [f"series {sid!r}: {w}" for (sid, _, _), p in zip(series, parts) for w in p.warnings]
    return PreparedPanel(source, id_column, [s[0] for s in series], parts, z, points, list(target_columns),
                         list(feature_columns), horizon, warnings)
