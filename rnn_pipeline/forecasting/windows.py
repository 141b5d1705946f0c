"""Leakage-free preprocessing for forecasting: chronological split, scaling fitted on train only, windows as views.

Splits are defined on *target positions*: a window belongs to the split that holds all of its H targets, so
no training window predicts a validation or test point. Its L inputs may reach back into earlier splits (the
past is known at forecast time). Because the boundaries are positions, every window length L tried by the
tuner is scored on the same test targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view

from rnn_pipeline.data.scaling import Scaling, fit_scaler
from rnn_pipeline.errors import DataValidationError


@dataclass
class SplitPoints:
    n: int
    val_start: int  # first position whose target belongs to validation
    test_start: int  # first position whose target belongs to test

    def first_targets(self, split: str, window: int, horizon: int) -> np.ndarray:
        """Positions of the first target of every window of length `window` whose targets all lie in `split`."""
        lo, hi = {"train": (0, self.val_start), "val": (self.val_start, self.test_start),
                  "test": (self.test_start, self.n)}[split]
        return np.arange(max(lo, window), hi - horizon + 1)


def _position(time: pd.Series, value, name: str) -> int:
    if pd.api.types.is_datetime64_any_dtype(time):
        try:
            v = pd.Timestamp(value)
        except (ValueError, TypeError):
            raise DataValidationError(f"split.{name}: not a timestamp", value=value) from None
        tz = getattr(time.dt, "tz", None)
        if tz is not None and v.tzinfo is None:
            v = v.tz_localize(tz)
        elif tz is None and v.tzinfo is not None:
            v = v.tz_convert("UTC").tz_localize(None)
        return int(time.searchsorted(v, side="left"))
    else:
        try:
            v = float(value)
        except (ValueError, TypeError):
            raise DataValidationError(f"split.{name}: the time column is numeric; give a number", value=value) from None
    return int(np.searchsorted(time.to_numpy(), np.asarray(v, dtype=time.to_numpy().dtype), side="left"))


def end_position(time: pd.Series, test_end) -> int:
    """The number of rows before `test_end` (split.test_end): where the series ends for training and evaluation."""
    end = _position(time, test_end, "test_end")
    if end == 0:
        raise DataValidationError(f"split.test_end is at or before the first row ({time.iloc[0]}): it leaves no data",
                                  value=test_end)
    return end


def before_test_end(frame: pd.DataFrame, source: str, time_column: str, test_end,
                    timezone: str | None = None) -> pd.DataFrame:
    """The rows of a raw frame before `test_end` (all of them when it is None), so that nothing at or after it is
    even validated or used to fill a gap (interpolation reads the next value). `timezone`: data.timezone."""
    if test_end is None:
        return frame
    from rnn_pipeline.data.timesteps import parse_time
    from rnn_pipeline.data.validation import check_columns

    check_columns(frame, source, time_column, [])
    return frame.iloc[: end_position(parse_time(frame, source, time_column, timezone), test_end)]


def split_points(time: pd.Series, val: float, test: float, window: int, horizon: int,
                 val_start=None, test_start=None, test_end=None) -> SplitPoints:
    """Chronological split. By fractions of the windows of length `window` (the seed's convention: test =
    the last `test` share of windows), or by explicit times. `test_end` (exclusive) ends the series: rows at or
    after it belong to no split, so the test windows are those whose H targets all lie in [test_start, test_end);
    with fractions, the fractions apply to the rows before it."""
    n = len(time) if test_end is None else end_position(time, test_end)
    n_windows = n - window - horizon + 1
    if test_start is not None:
        t_pos = _position(time, test_start, "test_start")
        if test_end is not None and t_pos >= n:
            raise DataValidationError(f"split.test_end must come after split.test_start ({test_start!r}): no row lies "
                                      "between them", value=test_end)
    else:
        t_pos = window + int(n_windows * (1 - test))
    if val_start is not None:
        v_pos = _position(time, val_start, "val_start")
    else:
        v_pos = window + int(n_windows * (1 - test - val))
    if not 0 < v_pos < t_pos < n:
        raise DataValidationError(f"split leaves an empty part: validation starts at row {v_pos + 1}, "
                                  f"test at row {t_pos + 1}, of {n} rows")
    return SplitPoints(n, v_pos, t_pos)


def check_split_sizes(points: SplitPoints, source: str, max_window: int, horizon: int, min_windows: int = 2) -> None:
    """Every split must hold at least `min_windows` windows at the largest window length that will be tried."""
    counts = {s: len(points.first_targets(s, max_window, horizon)) for s in ("train", "val", "test")}
    short = {s: c for s, c in counts.items() if c < min_windows}
    if short:
        desc = ", ".join(f"{s}: {c}" for s, c in counts.items())
        raise DataValidationError(
            f"series too short: {points.n} rows leave too few windows of L={max_window} + H={horizon} per split "
            f"({desc}; need at least {min_windows} each)", source=source)


# Training losses. Validation, pruning and early stopping use the MSE (eval_loss); a quantile model's, plus its
# quantiles' pinball loss.
LOSSES = {"mse": torch.nn.functional.mse_loss, "mae": torch.nn.functional.l1_loss,
          "huber": lambda out, y: torch.nn.functional.huber_loss(out, y, delta=1.0)}


def pinball_loss(out: torch.Tensor, y: torch.Tensor, levels) -> torch.Tensor:
    """The mean pinball (quantile) loss of forecasts `out` (..., Q) at `levels` (Q,) for actuals `y` (...)."""
    q = torch.as_tensor(levels, dtype=out.dtype, device=out.device)
    diff = y.unsqueeze(-1) - out
    return torch.maximum(q * diff, (q - 1) * diff).mean()


class WindowSet:
    """Windows over a scaled (n, F) tensor, as a view: ``unfold`` gives (n-L-H+1, F, L+H) without copying.
    A batch gathers only its own windows. Columns 0..T-1 are the targets."""

    def __init__(self, z: torch.Tensor, n_targets: int, window: int, horizon: int, first_targets: np.ndarray,
                 criterion: str = "mse"):
        if criterion not in LOSSES:
            raise ValueError(f"unknown loss '{criterion}' (one of {', '.join(LOSSES)})")
        self.z, self.T, self.L, self.H, self.criterion = z, n_targets, window, horizon, criterion
        self.starts = torch.as_tensor(first_targets - window, dtype=torch.long)
        self._view = z.unfold(0, window + horizon, 1)  # (n-L-H+1, F, L+H), a view

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, idx: torch.Tensor | None = None, all_steps: bool = False):
        """X (B, L, F) and targets: (B, H, T), or with all_steps (B, L, H, T): step j's H next values."""
        starts = self.starts if idx is None else self.starts[idx]
        seq = self._view[starts].transpose(1, 2)  # (B, L+H, F): the only copy
        x = seq[:, : self.L]
        if not all_steps:
            return x, seq[:, self.L:, : self.T]
        y = seq[:, 1:, : self.T].unfold(1, self.H, 1)  # (B, L, T, H)
        return x, y.permute(0, 1, 3, 2)

    # the interface train.fit uses (shared with sequences.SequenceSet)
    def to(self, device) -> WindowSet:
        if torch.device(device).type == "cpu":
            return self
        return WindowSet(self.z.to(device), self.T, self.L, self.H, self.starts.numpy() + self.L, self.criterion)

    def order(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(self), generator=generator)

    def loss(self, model, idx: torch.Tensor, loss_steps: str = "last", burn_in: float = 0.5) -> torch.Tensor:
        """The training loss (`criterion`: mse, mae or huber) of a batch; with loss_steps='all', of every step's
        forecast after the burn-in share of the window, where the model supports it (a direct head on unnormalised
        inputs; other models train on the last step's forecast)."""
        all_steps = loss_steps == "all" and getattr(model, "supports_all_steps", False)
        x, y = self.batch(idx, all_steps=all_steps)
        levels = getattr(model, "quantile_levels", ())
        if levels:  # a quantile model: its point forecast's loss plus its quantiles' mean pinball loss
            out, q = model(x, all_steps=all_steps, quantiles="both")
        else:
            out, q = model(x, all_steps=all_steps), None
        if all_steps:
            first = int(self.L * burn_in)
            out, y = out[:, first:], y[:, first:]
            q = None if q is None else q[:, first:]
        loss = LOSSES[self.criterion](out, y)
        return loss if q is None else loss + pinball_loss(q, y, levels)

    @torch.no_grad()
    def eval_loss(self, model, chunk: int = 8192) -> float:
        """Mean squared error of the last-step forecast over all windows (scaled units); for a quantile model, plus
        the mean pinball loss of its quantiles (it is trained on both: early stopping and the search judge both)."""
        model.eval()
        levels = getattr(model, "quantile_levels", ())
        total, n = 0.0, 0
        for i in range(0, len(self), chunk):
            x, y = self.batch(torch.arange(i, min(i + chunk, len(self))))
            if levels:
                point, q = model(x, quantiles="both")
                total += pinball_loss(q, y, levels).item() * len(x)
            else:
                point = model(x)
            total += torch.sum((point - y) ** 2).item() / y[0].numel()
            n += len(x)
        return total / max(n, 1)


def lag_matrix(values: np.ndarray, first_targets: np.ndarray, window: int) -> np.ndarray:
    """(N, L, F) input windows ending just before each first target, gathered from numpy's sliding view."""
    view = sliding_window_view(values, window, axis=0)  # (n-L+1, F, L), a view
    return view[first_targets - window].transpose(0, 2, 1)


def target_matrix(values: np.ndarray, first_targets: np.ndarray, horizon: int, n_targets: int) -> np.ndarray:
    """(N, H, T) true future values for each window."""
    view = sliding_window_view(values[:, :n_targets], horizon, axis=0)  # (n-H+1, T, H)
    return view[first_targets].transpose(0, 2, 1)


class Windowed:
    """What training reads of prepared data (a series, or a panel's series laid end to end): windows of a split as
    views over `z`, whose first `n_targets` columns are the targets. Needs z, points, target_columns, horizon."""

    @property
    def n_targets(self) -> int:
        return len(self.target_columns)

    def windows(self, split: str, window: int, criterion: str = "mse") -> WindowSet:
        return WindowSet(self.z, self.n_targets, window, self.horizon,
                         self.points.first_targets(split, window, self.horizon), criterion)


@dataclass
class PreparedSeries(Windowed):
    """A validated series, split and scaled: everything training and evaluation need."""

    source: str
    time: pd.Series
    values: np.ndarray  # (n, F) original units, targets first
    z: torch.Tensor  # (n, F) float32, scaled with `scaling` (fitted on the training rows only)
    scaling: Scaling
    points: SplitPoints
    target_columns: list[str]
    feature_columns: list[str]
    horizon: int
    warnings: list[str] = field(default_factory=list)  # data warnings (filled values, extreme values) to report


def prepare_series(time: pd.Series, values: pd.DataFrame, source: str, target_columns: list[str],
                   feature_columns: list[str], *, window: int, max_window: int, horizon: int, scaler: str,
                   val: float, test: float, val_start=None, test_start=None, test_end=None, outliers: str = "warn",
                   outlier_threshold: float = 25.0) -> PreparedSeries:
    """Split chronologically, fit the scaler on the training rows only, scale everything with it. Rows at or after
    `test_end` are dropped first: they take no part in anything. Values far from their column's training median
    are reported or refused as `outliers` says (validation.check_outliers), once the training split is known.
    The data warnings start with validate_series' (``values.attrs["warnings"]``: values it filled)."""
    from rnn_pipeline.data.validation import check_length, check_outliers

    filled = list(values.attrs.get("warnings", []))
    cut = ""
    if test_end is not None:
        end = end_position(time, test_end)
        cut = f"; split.test_end={test_end!r} keeps the first {end} of {len(values)} rows"
        time, values = time.iloc[:end], values.iloc[:end]
    n = len(values)
    check_length(n, source, max_window + horizon + 6, f"window L={max_window} + horizon H={horizon} "
                 f"+ at least two windows in each of train, validation and test{cut}")
    points = split_points(time, val, test, window, horizon, val_start, test_start, test_end)
    if test_end is not None:
        k = len(points.first_targets("test", max_window, horizon))
        if k < 2:
            raise DataValidationError(f"split.test_end leaves {k} test window(s): {n - points.test_start} row(s) from "
                                      f"the test start (row {points.test_start + 1}) to it, need at least "
                                      f"H + 1 = {horizon + 1}", source=source, value=test_end)
    check_split_sizes(points, source, max_window, horizon)
    arr = values[[*target_columns, *feature_columns]].to_numpy(dtype="float64")
    warnings = filled + check_outliers(arr, [*target_columns, *feature_columns], points.val_start, source,
                                       outlier_threshold, outliers)
    scaling = fit_scaler(scaler, arr[: points.val_start])
    train_std = arr[: points.val_start, : len(target_columns)].std(axis=0)
    for col, s in zip(target_columns, train_std):
        if s == 0:
            raise DataValidationError("target is constant over the training split: nothing to learn",
                                      source=source, column=col)
    z = torch.from_numpy(scaling.transform(arr).astype("float32"))
    return PreparedSeries(source, time, arr, z, scaling, points, list(target_columns), list(feature_columns), horizon,
                          warnings)
