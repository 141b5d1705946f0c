"""The Task seam: one implementation per kind of problem (forecasting, classification), chosen once from the config
(`for_config`) or from a registered model's metadata (`for_name`). A task owns what differs between them: reading and
preparing the data, the model spec and the training sets, the bundle, the evaluation and its logging, the reference
for monitoring, and scoring a logged model for the gate. Flows, the registry and the tuner call these methods and
hold no task branches of their own; a new kind of forecasting (many series, quantiles) is a new Task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from rnn_pipeline.config import PipelineConfig, SearchSpace


@dataclass
class Artifacts:
    """What a training run logs besides the metrics: plot files, the input example and the items the save/load check
    replays (`index` into the test split, with the in-memory `expected` outputs), the test predictions and the
    monitoring reference folder."""

    plots: list[Path]
    example: pd.DataFrame
    index: np.ndarray
    expected: np.ndarray
    predictions: pd.DataFrame
    reference: Path
    json: dict[str, Any] = field(default_factory=dict)  # extra JSON artifacts: artifact path -> content


class Task:
    """The interface. `data` is what `prepare` returns (a forecasting PreparedSeries or a PreparedSequences)."""

    name: str
    monitor: type  # its monitoring (rnn_pipeline.monitoring.task.TaskMonitor): judging batches and the log, retraining
    ensemble_trials = 1  # training.ensemble_trials' default: how many trials' parameters the final model may mix
    family_keys: tuple[str, ...] = ()  # the knobs that make trials of different model families (tune.top_params)

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    # ---- data -------------------------------------------------------------------------------------------------
    def read(self, frame: pd.DataFrame, source: str):
        """Validate the ingested frame: whatever `prepare` needs, or a DataValidationError naming the problem."""
        raise NotImplementedError

    def prepare(self, checked, source: str):
        """Split (leakage-free) and scale; the training, validation and test sets."""
        raise NotImplementedError

    def describe(self, data, source: str) -> str:
        """One log line about the prepared data."""
        raise NotImplementedError

    def about(self, data) -> str:
        """One markdown sentence saying what a model trained on `data` does (the registered model's description)."""
        return f"A {self.name} model."

    def digest(self, data) -> str:
        """A hash of exactly the data the model learns from and is tested on."""
        raise NotImplementedError

    def warnings(self, data) -> list[str]:
        """Data warnings the run reports (extreme values, ...)."""
        return []

    # ---- judging ----------------------------------------------------------------------------------------------
    def season(self, data) -> int | None:
        """The season the evaluation and the floor use (None: no seasonal baseline)."""
        return None

    def gate_key(self, data) -> str:
        """The headline metric the summary shows and the gate scores."""
        return self.cfg.gate_metric

    def floor(self, season: int | None) -> list[str]:
        """The baselines a version must beat to become champion."""
        raise NotImplementedError

    # ---- the model --------------------------------------------------------------------------------------------
    def default_params(self) -> tuple[dict, dict]:
        """The task's own tunable knobs at their configured values: (those that others depend on, which come before
        the shared knobs; the rest). tune.default_params puts the shared ones between."""
        return {}, {}

    def search_space(self, data=None) -> SearchSpace:
        """The space the tuner searches: the config's."""
        return self.cfg.tuning.space

    def start_points(self, params: dict, space=None) -> list[dict]:
        """Trials enqueued after the configured model's (`params`)."""
        return []

    def spec(self, params: dict, data):
        """The network's spec for hyperparameters `params` on `data`."""
        raise NotImplementedError

    def train_sets(self, params: dict, data):
        """(training set, validation set) in the form train.fit takes."""
        raise NotImplementedError

    def bundle(self, model, data, params: dict):
        """The self-contained model (weights + preprocessing) that is logged, served and scored."""
        raise NotImplementedError

    def combine(self, models: list, data) -> tuple[object, list[float], float]:
        """Trained models of several trials' parameters -> (their mix, each one's weight, its validation loss)
        (tasks whose ensemble_trials is above 1)."""
        raise NotImplementedError

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, data, bundle, season: int | None) -> dict:
        raise NotImplementedError

    def log_evaluation(self, ev: dict, data) -> None:
        """The evaluation's metrics in the active MLflow run."""
        raise NotImplementedError

    def summary(self, ev: dict, data) -> dict:
        """The task's part of the run summary (last_run.json)."""
        raise NotImplementedError

    def tag_scores(self, gate_key: str) -> tuple[str, ...]:
        """Which test metrics are tagged on the registered version."""
        raise NotImplementedError

    def artifacts(self, folder: Path, ev: dict, data, bundle, history: list[dict], study, digest: str) -> Artifacts:
        raise NotImplementedError

    def summary_table(self, summary: dict) -> str:
        raise NotImplementedError

    # ---- scoring a logged model (the gate, the save/load check) ------------------------------------------------
    def score(self, model, data, metric: str) -> float:
        """Score a loaded pyfunc on `data`'s test split through its own predict."""
        raise NotImplementedError

    def predict_logged(self, model, bundle, data, index: np.ndarray) -> np.ndarray:
        """The loaded pyfunc's outputs for the test items at `index`, shaped like Artifacts.expected."""
        raise NotImplementedError


def log_common_metrics(ev: dict) -> None:
    """Test metrics, the baselines' metrics and the skills, in the active MLflow run (every task)."""
    mlflow.log_metrics({f"test_{k}": v for k, v in ev["metrics"].items()})
    for name, m in ev["baselines"].items():
        mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in m.items()})
    mlflow.log_metrics({f"skill_vs_{k}": v for k, v in ev["skill"].items()})


def summary_head(s: dict) -> list[str]:
    """The summary table's first lines (every task): the decision, the champion, the best trial, data warnings."""
    return [f"model {s['model_name']} v{s['model_version']}: "
            f"{'PROMOTED to champion' if s['promoted'] else 'kept as challenger'} ({s['reason']})",
            f"champion is now v{s['champion_version']}",
            f"best params: {s['best_params']}",
            f"trials: {s['n_trials']} ({s['n_pruned']} pruned, {s['n_failed']} failed, {s['resumed_trials']} resumed)",
            *(["final fit: no epoch beat the linear start on validation; the model forecasts as its highway's Ridge "
               "(the recurrent part adds nothing on this data)"] if s.get("final_fit", {}).get("best_epoch") == 0
              else []),
            *_ensemble_line(s.get("final_fit", {})),
            *(f"DATA WARNING: {w}" for w in s.get("data_warnings", []))]


def _ensemble_line(fit: dict) -> list[str]:
    """With several candidates (training.ensemble_trials): which the final model mixes, and what that gained."""
    members = fit.get("ensemble", [])
    if len(members) < 2:
        return []
    mixed = [i + 1 for i, m in enumerate(members) if m["weight"] > 0]
    weights = ", ".join(f"#{i + 1} {m['weight']:.2f}" for i, m in enumerate(members) if m["weight"] > 0)
    if len(mixed) == 1:
        return [f"final model: candidate #{mixed[0]} of the {len(members)} best trials' refits alone (no mix beat it "
                f"on validation)"]
    return [f"final model: the weighted mean of {len(mixed)} of the {len(members)} best trials' refits ({weights}); "
            f"validation loss {fit['best_val_loss']:.5g} against {min(m['val_loss'] for m in members):.5g} for the "
            f"best alone"]


def task_class(name: str) -> type[Task]:
    """The Task class called `name` (a config's `task`, or what a model's reference metadata records)."""
    from rnn_pipeline.classification.task import ClassificationTask
    from rnn_pipeline.errors import PipelineError
    from rnn_pipeline.forecasting.task import ForecastingTask
    from rnn_pipeline.panel.task import PanelTask

    tasks = {"forecasting": ForecastingTask, "classification": ClassificationTask, "panel": PanelTask}
    if name not in tasks:
        raise PipelineError(f"unknown task '{name}' (one of {', '.join(tasks)})")
    return tasks[name]


def for_name(name: str, cfg: PipelineConfig | None) -> Task:
    """The task called `name`, for `cfg` (None for what needs no config: the summary table)."""
    return task_class(name)(cfg)


def for_config(cfg: PipelineConfig) -> Task:
    """The config's task: forecasting with `data.id_column` is a panel (many series, one global model)."""
    if cfg.task == "forecasting" and cfg.data.id_column:
        return for_name("panel", cfg)
    return for_name(cfg.task, cfg)
