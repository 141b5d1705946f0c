"""What monitoring needs from a task: the typed outcome of judging a batch, and the interface that each task's
monitoring implements (rnn_pipeline.forecasting.monitoring, rnn_pipeline.classification.monitoring).

The flow is the same for every task (read a batch, judge it, record it, retrain on drift or degradation); what a
batch is, how it is judged and what a retrain learns from is the task's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from rnn_pipeline.errors import PipelineError
from rnn_pipeline.monitoring.drift import DriftResult


@dataclass
class Outcome:
    """A judged batch: the drift, the champion's error or accuracy on it against its test figures, and the verdict."""
    drift: DriftResult
    n_windows: int  # the windows (forecasting) or items (classification) judged
    verdict: str
    champion_mse: float | None = None
    error_ratio: float | None = None
    reference_mse: float | None = None
    labels: dict | None = None  # classification with labels: accuracy, f1_macro, n_labelled, unseen_labels
    reference_accuracy: float | None = None
    prediction_drift: bool | None = None
    coverage: dict[str, float] | None = None  # forecasting with intervals: the share of actuals inside, per level
    series: dict[str, dict] | None = None  # panels: each series' drift and error
    series_drift_share: float | None = None  # panels: the share of the series judged that drifted
    warnings: list[str] = field(default_factory=list)  # for the run's log

    def fields(self) -> dict:
        """The monitoring store's columns for this outcome."""
        labels = self.labels or {}
        return {"verdict": self.verdict, "drift_share": self.drift.share, "error_ratio": finite(self.error_ratio),
                "champion_mse": self.champion_mse, "reference_mse": self.reference_mse, "n_windows": self.n_windows,
                "champion_accuracy": labels.get("accuracy"), "champion_f1": labels.get("f1_macro"),
                "n_labelled": labels.get("n_labelled"), "reference_accuracy": self.reference_accuracy,
                "feature_scores": self.drift.scores}

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics of the monitoring run (figures that are None or infinite are left out)."""
        d = self.drift
        out = {"drift_share": d.share, "drifted_features": d.n_drifted, "n_windows": self.n_windows}
        out.update({f"drift_score.{k}": v["score"] for k, v in d.scores.items()})
        for k in ("champion_mse", "error_ratio", "reference_mse", "reference_accuracy"):
            v = getattr(self, k)
            if v is not None and math.isfinite(v):
                out[k] = v
        for k, v in (self.labels or {}).items():
            if k in ("accuracy", "f1_macro", "n_labelled"):
                out[f"champion_{k}"] = v
        out.update({f"champion_coverage_{k}": v for k, v in (self.coverage or {}).items()})
        if self.series is not None:
            out["series_drift_share"] = self.series_drift_share or 0.0
            out["n_series"] = len(self.series)
            out["n_series_drifted"] = sum(bool(s.get("drifted")) for s in self.series.values())
        return out


class NothingToRetrain(PipelineError):
    """A verdict asks for a retrain but nothing new arrived to learn from."""

    def __init__(self, action: str, message: str, reason: str):
        super().__init__(reason)
        self.action, self.message = action, message


class TaskMonitor(ABC):
    """One task's monitoring, built from the champion's reference: what a batch is, how it and the inference log are
    judged, the state carried from batch to batch (the series so far, or nothing) and what a retrain learns from."""

    task: ClassVar[str]
    # history_table's two score columns: (heading, store column)
    SCORE_COLUMNS: ClassVar[tuple[tuple[str, str], tuple[str, str]]]

    def __init__(self, reference: Any, meta: dict, features: pd.DataFrame, bundle, version: str):
        self.reference, self.meta, self.features = reference, meta, features
        self.bundle, self.version = bundle, version  # the champion's model and its registry version

    @staticmethod
    def error_threshold(cfg) -> float | None:
        """The error-ratio threshold the dashboard marks (None where the task judges errors otherwise)."""
        return cfg.monitoring.error_ratio

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, cfg, bundle, version: str) -> TaskMonitor:
        """The reference in `folder` (as training wrote it) and its features for the drift comparison."""

    @abstractmethod
    def initial_state(self, accepted: list[dict]):
        """What judging a batch needs besides the reference, from the accepted store rows."""

    @abstractmethod
    def read_batch(self, raw: pd.DataFrame, source: str, cfg, state):
        """Validate a batch file's table; DataValidationError quarantines it."""

    @abstractmethod
    def judge(self, cfg, state, batch) -> Outcome:
        """Drift of the batch against the reference, the champion's score on it, and the verdict."""

    @abstractmethod
    def accept(self, state, raw: pd.DataFrame, batch, cfg) -> tuple[Any, pd.DataFrame, dict]:
        """A judged batch joins the data: (the new state, the frame the store keeps, the row's batch fields)."""

    @abstractmethod
    def judge_log(self, cfg, current: pd.DataFrame, labelled: pd.DataFrame) -> Outcome:
        """Judge the inference log's new rows (`labelled`: the champion's predictions with their actuals)."""

    @abstractmethod
    def log_frame(self, answered: pd.DataFrame, cfg) -> pd.DataFrame | None:
        """What a retrain can learn from the logged predictions with actuals (None: nothing)."""

    @abstractmethod
    def retrain_data(self, cfg, state, accepted: list[dict]) -> pd.DataFrame:
        """The training data of a retrain (first column: time or id); NothingToRetrain when nothing is new."""

    @staticmethod
    @abstractmethod
    def retrain_config(data_path: Path) -> dict:
        """The config overrides that point training at the retrain data (the split it needs)."""

    @abstractmethod
    def describe(self, outcome: Outcome) -> str:
        """The outcome in the run's log line."""

    @staticmethod
    @abstractmethod
    def score_text(row: dict) -> str:
        """A judged batch's score in the CLI's one-line report (`row`: a monitoring_flow summary row)."""


def finite(x) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def frames(rows: list[dict]) -> list[pd.DataFrame]:
    """The stored data of accepted batch rows (rows whose file is gone are left out)."""
    return [pd.read_parquet(r["data_path"]) for r in rows if r["data_path"] and Path(r["data_path"]).exists()]


def rows_since(rows: list[dict], version: str) -> list[dict]:
    """The accepted rows that champion `version` has not learned from: those after the batch whose retrain promoted
    it (all of them for a champion trained from the config)."""
    start = 0
    for i, r in enumerate(rows):
        if r["new_version"] == version and r["new_champion_version"] == version:
            start = i + 1
    return rows[start:]
