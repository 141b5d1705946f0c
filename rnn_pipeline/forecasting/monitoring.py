"""Monitoring a forecaster: a new batch of the series against the reference (the series the champion was trained on).

Evidently compares window statistics of the batch with those of the reference (a univariate value alone says
little: level, spread and step size of each window, and the value that follows it). Where the batch holds actuals
for the champion's forecasts, its error there is compared with its error on its own test windows: a change of
dynamics that keeps the value distribution (a new frequency) shows up there. From the inference log, each logged
window is described the same way, and the live error is the MSE of the logged forecasts against the posted actuals.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.data.timesteps import parse_time
from rnn_pipeline.data.validation import check_columns, numeric_columns
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting import calendar, intervals
from rnn_pipeline.forecasting.windows import lag_matrix, target_matrix
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring.task import NothingToRetrain, Outcome, TaskMonitor, fmt, frames

REFERENCE_SERIES = "series.parquet"


# ---- the reference ---------------------------------------------------------------------------------------------
def reference_meta(time_column: str, columns: list[str], n_targets: int, window: int, horizon: int, test_mse: float,
                   time: pd.Series, data_digest: str) -> dict:
    return {"format": 1, "time_column": time_column, "columns": list(columns), "n_targets": n_targets,
            "window": int(window), "horizon": int(horizon), "test_mse": float(test_mse), "n_rows": int(len(time)),
            "first_time": str(time.iloc[0]), "last_time": str(time.iloc[-1]), "data_digest": data_digest}


def write_reference(folder: str | Path, time: pd.Series, values: np.ndarray, meta: dict) -> Path:
    """The data a model was trained on, with what monitoring needs to judge batches against it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(values, columns=meta["columns"])
    frame.insert(0, meta["time_column"], time.to_numpy())
    frame.to_parquet(folder / REFERENCE_SERIES, index=False)
    (folder / monitor.REFERENCE_META).write_text(json.dumps(meta, indent=2))
    return folder


def read_reference(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    folder = Path(folder)
    return pd.read_parquet(folder / REFERENCE_SERIES), json.loads((folder / monitor.REFERENCE_META).read_text())


# ---- batches and the series -----------------------------------------------------------------------------------
def read_batch(frame: pd.DataFrame, source: str, time_column: str, columns: list[str], missing: str,
               after=None, timezone: str | None = None) -> pd.DataFrame:
    """Validate a batch like training data and return it as (time, columns...) float64. `after`: the last time
    already seen; a batch must continue the series, not rewrite it."""
    if frame.shape[0] == 0:
        raise DataValidationError("no data rows", source=source)
    check_columns(frame, source, time_column, columns)
    t = parse_time(frame, source, time_column, timezone)  # timezone: data.timezone, as in training
    values = numeric_columns(frame, source, columns, missing)
    if after is not None:
        first = t.iloc[0]
        try:
            stale = not first > after
        except TypeError:
            raise DataValidationError(f"time values of type {type(first).__name__} cannot be compared with the "
                                      f"series' {type(after).__name__} times", source=source, column=time_column,
                                      row=1, value=str(first)) from None
        if stale:
            raise DataValidationError(f"batch does not continue the series: its first time is not after the last "
                                      f"time already seen ({after})", source=source, column=time_column, row=1,
                                      value=str(first))
    out = values.copy()
    out.insert(0, time_column, t.to_numpy())
    return out


def stream(reference: pd.DataFrame, batches: list[pd.DataFrame], time_column: str) -> pd.DataFrame:
    """The reference followed by every accepted batch that comes after it, in time order."""
    last = reference[time_column].iloc[-1]
    later = [b for b in batches if len(b) and b[time_column].iloc[0] > last]
    if not later:
        return reference.reset_index(drop=True)
    out = pd.concat([reference, *later], ignore_index=True)
    return out.sort_values(time_column, kind="stable").drop_duplicates(time_column, keep="last").reset_index(drop=True)


def retrain_window(full: pd.DataFrame, policy: str, recent_points: int) -> pd.DataFrame:
    if policy == "recent":
        return full.iloc[-recent_points:].reset_index(drop=True)
    return full


def described_columns(columns: list[str], bundle) -> list[str]:
    """The columns whose windows monitoring describes: all but the calendar's (a function of the time, not data)."""
    cal = set(getattr(bundle, "calendar_columns", None) or [])
    return [c for c in columns if c not in cal]


def read_calendar_batch(raw: pd.DataFrame, source: str, time_column: str, columns: list[str], cfg, after,
                        bundle) -> pd.DataFrame:
    """read_batch for a champion whose inputs may include calendar columns: the batch holds the others, and the
    calendar's are computed from its times."""
    cal = getattr(bundle, "calendar", None)
    cal_cols = set(getattr(bundle, "calendar_columns", None) or [])
    out = read_batch(raw, source, time_column, [c for c in columns if c not in cal_cols], cfg.data.missing,
                     after=after, timezone=cfg.data.timezone)
    if cal:  # in the zone training read its times in, as a request's are
        out = calendar.add(out, out[time_column], cal["cycles"], source, time_column, cal.get("timezone"))
    return out[[time_column, *columns]]


# ---- window features ------------------------------------------------------------------------------------------
def window_features(values: np.ndarray, columns: list[str], n_targets: int, window: int,
                    start: int = 0) -> pd.DataFrame:
    """One row per window whose target index i >= max(start, window): level (mean), spread (std) and step
    (mean absolute first difference) of each column over values[i-L:i], and the target value(s) values[i].
    Rolling statistics in O(n) memory."""
    frame = pd.DataFrame(values, columns=columns)
    roll = frame.rolling(window)
    step = frame.diff().abs().rolling(window - 1) if window > 1 else None
    feats = {}
    for c in columns:
        feats[f"{c}_level"] = roll[c].mean().shift(1)
        feats[f"{c}_spread"] = roll[c].std(ddof=0).shift(1)
        if step is not None:
            feats[f"{c}_step"] = step[c].mean().shift(1)
    for c in columns[:n_targets]:
        feats[f"{c}_next"] = frame[c]
    out = pd.DataFrame(feats)
    first = max(start, window)
    return out.iloc[first:].reset_index(drop=True)


def batch_errors(predict_windows, values: np.ndarray, n_targets: int, window: int, horizon: int,
                 start: int, with_inputs: bool = False) -> tuple:
    """Forecast every window whose targets lie at or after `start` and inside `values` (the history before
    `start` supplies the inputs). Returns (y_true, y_pred), each (N, H, T), in original units (`with_inputs`: and
    the windows (N, L, F))."""
    first = np.arange(max(start, window), len(values) - horizon + 1)
    if len(first) == 0:
        empty = np.zeros((0, horizon, n_targets))
        return (empty, empty, np.zeros((0, window, values.shape[1]))) if with_inputs else (empty, empty)
    x = lag_matrix(values, first, window)
    out = target_matrix(values, first, horizon, n_targets), predict_windows(x)
    return (*out, x) if with_inputs else out


# ---- the inference log ----------------------------------------------------------------------------------------
def forecast_windows(frame: pd.DataFrame, columns: list[str], window: int) -> np.ndarray:
    """The logged input windows that the champion reads (same columns, same length) as (N, L, F)."""
    out = []
    for text in frame["inputs"]:
        d = json.loads(text)
        if d.get("columns") == list(columns) and len(d["values"]) == window:
            out.append(d["values"])
    return np.asarray(out, dtype="float64").reshape(len(out), window, len(columns))


def window_stats(x: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Level (mean), spread (std) and step (mean absolute first difference) of every column of every window (the
    definitions of `window_features`). A window whose values are too large to describe (a statistic overflows) is
    left out."""
    feats = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for j, c in enumerate(columns):
            feats[f"{c}_level"] = x[:, :, j].mean(1)
            feats[f"{c}_spread"] = x[:, :, j].std(1)
            if x.shape[1] > 1:
                feats[f"{c}_step"] = np.abs(np.diff(x[:, :, j], axis=1)).mean(1)
    out = pd.DataFrame(feats)
    return out[np.isfinite(out.to_numpy()).all(1)].reset_index(drop=True)


def forecast_errors(labelled: pd.DataFrame, targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Logged forecasts and their actual values, each (N, H, T)."""
    if len(labelled) == 0:
        return np.zeros((0, 1, len(targets))), np.zeros((0, 1, len(targets)))
    pred = [json.loads(t) for t in labelled["output"]]
    true = [json.loads(t)["values"] for t in labelled["actual"]]
    y_pred = np.asarray([[p[t] for t in targets] for p in pred], dtype="float64").transpose(0, 2, 1)
    y_true = np.asarray([[a[t] for t in targets] for a in true], dtype="float64").transpose(0, 2, 1)
    return y_true, y_pred


def coverage(b, y_true: np.ndarray, y_pred: np.ndarray, x: np.ndarray | None = None,
             series: np.ndarray | None = None) -> dict[str, float] | None:
    """The champion's prediction intervals on the judged windows: the share of actuals inside, per level (None for a
    champion without intervals, or with intervals from its quantiles when the windows `x` are not at hand: the
    inference log's actuals)."""
    if not getattr(b, "levels", None):
        return None
    if getattr(b, "interval_method", "conformal") == "quantiles":
        if x is None:
            return None
        bounds = b.interval_bounds(y_pred, series, x=x)
    elif series is not None:
        bounds = intervals.bounds(y_pred, b.halfwidths(series))
    else:
        bounds = intervals.bounds(y_pred, b.halfwidths())
    return {intervals.label(a): float(((lo <= y_true) & (y_true <= hi)).mean()) for a, (lo, hi) in zip(b.levels, bounds)}


# ---- the task's monitoring ------------------------------------------------------------------------------------
class ForecastingMonitor(TaskMonitor):
    """A batch continues the series; the state is the series so far (the reference and every accepted batch)."""

    task = "forecasting"
    SCORE_COLUMNS = (("champ mse", "champion_mse"), ("ratio", "error_ratio"))

    @staticmethod
    def score_text(row: dict) -> str:
        return "error ratio " + ("-" if row["error_ratio"] is None else f"{row['error_ratio']:.2f}")

    @classmethod
    def load(cls, folder: Path, cfg, bundle, version: str) -> ForecastingMonitor:
        reference, meta = read_reference(folder)
        described = described_columns(meta["columns"], bundle)
        features = window_features(reference[described].to_numpy(), described, meta["n_targets"], meta["window"])
        return cls(reference, meta, features, bundle, version)

    def initial_state(self, accepted: list[dict]) -> pd.DataFrame:
        return stream(self.reference, frames(accepted), self.meta["time_column"])

    def read_batch(self, raw: pd.DataFrame, source: str, cfg, state: pd.DataFrame) -> pd.DataFrame:
        tcol = self.meta["time_column"]
        return read_calendar_batch(raw, source, tcol, self.meta["columns"], cfg, state[tcol].iloc[-1], self.bundle)

    def judge(self, cfg, state: pd.DataFrame, batch: pd.DataFrame) -> Outcome:
        """Evidently drift over window features (the series' last window supplies the first ones) and the champion's
        error on the batch's windows."""
        m, mc, b = self.meta, cfg.monitoring, self.bundle
        cols, window = m["columns"], m["window"]
        tail = state.iloc[-window:]
        combined = np.concatenate([tail[cols].to_numpy(), batch[cols].to_numpy()])
        described = described_columns(cols, b)
        current = window_features(combined[:, [cols.index(c) for c in described]], described, m["n_targets"], window,
                                  start=len(tail))
        drift = monitor.drift_report(self.features, current, mc.drift_method, mc.drift_threshold,
                                     mc.drift_calibration)
        x_cols = [cols.index(c) for c in b.input_columns]
        y_true, y_pred, x = batch_errors(b.predict_windows, combined[:, x_cols], len(b.target_columns), b.window,
                                         b.horizon, start=len(tail), with_inputs=True)
        return self._outcome(cfg, drift, y_true, y_pred, x)

    def accept(self, state, raw, batch, cfg):
        tcol = self.meta["time_column"]
        fields = {"n_rows": len(batch), "first_time": str(batch[tcol].iloc[0]), "last_time": str(batch[tcol].iloc[-1])}
        return pd.concat([state, batch], ignore_index=True), batch, fields

    def judge_log(self, cfg, current: pd.DataFrame, labelled: pd.DataFrame) -> Outcome:
        """Drift of the logged windows' statistics against the reference windows', and the champion's live MSE (its
        logged forecasts against the posted actuals)."""
        m, mc = self.meta, cfg.monitoring
        x = forecast_windows(current, m["columns"], m["window"])
        if len(x) < mc.min_windows:
            raise DataValidationError(f"only {len(x)} logged window(s) read the champion's columns {m['columns']} "
                                      f"over {m['window']} steps; monitoring needs at least {mc.min_windows}")
        described = described_columns(m["columns"], self.bundle)
        stats = window_stats(x[:, :, [m["columns"].index(c) for c in described]], described)
        drift = monitor.drift_report(self.features[list(stats.columns)], stats, mc.drift_method, mc.drift_threshold,
                                     mc.drift_calibration)
        y_true, y_pred = forecast_errors(labelled, self.bundle.target_columns)
        outcome = self._outcome(cfg, drift, y_true, y_pred)
        if len(stats) < len(x):
            outcome.warnings.append(f"{len(x) - len(stats)} logged window(s) hold values too large to describe; "
                                    "left out of the drift comparison")
        return outcome

    def _outcome(self, cfg, drift: monitor.DriftResult, y_true: np.ndarray, y_pred: np.ndarray,
                 x: np.ndarray | None = None) -> Outcome:
        """The champion's MSE on the scored windows (with at least min_windows of them) against its test MSE, and
        the verdict with the drift."""
        from sklearn.metrics import mean_squared_error

        mc, ref = cfg.monitoring, self.meta["test_mse"]
        champion_mse = ratio = None
        if len(y_true) >= mc.min_windows:
            champion_mse = float(mean_squared_error(y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)))
            ratio = champion_mse / ref if ref > 0 else (float("inf") if champion_mse > 0 else 1.0)
        return Outcome(drift, len(y_true), monitor.verdict(drift.share, ratio, mc.drift_share, mc.error_ratio),
                       champion_mse=champion_mse, error_ratio=ratio, reference_mse=ref,
                       coverage=coverage(self.bundle, y_true, y_pred, x) if champion_mse is not None else None)

    def log_frame(self, answered, cfg) -> None:
        return None  # forecasts and their actuals are not a series

    def retrain_data(self, cfg, state: pd.DataFrame, accepted) -> pd.DataFrame:
        """The window of the series (the champion's reference and every batch since) that the retrain policy keeps;
        the gate scores champion and challenger on its newest windows."""
        if len(state) <= len(self.reference):  # an inference-log verdict with no batch of the series since
            raise NothingToRetrain("retrain skipped (no new series data)", "no batch of the series since the champion",
                                   f"no new data of the series has arrived since champion v{self.version} was trained "
                                   "(forecasts and actuals in the log are not a series): nothing new to retrain on")
        r = cfg.monitoring.retrain
        return retrain_window(state, r.policy, r.recent_points)

    @staticmethod
    def retrain_config(data_path: Path) -> dict:
        # the retrain window extends past the configured split times (split.test_end would cut every new row): it
        # is split by the fractions
        return {"data": {"builtin": None, "path": str(data_path)},
                "split": {"val_start": None, "test_start": None, "test_end": None}}

    def describe(self, outcome: Outcome) -> str:
        covered = "".join(f", {k}% interval covers {100 * v:.1f}%" for k, v in (outcome.coverage or {}).items())
        return (f"drifted share {outcome.drift.share:.2f}, champion v{self.version} MSE {fmt(outcome.champion_mse)}, "
                f"error ratio {fmt(outcome.error_ratio)}{covered}")
