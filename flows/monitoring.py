"""The monitoring flow: new batches -> validate -> Evidently + the champion's error against the reference -> verdict ->
record (MLflow run, HTML report, a row in the monitoring store) -> on drift or degradation, retrain and re-gate.

One pass judges every batch file waiting in the incoming folder, oldest name first, each exactly once. A pass holds
a lock in the monitoring store for its model, so two passes started together judge (and retrain) once. What a batch
is and how it is judged is the task's (the champion's `monitor`, rnn_pipeline.monitoring.task); the steps here are
the same for every task.

After each pass the model's reports folder keeps the newest monitoring.keep_reports reports and its dashboard page
(index.html) is rewritten from the store; the run ends COMPLETED in a state named after the verdict and publishes the
verdict table as the markdown artifact `monitoring-<model>` (rnn_pipeline.monitoring.publish).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.runtime import enter_workdir, quiet_libraries
from rnn_pipeline import stores as stores_mod
from rnn_pipeline import tasks
from rnn_pipeline.config import PipelineConfig, load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.errors import DataValidationError, PipelineError
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring import log as monitor_log
from rnn_pipeline.monitoring import publish, record
from rnn_pipeline.monitoring import report as report_mod
from rnn_pipeline.monitoring.champion import Champion, incoming_folder, retrain_overrides
from rnn_pipeline.monitoring.dashboard import write_dashboard
from rnn_pipeline.monitoring.record import Context, Judged, history_table
from rnn_pipeline.monitoring.store import LockHeld, MonitoringStore
from rnn_pipeline.monitoring.task import Outcome
from rnn_pipeline.tracking import experiment_for, mlflow_stores

from .training import training_flow

__all__ = ["history_table", "incoming_folder", "monitoring_flow", "retrain_overrides"]


@task(name="judge-batch", cache_policy=NO_CACHE)
def judge(cfg: PipelineConfig, champ: Champion, state, batch) -> Outcome:
    """Drift of the batch against the champion's reference, its score on the batch, and the verdict."""
    return champ.monitor.judge(cfg, state, batch)


@task(name="judge-inference-log", cache_policy=NO_CACHE)
def judge_log(cfg: PipelineConfig, champ: Champion, current: pd.DataFrame, labelled: pd.DataFrame) -> Outcome:
    """Drift of the logged inputs against the reference, and the champion's live score on the posted actuals."""
    return champ.monitor.judge_log(cfg, current, labelled)


RETRAIN_WAIT_SECONDS = 3600  # a retrain waits this long for a training run of the same model already in progress


@task(name="retrain", cache_policy=NO_CACHE)
def retrain(ctx: Context, state, batch_name: str, verdict: str) -> dict:
    """The training flow on the task's retrain data (forecasting: the series' window; classification: the champion's
    items and the labelled batches since); its gate decides on promotion."""
    logger = get_run_logger()
    return record.retrain(replace(ctx, logger=logger), state, batch_name, verdict,
                          lambda overrides, reason: _run_training(ctx.config, overrides, reason, ctx.deployment,
                                                                  logger))


def _run_training(config: str, overrides: dict, reason: str, deployment: str | None, logger) -> None:
    if deployment is None:
        training_flow(config, overrides, reason, wait=RETRAIN_WAIT_SECONDS)
        return
    from prefect.deployments import run_deployment

    logger.info("starting deployment %s", deployment)
    run = run_deployment(deployment, parameters={"config": config, "overrides": overrides, "reason": reason,
                                                     "wait": RETRAIN_WAIT_SECONDS},
                         timeout=None)
    if not run.state or not run.state.is_completed():
        raise PipelineError(f"training deployment run {run.name} ended {run.state.name if run.state else 'unknown'}")


def _run_name() -> str:
    """The run's name before the batches are listed: the model and the time (renamed once they are)."""
    from prefect.runtime import flow_run

    try:
        model = load_config(flow_run.parameters["config"]).model_name
    except Exception:  # a config that does not load fails the run itself, with its own message
        model = "monitoring"
    return publish.run_name(model)


@flow(name="rnn-monitoring", flow_run_name=_run_name)
def monitoring_flow(config: str, training_deployment: str | None = None, source: str | None = None) -> dict:
    """Judge every new batch once (or, with source 'inference_log', what the inference log gained since the last
    pass); retrain on drift or degradation (through `training_deployment` when given, else in-process). `source`
    overrides monitoring.source. Returns {'batches': [one dict per batch], ...}; the run ends COMPLETED, its state
    named after the worst verdict (Degraded, Drift, Invalid, OK) or No new batches / Skipped, and publishes the
    markdown artifact `monitoring-<model>` with the verdict table."""
    quiet_libraries()  # also in a flow-run process that a deployment started, where no CLI command did it
    enter_workdir()
    logger = get_run_logger()
    cfg = load_config(config, {"monitoring": {"source": source}} if source else None)
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.check(st)  # a damaged or missing store: one line, before anything is judged
    stores_mod.ensure(st)
    incoming = incoming_folder(cfg, st)
    summary = {"model_name": cfg.model_name, "source": cfg.monitoring.source, "incoming": str(incoming),
               "batches": [], "skipped": None, "dashboard": None, "flow_run_id": _flow_run_id()}
    store = MonitoringStore(st.monitoring_url)
    try:
        with store.lock(f"monitor:{cfg.model_name}", cfg.monitoring.lock_ttl_seconds):
            try:
                _judge_all(config, cfg, st, store, summary, training_deployment, logger)
            finally:  # what was recorded shows, even when a retrain failed the pass
                summary["dashboard"] = _after_pass(cfg, st, store, logger)
    except LockHeld as e:
        logger.warning("%s; this run judges nothing (the holder will handle the waiting batches)", e)
        summary["skipped"] = str(e)
    finally:
        store.dispose()
    _publish(summary, logger)
    return Completed(data=summary, name=publish.state_name(summary), message=publish.state_message(summary))


def _judge_all(config: str, cfg: PipelineConfig, st, store: MonitoringStore, summary: dict,
               training_deployment: str | None, logger) -> None:
    """The pass under the model's lock: every waiting batch (or the inference log's news), into `summary`."""
    from_log = cfg.monitoring.source == "inference_log"
    incoming = incoming_folder(cfg, st)
    left = store.interrupted(cfg.model_name)  # what a killed pass left (no live pass owns it now)
    if left:
        logger.warning("an earlier pass stopped while retraining after %s: marked 'retrain interrupted'",
                       ", ".join(left))
    if not from_log and not monitor.list_batches(incoming):
        logger.info("no new batches in %s", incoming)
        return
    with mlflow_stores(st.mlflow_uri):
        exp = experiment_for(f"{cfg.name}-monitoring", st.artifact_location)
        ctx = Context(config, cfg, st, store, exp, Champion(cfg, st), training_deployment, logger)
        state = record.initial_state(ctx)
        if from_log:
            _rename_run(cfg.model_name, ["inference log"], logger)
            row = _log_pass(ctx, state)
            summary["batches"] += [row] if row else []
            return
        paths = monitor.list_batches(incoming)  # re-listed under the lock
        _rename_run(cfg.model_name, [p.name for p in paths], logger)
        for path in paths:
            row, state = _one_batch(ctx, state, path)
            if row is None:
                continue
            summary["batches"].append(row)
            if row["new_champion_version"] not in (None, ctx.champion.version):
                ctx.champion = Champion(cfg, st)  # later batches are judged against the new champion
                state = record.initial_state(ctx)


def _after_pass(cfg: PipelineConfig, st, store: MonitoringStore, logger) -> str | None:
    """The model's reports folder after a pass: older reports pruned (monitoring.keep_reports), the dashboard page
    rewritten from the store. Never fails the pass. Returns the dashboard's path."""
    folder = st.reports / cfg.name
    try:
        gone = report_mod.prune_reports(folder, cfg.monitoring.keep_reports)
        if gone:
            logger.info("removed %d older report(s) from %s (monitoring.keep_reports: %s)", len(gone), folder,
                        cfg.monitoring.keep_reports)
        path = write_dashboard(store, cfg.model_name, folder, drift_share=cfg.monitoring.drift_share,
                               error_ratio=tasks.for_config(cfg).monitor.error_threshold(cfg),
                               title=f"Monitoring: {cfg.model_name}"
                               + (f" (config {cfg.name})" if cfg.name != cfg.model_name else ""))
        return str(path)
    except Exception as e:  # the view of the records must not fail the records
        logger.warning("could not update %s (reports kept: %s, dashboard): %s: %s", folder,
                       cfg.monitoring.keep_reports, type(e).__name__, e)
        return None


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id


def _rename_run(model_name: str, batches: list[str], logger) -> None:
    """The run named after the model and the batches it judges (Prefect's UI lists runs by name)."""
    run_id = _flow_run_id()
    if not run_id or not batches:
        return
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.set_flow_run_name(run_id, publish.run_name(model_name, batches))
    except Exception as e:  # a name is cosmetic
        logger.debug("could not rename the flow run: %s", e)


def _publish(summary: dict, logger) -> None:
    """The markdown artifact `monitoring-<model>` with the pass's verdict table (when something was judged)."""
    if not summary["batches"] or summary["flow_run_id"] is None:
        return
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(publish.artifact_markdown(summary, summary["dashboard"]),
                                 key=publish.artifact_key(summary["model_name"]),
                                 description=f"{summary['model_name']}: {publish.state_message(summary)}"[:500])
    except Exception as e:  # the records are written; the artifact only shows them
        logger.warning("could not publish the monitoring artifact: %s: %s", type(e).__name__, e)


def _one_batch(ctx: Context, state, path: Path) -> tuple[dict | None, object]:
    """Judge one batch file; returns its summary row (None for a repeat) and the state with the batch accepted."""
    digest = monitor.file_digest(path)
    if record.repeat(ctx, path, digest):
        return None, state
    champ, raw = ctx.champion, None
    try:
        raw = datasets.read_table(path)
        batch = champ.monitor.read_batch(raw, str(path), ctx.cfg, state)
    except DataValidationError as e:
        return record.quarantine(ctx, path, digest, raw, e), state
    outcome = judge(ctx.cfg, champ, state, batch)
    state, frame, fields = champ.monitor.accept(state, raw, batch, ctx.cfg)
    judged = Judged(path.name, digest, outcome, fields, record.keep(ctx, frame, f"{path.stem}-{digest[:12]}"),
                    path.stem)
    row = record.record_and_act(ctx, judged, lambda verdict: retrain(ctx, state, path.name, verdict),
                                lambda: record.move(path, ctx.incoming("processed")))
    return row, state


def _log_pass(ctx: Context, state) -> dict | None:
    """Judge what the inference log gained since the last pass: the inputs of new predictions (drift), and the
    champion's predictions that received actuals (live error). Too little new data: nothing is judged (None)."""
    cfg, champ, logger = ctx.cfg, ctx.champion, ctx.logger
    delta = monitor_log.read_since(ctx.stores.monitoring_url, cfg.model_name, ctx.store.log_watermark(cfg.model_name),
                                   champ.version)
    if len(delta.current) < cfg.monitoring.min_windows:
        logger.info("inference log: %d new prediction(s) or actual(s) for %s since the last pass; waiting for at "
                    "least %d (monitoring.min_windows)", len(delta.current), cfg.model_name, cfg.monitoring.min_windows)
        return None
    try:
        outcome = judge_log(cfg, champ, delta.current, delta.labelled)
    except DataValidationError as e:
        logger.warning("inference log: %s; nothing judged", e)
        return None
    frame = champ.monitor.log_frame(delta.answered, cfg)  # what a retrain learns from the log, if anything
    data_path = None if frame is None else record.keep(ctx, frame,
                                                       f"inference-log-{delta.last_prediction}-{delta.last_actual}")
    logger.info("inference log: %d new prediction(s), %d actual(s) for champion v%s", len(delta.new),
                len(delta.labelled), champ.version)
    judged = Judged(delta.name, delta.digest(cfg.model_name), outcome, delta.fields(), data_path,
                    f"inference-log-{delta.last_prediction}")
    return record.record_and_act(ctx, judged, lambda verdict: retrain(ctx, state, delta.name, verdict))
