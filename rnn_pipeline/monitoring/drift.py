"""Monitoring, for every task: batch files, Evidently's drift report with per-feature thresholds, and the verdict.

Evidently compares the features of a batch (window statistics of a series, descriptors of texts or sequences: see
each task's monitoring module) with those of the reference (the data the champion was trained on), with one fixed
statistical method so a verdict means the same at every batch size. The verdict adds the champion's error or
accuracy on the batch. The flow (flows/monitoring.py) records and acts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rnn_pipeline.errors import PipelineError

BATCH_SUFFIXES = (".csv", ".parquet", ".pq")
# what training records with a model (an MLflow artifact folder) and the file in it that names its task
REFERENCE_DIR, REFERENCE_META = "reference", "reference.json"
# Evidently methods whose score is a p-value (drift when below the threshold); the rest are distances
# (drift when at or above it).
P_VALUE_METHODS = {"ks", "anderson", "cramer_von_mises", "mannw", "t_test", "es", "chisquare", "z", "fisher_exact",
                   "g_test"}
# forecasting's reference writing and window features moved to rnn_pipeline.forecasting.monitoring; training and
# older callers still import them from here
_MOVED = {"REFERENCE_SERIES", "reference_meta", "write_reference", "read_reference", "window_features"}


def __getattr__(name: str):
    if name in _MOVED:  # imported on first use: rnn_pipeline.forecasting.monitoring imports this module
        from rnn_pipeline.forecasting import monitoring as forecasting

        return getattr(forecasting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ---- drift (Evidently) ---------------------------------------------------------------------------------------
@dataclass
class DriftResult:
    share: float
    n_drifted: int
    scores: dict[str, dict] = field(default_factory=dict)  # feature -> {score, drifted}
    method: str = ""
    threshold: float | None = None
    snapshot: object = None

    def save_html(self, path: str | Path, header=None, share_lib: bool = False) -> Path:
        """The Evidently report as HTML; `header` (rnn_pipeline.monitoring.report.ReportHeader) on top, and with
        `share_lib` Evidently's bundle beside the file instead of inside it (see rnn_pipeline.monitoring.report)."""
        from rnn_pipeline.monitoring.report import save_report

        return save_report(self.snapshot, path, header, share_lib=share_lib)


def calibrate_thresholds(reference: pd.DataFrame, block: int, k: float = 1.5, floor: float = 0.1,
                         categorical: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-feature thresholds, calibrated on the reference at the batch's size: k x the largest distance between a
    contiguous block of `block` reference rows and the whole reference (the normed Wasserstein distance; for a
    `categorical` column, the Jensen-Shannon distance of the category shares). Overlapping windows make a batch one
    long dependent sample, so a batch drawn from the reference's own regime lands far from it by chance; this
    measures how far, per feature, at this batch size. (Rows that are exchangeable, such as classified items,
    should be shuffled first, so that a block is a random sample.)"""
    # Evidently's own stat tests, so that a threshold is on the report's scale (binning and normalisation
    # included). Evidently 0.7 keeps its stat-test registry under evidently.legacy (the new metrics run it too,
    # and name their methods from it); it has no other public entry point for one test on two samples.
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test, wasserstein_stat_test
    from evidently.legacy.core import ColumnType

    n = len(reference)
    block = max(2, min(block, n // 2))
    step = max(1, block // 4)
    starts = range(0, n - block + 1, step)
    out = {}
    for c in reference.columns:
        r = reference[c].reset_index(drop=True)
        test, kind = ((jensenshannon_stat_test, ColumnType.Categorical) if c in categorical
                      else (wasserstein_stat_test, ColumnType.Numerical))
        worst = max(float(test(r, r.iloc[i:i + block], kind, None).drift_score) for i in starts)
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
    scores, count, share = _drift_values(snap, list(reference.columns), methods,
                                         None if threshold == "auto" else threshold)
    return DriftResult(share, count, scores, method, threshold, snap)


def _drift_values(snap, columns: list[str], methods: dict[str, str], threshold: float | None):
    """The preset's results: its drifted-columns count (the one count result) and each column's drift score (a
    single value, with its column and threshold among the metric's parameters)."""
    from evidently.core.metric_types import CountValue, SingleValue

    count = share = None
    scores: dict[str, dict] = {}
    for result in snap.metric_results.values():
        params = result.get_metric_value_location().metric.params
        if isinstance(result, CountValue):
            count, share = int(result.count.value), float(result.share.value)
        elif isinstance(result, SingleValue) and params.get("column") in columns:
            thr = params.get("threshold", threshold)
            score = float(result.value)
            if thr is None:
                drifted = None
            elif methods[params["column"]] in P_VALUE_METHODS:
                drifted = bool(score < thr)
            else:
                drifted = bool(score >= thr)
            scores[params["column"]] = {"score": score, "drifted": drifted,
                                        "threshold": None if thr is None else float(thr)}
    if share is None:
        raise PipelineError("Evidently's report has no drifted-columns count: unexpected report layout")
    return {c: scores[c] for c in columns if c in scores}, count, share


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
