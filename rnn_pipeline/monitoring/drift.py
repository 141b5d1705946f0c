"""Monitoring: a new batch of the series against the reference (the data the champion was trained on).

Evidently compares window statistics of the batch with those of the reference (a univariate value alone says
little: level, spread and step size of each window, and the value that follows it), with one fixed statistical
method so a verdict means the same at every batch size. Where the batch holds actuals for the champion's
forecasts, its error there is compared with its error on its own test windows: a change of dynamics that keeps
the value distribution (a new frequency) shows up there. The flow (flows/monitoring.py) records and acts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.data.validation import check_columns, numeric_columns, parse_time
from rnn_pipeline.errors import DataValidationError, PipelineError
from rnn_pipeline.forecasting.windows import lag_matrix, target_matrix

log = logging.getLogger(__name__)
BATCH_SUFFIXES = (".csv", ".parquet", ".pq")
REFERENCE_DIR = "reference"
REFERENCE_SERIES, REFERENCE_META = "series.parquet", "reference.json"
# Evidently methods whose score is a p-value (drift when below the threshold); the rest are distances
# (drift when at or above it).
P_VALUE_METHODS = {"ks", "anderson", "cramer_von_mises", "mannw", "t_test", "es", "chisquare", "z", "fisher_exact",
                   "g_test"}
SKIPPED_NAMES = {"processed", "quarantine"}


# ---- batches -------------------------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_batches(folder: str | Path) -> list[Path]:
    """Batch files waiting in the incoming folder, in name order (name them so that order is arrival order:
    a timestamp or a zero-padded counter)."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise PipelineError(f"monitoring.incoming '{folder}' is not a folder")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES and not p.name.startswith("."))


def read_batch(frame: pd.DataFrame, source: str, time_column: str, columns: list[str], missing: str,
               after=None) -> pd.DataFrame:
    """Validate a batch like training data and return it as (time, columns...) float64. `after`: the last time
    already seen; a batch must continue the series, not rewrite it."""
    if frame.shape[0] == 0:
        raise DataValidationError("no data rows", source=source)
    check_columns(frame, source, time_column, columns)
    t = parse_time(frame, source, time_column)
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


# ---- window features -----------------------------------------------------------------------------------------
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


# ---- drift (Evidently) ---------------------------------------------------------------------------------------
@dataclass
class DriftResult:
    share: float
    n_drifted: int
    scores: dict[str, dict] = field(default_factory=dict)  # feature -> {score, drifted}
    method: str = ""
    threshold: float | None = None
    snapshot: object = None

    def save_html(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))
        return path


def _category_shares(values: np.ndarray, keys: list) -> np.ndarray:
    """Evidently's binning of a categorical column for its distance tests: shares per category, 0 -> 0.0001."""
    counts = pd.Series(values).value_counts()
    shares = np.array([counts.get(k, 0) for k in keys], dtype="float64") / max(len(values), 1)
    shares[shares == 0] = 0.0001
    return shares


def calibrate_thresholds(reference: pd.DataFrame, block: int, k: float = 1.5, floor: float = 0.1,
                         categorical: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-feature thresholds, calibrated on the reference at the batch's size: k x the largest distance between a
    contiguous block of `block` reference rows and the whole reference (the normed Wasserstein distance; for a
    `categorical` column, the Jensen-Shannon distance of the category shares). Overlapping windows make a batch one
    long dependent sample, so a batch drawn from the reference's own regime lands far from it by chance; this
    measures how far, per feature, at this batch size. (Rows that are exchangeable, such as classified items,
    should be shuffled first, so that a block is a random sample.)"""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    n = len(reference)
    block = max(2, min(block, n // 2))
    step = max(1, block // 4)
    starts = range(0, n - block + 1, step)
    out = {}
    for c in reference.columns:
        r = reference[c].to_numpy()
        if c in categorical:
            keys = sorted(set(r))
            whole = _category_shares(r, keys)
            worst = max(float(jensenshannon(whole, _category_shares(r[i:i + block], keys))) for i in starts)
        else:
            scale = max(float(np.std(r)), 0.001)  # Evidently's normalisation
            worst = max(wasserstein_distance(r, r[i:i + block]) / scale for i in starts)
        out[c] = max(floor, k * worst)
    return out


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, method: str,
                 threshold: float | str | None, calibration_k: float = 1.5,
                 categorical: tuple[str, ...] = ()) -> DriftResult:
    """Evidently's data-drift preset over the feature columns, with one fixed stat test for every numeric column
    (and Jensen-Shannon for the `categorical` ones). threshold: a number for every numeric feature, None for
    Evidently's defaults, or 'auto' (wasserstein only): per-feature thresholds calibrated on the reference at this
    batch size."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    if len(current) < 2:
        raise PipelineError(f"a drift check needs at least 2 windows in the batch, got {len(current)}")
    kwargs = {"num_method": method}
    methods = {c: ("jensenshannon" if c in categorical else method) for c in reference.columns}
    if categorical:
        kwargs["cat_method"] = "jensenshannon"
    if threshold == "auto":
        if method != "wasserstein":
            raise PipelineError(f"drift_threshold 'auto' is calibrated for the wasserstein method, not '{method}'")
        kwargs["per_column_threshold"] = calibrate_thresholds(reference, len(current), calibration_k,
                                                              categorical=categorical)
    elif threshold is not None:
        kwargs["num_threshold"] = threshold
    snap = Report([DataDriftPreset(**kwargs)]).run(reference_data=reference, current_data=current)
    scores, count, share = _drift_values(snap.dict(), list(reference.columns), methods,
                                         None if threshold == "auto" else threshold)
    return DriftResult(share, count, scores, method, threshold, snap)


def _drift_values(d: dict, columns: list[str], methods: dict[str, str], threshold: float | None):
    count = share = None
    scores: dict[str, dict] = {}
    for m in d["metrics"]:
        cfg = m.get("config", {})
        kind = str(cfg.get("type", ""))
        value = m.get("value")
        if "DriftedColumnsCount" in kind:
            count, share = int(value["count"]), float(value["share"])
        elif "ValueDrift" in kind and cfg.get("column") in columns:
            thr = cfg.get("threshold", threshold)
            score = float(value)
            if thr is None:
                drifted = None
            elif methods[cfg["column"]] in P_VALUE_METHODS:
                drifted = bool(score < thr)
            else:
                drifted = bool(score >= thr)
            scores[cfg["column"]] = {"score": score, "drifted": drifted,
                                     "threshold": None if thr is None else float(thr)}
    if share is None:
        raise PipelineError("Evidently's report has no drifted-columns count: unexpected report layout")
    return scores, count, share


# ---- the champion's error on the batch -----------------------------------------------------------------------
def batch_errors(predict_windows, values: np.ndarray, n_targets: int, window: int, horizon: int,
                 start: int) -> tuple[np.ndarray, np.ndarray]:
    """Forecast every window whose targets lie at or after `start` and inside `values` (the history before
    `start` supplies the inputs). Returns (y_true, y_pred), each (N, H, T), in original units."""
    first = np.arange(max(start, window), len(values) - horizon + 1)
    if len(first) == 0:
        empty = np.zeros((0, horizon, n_targets))
        return empty, empty
    x = lag_matrix(values, first, window)
    return target_matrix(values, first, horizon, n_targets), predict_windows(x)


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)))


# ---- verdict ---------------------------------------------------------------------------------------------------
def verdict(drift_share: float, error_ratio: float | None, share_threshold: float, ratio_threshold: float) -> str:
    """degraded (the champion's error grew) outranks drift (the inputs moved); otherwise ok."""
    if error_ratio is not None and math.isfinite(error_ratio) and error_ratio >= ratio_threshold:
        return "degraded"
    if error_ratio is not None and not math.isfinite(error_ratio):
        return "degraded"
    if drift_share >= share_threshold:
        return "drift"
    return "ok"


# ---- the reference and the retraining window -------------------------------------------------------------------
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
    (folder / REFERENCE_META).write_text(json.dumps(meta, indent=2))
    return folder


def read_reference(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    folder = Path(folder)
    return pd.read_parquet(folder / REFERENCE_SERIES), json.loads((folder / REFERENCE_META).read_text())


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
