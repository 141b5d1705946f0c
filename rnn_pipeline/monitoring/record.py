"""Recording what a monitoring pass judged, and acting on it: the HTML report, the MLflow run, the row in the
monitoring store, the handled batch file moved out of the incoming folder; on drift or degradation a retrain on the
task's retrain data, whose outcome completes the row.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from rnn_pipeline import faults, registry
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import DataValidationError, PipelineError
from rnn_pipeline.monitoring import report as report_mod
from rnn_pipeline.monitoring.champion import Champion, incoming_folder, monitor_class, retrain_overrides, work_folder
from rnn_pipeline.monitoring.store import MonitoringStore
from rnn_pipeline.monitoring.task import NothingToRetrain, Outcome, fmt
from rnn_pipeline.stores import Stores

SUMMARY_KEYS = ("batch", "verdict", "action", "drift_share", "champion_mse", "error_ratio", "champion_accuracy",
                "champion_f1", "reference_accuracy", "n_labelled", "champion_version", "new_version",
                "new_champion_version", "n_windows", "report_path", "mlflow_run_id")


@dataclass
class Context:
    """What every step of one monitoring pass shares."""
    config: str  # the config as given: a retrain runs the training flow on it
    cfg: PipelineConfig
    stores: Stores
    store: MonitoringStore
    experiment_id: str
    champion: Champion  # replaced when a retrain promotes a new one
    deployment: str | None  # the training deployment that retrains, or None (in-process)
    logger: Any

    def base(self, name: str, digest: str) -> dict:
        return {"model_name": self.cfg.model_name, "batch": name, "digest": digest,
                "champion_version": self.champion.version}

    def incoming(self, sub: str = "") -> Path:
        return incoming_folder(self.cfg, self.stores) / sub


@dataclass
class Judged:
    """A judged batch (or inference-log pass) on its way to the records."""
    name: str
    digest: str
    outcome: Outcome
    fields: dict  # the store row's batch fields: n_rows, first and last time, log watermarks
    data_path: Path | None  # the accepted data, normalised (what a retrain learns from)
    stem: str  # names the HTML report


def initial_state(ctx: Context):
    """The champion's monitoring state from the accepted batches (read once per champion)."""
    return ctx.champion.monitor.initial_state(ctx.store.accepted(ctx.cfg.model_name))


def keep(ctx: Context, frame: pd.DataFrame, stem: str) -> Path:
    """Store an accepted batch's normalised data (Parquet) in the work folder."""
    path = work_folder(ctx.cfg, ctx.stores) / "batches" / f"{stem}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def move(path: Path, folder: Path) -> Path:
    """Move a handled batch out of the incoming folder (never delete it); keeps an older file of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}-{int(time.time() * 1000)}{path.suffix}"
    shutil.move(str(path), str(target))
    return target


def repeat(ctx: Context, path: Path, digest: str) -> bool:
    """A file already judged (same bytes) is moved where the first one went, and not judged again."""
    done = ctx.store.seen(ctx.cfg.model_name, digest)
    if done is None:
        return False
    ctx.logger.info("batch %s was already judged (%s, %s): not judged again", path.name, done["batch"],
                    done["verdict"])
    move(path, ctx.incoming("quarantine" if done["status"] == "quarantined" else "processed"))
    return True


def quarantine(ctx: Context, path: Path, digest: str, raw: pd.DataFrame | None, error: DataValidationError) -> dict:
    """An invalid batch: moved to quarantine with its error beside it, recorded with verdict 'invalid'."""
    champ, name = ctx.champion, path.name
    moved = move(path, ctx.incoming("quarantine"))
    moved.with_name(moved.name + ".error.txt").write_text(str(error) + "\n")
    ctx.logger.error("batch %s quarantined to %s: %s", name, moved.parent, error)
    run_id = log_run(ctx, name, digest, None, "invalid", None, str(error))
    ctx.store.record({**ctx.base(name, digest), "status": "quarantined", "verdict": "invalid",
                      "action": "quarantined", "new_champion_version": champ.version, "message": str(error),
                      "mlflow_run_id": run_id, "n_rows": None if raw is None else int(len(raw))})
    return {"batch": name, "verdict": "invalid", "action": "quarantined", "message": str(error), "drift_share": None,
            "champion_mse": None, "error_ratio": None, "champion_version": champ.version,
            "new_champion_version": champ.version}


def record_and_act(ctx: Context, judged: Judged, retrain: Callable[[str], dict],
                   recorded: Callable[[], Any] | None = None) -> dict:
    """Record a judged batch (HTML report, MLflow run, store row); on drift or degradation `retrain(verdict)` and
    record its result. `recorded()` runs once the row is in the store. Returns the batch's summary row."""
    champ, outcome, logger = ctx.champion, judged.outcome, ctx.logger
    name, v = judged.name, outcome.verdict
    for w in outcome.warnings:
        logger.warning("%s", w)
    source = "the inference log" if ctx.cfg.monitoring.source == "inference_log" else "a batch file"
    try:
        header = report_mod.header_for(ctx.cfg, champ.version, name, outcome, getattr(champ.monitor, "meta", None),
                                       source)
    except Exception as e:  # the report and the records still come; the header only explains them
        logger.warning("report header for %s left out: %s: %s", name, type(e).__name__, e)
        header = None
    report = outcome.drift.save_html(ctx.stores.reports / ctx.cfg.name / f"{judged.stem}-{judged.digest[:8]}.html",
                                     header, share_lib=True)
    run_id = log_run(ctx, name, judged.digest, outcome, v, report, None)
    row = {**ctx.base(name, judged.digest), "status": "judged", **outcome.fields(), **judged.fields,
           "data_path": judged.data_path and str(judged.data_path), "report_path": str(report),
           "mlflow_run_id": run_id, "action": "none", "new_champion_version": champ.version}
    retraining = v in ("drift", "degraded") and ctx.cfg.monitoring.retrain.enabled
    if retraining:
        row["action"] = "retrain started"
    row_id = ctx.store.record(row)
    if recorded is not None:
        recorded()
    if retraining:
        faults.point("monitoring")  # crash tests: the row says "retrain started", the retrain never ran
    logger.info("batch %s: %s (%s)", name, v, champ.monitor.describe(outcome))
    client = mlflow.MlflowClient()
    if not retraining:
        client.set_tag(run_id, "action", row["action"])
        return {k: row.get(k) for k in SUMMARY_KEYS}
    try:
        res = retrain(v)
    except BaseException as e:  # Ctrl-C included: the row says what happened, the registry rolled back itself
        ctx.store.update(row_id, action="retrain failed", message=f"{type(e).__name__}: {e}"[:4000])
        client.set_tag(run_id, "action", "retrain failed")
        raise
    ctx.store.update(row_id, action=res["action"], new_version=res["new_version"],
                     new_champion_version=res["new_champion_version"], message=res.get("message"))
    client.set_tag(run_id, "action", res["action"])
    if res["action"] == "retrain failed":
        logger.error("retraining after %s failed: %s", name, res["message"])
    logger.info("batch %s: %s (challenger v%s, champion v%s)", name, res["action"], res["new_version"],
                res["new_champion_version"])
    row.update(res)
    return {k: row.get(k) for k in SUMMARY_KEYS}


def retrain(ctx: Context, state, batch_name: str, verdict: str, run_training: Callable[[dict, str], None]) -> dict:
    """Retrain on the task's retrain data (`run_training(overrides, reason)` runs the training flow, whose gate
    decides on promotion). Returns the action, the new challenger and the champion after it."""
    cfg, champ, logger = ctx.cfg, ctx.champion, ctx.logger
    try:
        data = champ.monitor.retrain_data(cfg, state, ctx.store.accepted(cfg.model_name))
    except NothingToRetrain as e:
        logger.warning("verdict '%s' on %s, but %s", verdict, batch_name, e)
        return {"action": e.action, "new_version": None, "new_champion_version": champ.version, "message": e.message}
    r = cfg.monitoring.retrain
    folder = work_folder(cfg, ctx.stores) / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(batch_name).stem}-{int(time.time())}.parquet"
    data.to_parquet(path, index=False)
    logger.info("retraining on %d rows (%s policy: %s .. %s) after verdict '%s' on %s", len(data), r.policy,
                data.iloc[0, 0], data.iloc[-1, 0], verdict, batch_name)
    client = mlflow.MlflowClient()
    before = champ.version
    error = None
    try:
        run_training(retrain_overrides(cfg, champ, path), f"monitoring:{verdict}:{batch_name}")
    except PipelineError as e:
        error = str(e)
    after = registry.current_champion(client, cfg.model_name)
    new = registry.alias_version(client, cfg.model_name, registry.CHALLENGER)
    if error is not None:
        return {"action": "retrain failed", "new_version": None, "new_champion_version": before, "message": error}
    promoted = after is not None and str(after.version) != before
    return {"action": "retrain → promoted" if promoted else "retrain → kept", "new_version": new,
            "new_champion_version": str(after.version) if after else None, "data_points": len(data)}


def log_run(ctx: Context, batch: str, digest: str, outcome: Outcome | None, verdict: str, report: Path | None,
            message: str | None) -> str:
    """The monitoring run of one batch in MLflow: verdict, thresholds, drift scores, and where the report is (tag
    `report_path`: the HTML report is kept once, in the reports folder, where monitoring.keep_reports prunes it)."""
    cfg = ctx.cfg
    with mlflow.start_run(experiment_id=ctx.experiment_id, run_name=f"monitor-{batch}") as run:
        mlflow.set_tags({"verdict": verdict, "batch": batch, "batch_digest": digest, "model_name": cfg.model_name,
                         "champion_version": ctx.champion.version or ""})
        mlflow.log_params({"drift_method": cfg.monitoring.drift_method, "drift_share_threshold":
                           cfg.monitoring.drift_share, "error_ratio_threshold": cfg.monitoring.error_ratio})
        if outcome is not None:
            mlflow.log_metrics(outcome.metrics())
            mlflow.log_dict(outcome.drift.scores, "feature_scores.json")
            if outcome.series is not None:  # panels: each series' drift and error
                mlflow.log_table(pd.DataFrame([{"series": k, **{f: v for f, v in s.items() if f != "top_features"},
                                                "top_features": json.dumps(s.get("top_features", {}))}
                                               for k, s in outcome.series.items()]), "per_series.json")
        if message:
            mlflow.set_tag("message", message[:4000])
        if report is not None:
            mlflow.set_tag("report_path", str(report))
        return run.info.run_id


def _nan(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else x


def history_table(frame: pd.DataFrame, task: str = "forecasting") -> str:
    """The monitoring store's rows for a model, as a terminal table (the task's two score columns)."""
    (a, col_a), (b, col_b) = monitor_class(task).SCORE_COLUMNS
    lines = [f"{'batch':<28}{'verdict':<10}{'drift':>7}{a:>11}{b:>8}  {'champion':<9}action"]
    for r in frame.itertuples():
        x, y = getattr(r, col_a), getattr(r, col_b)
        lines.append(f"{str(r.batch)[:27]:<28}{r.verdict:<10}{fmt(r.drift_share):>7}{fmt(_nan(x)):>11}"
                     f"{fmt(_nan(y)):>8}  v{str(r.champion_version or '-'):<8}{r.action}"
                     + (f" (v{r.new_version}; champion v{r.new_champion_version})" if r.new_version else ""))
    return "\n".join(lines)
