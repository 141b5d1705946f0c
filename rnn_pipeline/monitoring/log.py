"""Monitoring from the inference log: the logged inputs of recent predictions stand in for a batch file, and the
predictions joined with the actuals posted later give the champion's live error.

This reads what the log gained since the last pass; each task's monitoring judges it (forecasting: the logged
windows and forecasts; classification: the logged items and labels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from rnn_pipeline.serving.inference_log import InferenceLog

# window_stats moved to rnn_pipeline.forecasting.monitoring; older callers import it from here
_MOVED = {"window_stats", "forecast_windows", "forecast_errors"}


def __getattr__(name: str):
    if name in _MOVED:
        from rnn_pipeline.forecasting import monitoring as forecasting

        return getattr(forecasting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class LogDelta:
    """What the inference log gained for a model since the last pass."""
    new: pd.DataFrame  # predictions logged since
    answered: pd.DataFrame  # predictions (of any version) whose actuals arrived since
    current: pd.DataFrame  # both, each prediction once: the inputs to judge
    labelled: pd.DataFrame  # the champion's answered predictions: its live score
    after_prediction: int  # the watermark of the last pass
    last_prediction: int
    last_actual: int

    @property
    def name(self) -> str:
        return f"inference-log #{self.after_prediction + 1}-{self.last_prediction}"

    def digest(self, model_name: str) -> str:
        return hashlib.sha256(f"{model_name}:{self.last_prediction}:{self.last_actual}".encode()).hexdigest()

    def fields(self) -> dict:
        """The store row's fields that place the pass in the log."""
        times = pd.to_datetime(self.current["created_at"])
        return {"log_prediction_seq": self.last_prediction, "log_actual_seq": self.last_actual,
                "n_rows": len(self.current), "first_time": str(times.min()), "last_time": str(times.max())}


def read_since(url: str, model_name: str, watermark: tuple[int, int], champion_version: str) -> LogDelta:
    """The predictions logged after watermark[0] and the actuals posted after watermark[1] (the last pass's)."""
    after_p, after_a = watermark
    log = InferenceLog(url)
    try:
        new = log.predictions(model_name, after_p)
        answered = log.labelled(model_name, after_a)
    finally:
        log.dispose()
    parts = [f for f in (new, answered) if len(f)]
    current = pd.concat(parts, ignore_index=True).drop_duplicates("prediction_id") if parts else new
    return LogDelta(new, answered, current, answered[answered["model_version"] == champion_version], after_p,
                    int(new["seq"].max()) if len(new) else after_p,
                    int(answered["actual_seq"].max()) if len(answered) else after_a)
