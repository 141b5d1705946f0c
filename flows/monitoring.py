"""The monitoring flow: new batches -> validate -> Evidently + the champion's error against the reference -> verdict ->
record (MLflow run, HTML report, a row in the monitoring store) -> on drift or degradation, retrain and re-gate.

One pass judges every batch file waiting in the incoming folder, oldest name first, each exactly once. A pass holds
a lock in the monitoring store for its model, so two passes started together judge (and retrain) once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rnn_pipeline import registry
from rnn_pipeline import stores as stores_mod
from rnn_pipeline.classification import monitoring as monitor_classify
from rnn_pipeline.classification import sequences
from rnn_pipeline.config import PipelineConfig, load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.errors import DataValidationError, PipelineError, RegistryError
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring import log as monitor_log
from rnn_pipeline.monitoring.store import LockHeld, MonitoringStore
from rnn_pipeline.serving.inference_log import InferenceLog
from rnn_pipeline.tracking import experiment_for, mlflow_stores

from .training import training_flow

PARAM_TYPES = {"cell": str, "hidden": int, "layers": int, "dropout": float, "lr": float, "batch_size": int,
               "window": int, "optimizer": str, "bidirectional": lambda v: str(v) == "True", "pooling": str,
               "embedding_dim": int}


def incoming_folder(cfg: PipelineConfig, st: stores_mod.Stores) -> Path:
    if cfg.monitoring.incoming is None:
        return st.root / "incoming" / cfg.name
    p = Path(cfg.monitoring.incoming)
    return p if p.is_absolute() else Path(cfg.base_dir) / p


def work_folder(cfg: PipelineConfig, st: stores_mod.Stores) -> Path:
    return st.root / "monitoring" / cfg.name


class Champion:
    """The current champion with the reference it was registered with (downloaded once per version)."""

    def __init__(self, cfg: PipelineConfig, st: stores_mod.Stores):
        client = mlflow.MlflowClient()
        mv = registry.current_champion(client, cfg.model_name)
        if mv is None:
            raise RegistryError(f"model '{cfg.model_name}' has no champion to monitor: train one first "
                                f"(rnn-pipeline train --config {cfg.name})")
        self.version = str(mv.version)
        self.run_id = mv.run_id
        ref_uri = (mv.tags or {}).get("reference")
        if not ref_uri:
            raise RegistryError(f"champion v{self.version} of '{cfg.model_name}' was registered without its "
                                "reference data (before monitoring existed): retrain it once with rnn-pipeline train")
        local = work_folder(cfg, st) / f"reference-{self.run_id}"  # by run: a re-created model reuses numbers
        if not (local / monitor.REFERENCE_META).exists():
            tmp = local.with_name(local.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            mlflow.artifacts.download_artifacts(artifact_uri=ref_uri, dst_path=str(tmp))
            found = next(tmp.rglob(monitor.REFERENCE_META)).parent
            shutil.rmtree(local, ignore_errors=True)
            found.rename(local)
            shutil.rmtree(tmp, ignore_errors=True)
        self.model = registry.load(f"models:/{cfg.model_name}/{self.version}")
        self.bundle = registry.load_bundle(self.model)
        self.task = json.loads((local / monitor.REFERENCE_META).read_text()).get("task", "forecasting")
        if self.task == "classification":
            # the items it learned from, described like a batch; shuffled so that a block of them is a random sample
            # (for the calibrated thresholds)
            self.reference, self.meta = monitor_classify.read_reference(local, cfg.data)
            train = self.reference.subset(np.asarray(self.meta["train_index"]))
            desc = monitor_classify.descriptors(train, self.bundle)
            self.features = desc.sample(frac=1.0, random_state=0).reset_index(drop=True)
        else:
            self.reference, self.meta = monitor.read_reference(local)
            self.features = monitor.window_features(self.reference[self.meta["columns"]].to_numpy(),
                                                    self.meta["columns"], self.meta["n_targets"], self.meta["window"])
        params = client.get_run(self.run_id).data.params
        self.params = {k: PARAM_TYPES[k](params[f"best.{k}"]) for k in PARAM_TYPES if f"best.{k}" in params}


def _accepted_frames(store: MonitoringStore, model_name: str) -> list[pd.DataFrame]:
    return [pd.read_parquet(r["data_path"]) for r in store.accepted(model_name)
            if r["data_path"] and Path(r["data_path"]).exists()]


def _move(path: Path, folder: Path) -> Path:
    """Move a handled batch out of the incoming folder (never delete it); keeps an older file of the same name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}-{int(time.time() * 1000)}{path.suffix}"
    shutil.move(str(path), str(target))
    return target


@task(name="judge-batch", cache_policy=NO_CACHE)
def judge(cfg: PipelineConfig, champ: Champion, history: pd.DataFrame, batch: pd.DataFrame) -> dict:
    """Evidently drift over window features + the champion's error on the batch, and the verdict."""
    m, mc = champ.meta, cfg.monitoring
    cols, window = m["columns"], m["window"]
    tail = history.iloc[-window:]
    combined = np.concatenate([tail[cols].to_numpy(), batch[cols].to_numpy()])
    current = monitor.window_features(combined, cols, m["n_targets"], window, start=len(tail))
    drift = monitor.drift_report(champ.features, current, mc.drift_method, mc.drift_threshold,
                                 mc.drift_calibration)
    b = champ.bundle
    x_cols = [cols.index(c) for c in b.input_columns]
    y_true, y_pred = monitor.batch_errors(b.predict_windows, combined[:, x_cols], len(b.target_columns), b.window,
                                          b.horizon, start=len(tail))
    return _forecast_outcome(cfg, champ, drift, y_true, y_pred)


def _forecast_outcome(cfg: PipelineConfig, champ: Champion, drift, y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """The champion's MSE on the scored windows (with at least min_windows of them) against its test MSE, and the
    verdict with the drift."""
    mc, ref = cfg.monitoring, champ.meta["test_mse"]
    champion_mse = ratio = None
    if len(y_true) >= mc.min_windows:
        champion_mse = monitor.mse(y_true, y_pred)
        ratio = champion_mse / ref if ref > 0 else (float("inf") if champion_mse > 0 else 1.0)
    return {"drift": drift, "n_windows": len(y_true), "champion_mse": champion_mse, "error_ratio": ratio,
            "reference_mse": ref, "verdict": monitor.verdict(drift.share, ratio, mc.drift_share, mc.error_ratio)}


@task(name="judge-items", cache_policy=NO_CACHE)
def judge_items(cfg: PipelineConfig, champ: Champion, batch) -> dict:
    """Classification: Evidently drift of the item descriptors and of the predicted labels; with labels, the
    champion's accuracy and macro F1 on the batch against its test accuracy."""
    mc = cfg.monitoring
    current = monitor_classify.descriptors(batch, champ.bundle)
    drift = monitor.drift_report(champ.features, current, mc.drift_method, mc.drift_threshold, mc.drift_calibration,
                                 categorical=(monitor_classify.PREDICTED,))
    proba = champ.bundle.predict_proba(batch.items, ids=batch.ids)
    scores = monitor_classify.label_scores(batch, proba, champ.bundle.classes)
    if scores and scores["unseen_labels"]:
        get_run_logger().warning("batch labels %s were never seen by champion v%s: counted as errors (a retrain on "
                                 "this batch learns them)", scores["unseen_labels"], champ.version)
    return _classification_outcome(cfg, champ, drift, scores, len(batch))


def _classification_outcome(cfg: PipelineConfig, champ: Champion, drift, scores: dict | None, n_items: int) -> dict:
    """With at least min_windows labelled items, accuracy below test accuracy minus accuracy_drop is 'degraded';
    otherwise the drift decides."""
    mc, ref = cfg.monitoring, champ.meta["test_accuracy"]
    degraded = bool(scores and scores["n_labelled"] >= mc.min_windows and scores["accuracy"] < ref - mc.accuracy_drop)
    v = "degraded" if degraded else monitor.verdict(drift.share, None, mc.drift_share, mc.error_ratio)
    return {"drift": drift, "n_windows": n_items, "labels": scores, "reference_accuracy": ref, "verdict": v,
            "champion_mse": None, "error_ratio": None, "reference_mse": None,
            "prediction_drift": drift.scores.get(monitor_classify.PREDICTED, {}).get("drifted")}


@task(name="judge-inference-log", cache_policy=NO_CACHE)
def judge_log(cfg: PipelineConfig, champ: Champion, current: pd.DataFrame, labelled: pd.DataFrame) -> dict:
    """Forecasting from the inference log: Evidently drift of the logged windows' statistics against the reference
    windows', and the champion's live MSE (its logged forecasts against the posted actuals) against its test MSE."""
    m, mc = champ.meta, cfg.monitoring
    x = monitor_log.forecast_windows(current, m["columns"], m["window"])
    if len(x) < mc.min_windows:
        raise DataValidationError(f"only {len(x)} logged window(s) read the champion's columns {m['columns']} over "
                                  f"{m['window']} steps; monitoring needs at least {mc.min_windows}")
    stats = monitor_log.window_stats(x, m["columns"])
    if len(stats) < len(x):
        get_run_logger().warning("%d logged window(s) hold values too large to describe; left out of the drift "
                                 "comparison", len(x) - len(stats))
    drift = monitor.drift_report(champ.features[list(stats.columns)], stats, mc.drift_method, mc.drift_threshold,
                                 mc.drift_calibration)
    y_true, y_pred = monitor_log.forecast_errors(labelled, champ.bundle.target_columns)
    return _forecast_outcome(cfg, champ, drift, y_true, y_pred)


@task(name="judge-inference-log-items", cache_policy=NO_CACHE)
def judge_log_items(cfg: PipelineConfig, champ: Champion, current: pd.DataFrame, labelled: pd.DataFrame) -> dict:
    """Classification from the inference log: descriptor and predicted-label drift of the logged items, and the
    champion's live accuracy and macro F1 (its logged labels against the posted ones)."""
    mc, b = cfg.monitoring, champ.bundle
    batch = monitor_log.items(current, b.kind, b.input_columns)
    if len(batch) < mc.min_windows:
        raise DataValidationError(f"only {len(batch)} logged item(s) match the champion's input; monitoring needs "
                                  f"at least {mc.min_windows}")
    drift = monitor.drift_report(champ.features, monitor_classify.descriptors(batch, b), mc.drift_method,
                                 mc.drift_threshold, mc.drift_calibration, categorical=(monitor_classify.PREDICTED,))
    truth = monitor_log.items(labelled, b.kind, b.input_columns, with_labels=True)
    scores = (monitor_classify.label_scores(truth, monitor_log.logged_proba(labelled, b.classes), b.classes)
              if len(truth) else None)
    return _classification_outcome(cfg, champ, drift, scores, len(batch))


def _log_pass(config, cfg, st, store: MonitoringStore, exp, champ: Champion, history, deployment, logger) -> dict | None:
    """Judge what the inference log gained since the last pass: the inputs of new predictions (drift), and the
    champion's predictions that received actuals (live error). Too little new data: nothing is judged (None)."""
    after_p, after_a = store.log_watermark(cfg.model_name)
    log = InferenceLog(st.monitoring_url)
    try:
        new = log.predictions(cfg.model_name, after_p)
        answered = log.labelled(cfg.model_name, after_a)
    finally:
        log.dispose()
    parts = [f for f in (new, answered) if len(f)]
    current = pd.concat(parts, ignore_index=True).drop_duplicates("prediction_id") if parts else new
    labelled = answered[answered["model_version"] == champ.version]
    if len(current) < cfg.monitoring.min_windows:
        logger.info("inference log: %d new prediction(s) or actual(s) for %s since the last pass; waiting for at "
                    "least %d (monitoring.min_windows)", len(current), cfg.model_name, cfg.monitoring.min_windows)
        return None
    last_p = int(new["seq"].max()) if len(new) else after_p
    last_a = int(answered["actual_seq"].max()) if len(answered) else after_a
    name = f"inference-log #{after_p + 1}-{last_p}"
    digest = hashlib.sha256(f"{cfg.model_name}:{last_p}:{last_a}".encode()).hexdigest()
    base = {"model_name": cfg.model_name, "batch": name, "digest": digest, "champion_version": champ.version,
            "log_prediction_seq": last_p, "log_actual_seq": last_a}
    times = pd.to_datetime(current["created_at"])
    extra = {"n_rows": len(current), "first_time": str(times.min()), "last_time": str(times.max())}
    data_path = None
    try:
        if champ.task == "classification":
            outcome = judge_log_items(cfg, champ, current, labelled)
            labels = outcome["labels"] or {}
            extra.update(champion_accuracy=labels.get("accuracy"), champion_f1=labels.get("f1_macro"),
                         n_labelled=labels.get("n_labelled"), reference_accuracy=outcome["reference_accuracy"])
            truth = monitor_log.items(answered, champ.bundle.kind, champ.bundle.input_columns, with_labels=True)
            if len(truth):  # what a retrain learns from: every logged item with its posted label
                data_path = work_folder(cfg, st) / "batches" / f"inference-log-{last_p}-{last_a}.parquet"
                data_path.parent.mkdir(parents=True, exist_ok=True)
                sequences.items_frame(truth, cfg.data).to_parquet(data_path, index=False)
        else:
            outcome = judge_log(cfg, champ, current, labelled)
    except DataValidationError as e:
        logger.warning("inference log: %s; nothing judged", e)
        return None
    logger.info("inference log: %d new prediction(s), %d actual(s) for champion v%s", len(new), len(labelled),
                champ.version)
    return _record_and_act(config, cfg, st, store, exp, champ, history, base, outcome, extra, data_path,
                           f"inference-log-{last_p}", deployment, logger)


def retrain_overrides(cfg: PipelineConfig, champ: Champion, data_path: Path) -> dict:
    r = cfg.monitoring.retrain
    # the retrain window extends past the configured split times (split.test_end would cut every new row): it is
    # split by the fractions
    split = {"val_start": None, "test_start": None, "test_end": None}
    out: dict = {"data": {"builtin": None, "path": str(data_path)}, "split": split}
    if champ.task == "classification":  # the champion's items and the labelled batches, split afresh
        out["data"]["split_column"] = None
        out["split"] = {}
    if r.tuning == "reuse" and champ.params:
        p = champ.params
        out["model"] = {k: p[k] for k in ("cell", "hidden", "layers", "dropout", "bidirectional", "pooling",
                                          "embedding_dim") if k in p}
        out["training"] = {k: p[k] for k in ("lr", "batch_size", "optimizer") if k in p}
        if "window" in p:
            out["features"] = {"window": p["window"]}
        out["tuning"] = {"n_trials": 0}
    elif r.n_trials is not None:
        out["tuning"] = {"n_trials": r.n_trials}
    return out


def _run_training(config: str, overrides: dict, reason: str, deployment: str | None, logger) -> None:
    if deployment is None:
        training_flow(config, overrides, reason)
        return
    from prefect.deployments import run_deployment

    logger.info("starting deployment %s", deployment)
    run = run_deployment(deployment, parameters={"config": config, "overrides": overrides, "reason": reason},
                         timeout=None)
    if not run.state or not run.state.is_completed():
        raise PipelineError(f"training deployment run {run.name} ended {run.state.name if run.state else 'unknown'}")


@task(name="retrain", cache_policy=NO_CACHE)
def retrain(config: str, cfg: PipelineConfig, st: stores_mod.Stores, champ: Champion, full: pd.DataFrame | None,
            batch_name: str, verdict: str, deployment: str | None) -> dict:
    """The training flow on the updated data. Forecasting: the window of `full` (the champion's reference and every
    batch since); its gate scores champion and challenger on the newest windows. Classification: the champion's
    items plus the labelled batches it has not learned from, split afresh; skipped when there are none."""
    logger = get_run_logger()
    r = cfg.monitoring.retrain
    if champ.task == "classification":
        data = monitor_classify.retrain_items(champ.reference, _accepted_frames_since(store_rows(cfg, st), champ),
                                              cfg.data, r.policy, r.recent_points)
        if data is None:
            logger.warning("verdict '%s' on %s, but no labelled batch has arrived since champion v%s was trained: "
                           "nothing new to retrain on", verdict, batch_name, champ.version)
            return {"action": "retrain skipped (no new labels)", "new_version": None,
                    "new_champion_version": champ.version, "message": "no labelled batch since the champion"}
    else:
        if len(full) <= len(champ.reference):  # an inference-log verdict with no batch of the series since
            logger.warning("verdict '%s' on %s, but no new data of the series has arrived since champion v%s was "
                           "trained (forecasts and actuals in the log are not a series): nothing new to retrain on",
                           verdict, batch_name, champ.version)
            return {"action": "retrain skipped (no new series data)", "new_version": None,
                    "new_champion_version": champ.version, "message": "no batch of the series since the champion"}
        data = monitor.retrain_window(full, r.policy, r.recent_points)
    folder = work_folder(cfg, st) / "retrain"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(batch_name).stem}-{int(time.time())}.parquet"
    data.to_parquet(path, index=False)
    logger.info("retraining on %d rows (%s policy: %s .. %s) after verdict '%s' on %s", len(data), r.policy,
                data.iloc[0, 0], data.iloc[-1, 0], verdict, batch_name)
    client = mlflow.MlflowClient()
    before = champ.version
    training_flow_error = None
    try:
        _run_training(config, retrain_overrides(cfg, champ, path), f"monitoring:{verdict}:{batch_name}", deployment,
                      logger)
    except PipelineError as e:
        training_flow_error = str(e)
    after = registry.current_champion(client, cfg.model_name)
    new = registry._alias_version(client, cfg.model_name, registry.CHALLENGER)
    if training_flow_error is not None:
        return {"action": "retrain failed", "new_version": None, "new_champion_version": before,
                "message": training_flow_error}
    promoted = after is not None and str(after.version) != before
    return {"action": "retrain → promoted" if promoted else "retrain → kept", "new_version": new,
            "new_champion_version": str(after.version) if after else None, "data_points": len(data)}


def _log_run(experiment_id: str, cfg: PipelineConfig, batch: str, digest: str, champ_version: str | None,
             outcome: dict | None, verdict: str, report: Path | None, message: str | None) -> str:
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{batch}") as run:
        mlflow.set_tags({"verdict": verdict, "batch": batch, "batch_digest": digest, "model_name": cfg.model_name,
                         "champion_version": champ_version or ""})
        mlflow.log_params({"drift_method": cfg.monitoring.drift_method, "drift_share_threshold":
                           cfg.monitoring.drift_share, "error_ratio_threshold": cfg.monitoring.error_ratio})
        if outcome is not None:
            d = outcome["drift"]
            metrics = {"drift_share": d.share, "drifted_features": d.n_drifted, "n_windows": outcome["n_windows"]}
            metrics.update({f"drift_score.{k}": v["score"] for k, v in d.scores.items()})
            for k in ("champion_mse", "error_ratio", "reference_mse", "reference_accuracy"):
                if outcome.get(k) is not None and np.isfinite(outcome[k]):
                    metrics[k] = outcome[k]
            for k, val in (outcome.get("labels") or {}).items():
                if k in ("accuracy", "f1_macro", "n_labelled"):
                    metrics[f"champion_{k}"] = val
            mlflow.log_metrics(metrics)
            mlflow.log_dict(d.scores, "feature_scores.json")
        if message:
            mlflow.set_tag("message", message[:4000])
        if report is not None:
            mlflow.log_artifact(str(report), "report")
        return run.info.run_id


@flow(name="rnn-monitoring")
def monitoring_flow(config: str, training_deployment: str | None = None, source: str | None = None) -> dict:
    """Judge every new batch once (or, with source 'inference_log', what the inference log gained since the last
    pass); retrain on drift or degradation (through `training_deployment` when given, else in-process). `source`
    overrides monitoring.source. Returns {'batches': [one dict per batch], ...}."""
    logger = get_run_logger()
    cfg = load_config(config, {"monitoring": {"source": source}} if source else None)
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.ensure(st)
    from_log = cfg.monitoring.source == "inference_log"
    incoming = incoming_folder(cfg, st)
    summary = {"model_name": cfg.model_name, "source": cfg.monitoring.source, "incoming": str(incoming),
               "batches": [], "skipped": None}
    if not from_log and not monitor.list_batches(incoming):
        logger.info("no new batches in %s", incoming)
        return summary
    store = MonitoringStore(st.monitoring_url)
    try:
        with store.lock(f"monitor:{cfg.model_name}", cfg.monitoring.lock_ttl_seconds):
            with mlflow_stores(st.mlflow_uri):
                exp = experiment_for(f"{cfg.name}-monitoring", st.artifact_location)
                champ = Champion(cfg, st)
                history = _history(store, cfg, champ)
                if from_log:
                    row = _log_pass(config, cfg, st, store, exp, champ, history, training_deployment, logger)
                    summary["batches"] += [row] if row else []
                    return summary
                for path in monitor.list_batches(incoming):  # re-listed under the lock
                    row, history = _one_batch(config, cfg, st, store, exp, champ, history, path, training_deployment,
                                              logger)
                    if row is None:
                        continue
                    summary["batches"].append(row)
                    if row["new_champion_version"] not in (None, champ.version):
                        champ = Champion(cfg, st)  # later batches are judged against the new champion
                        history = _history(store, cfg, champ)
    except LockHeld as e:
        logger.warning("%s; this run judges nothing (the holder will handle the waiting batches)", e)
        summary["skipped"] = str(e)
    finally:
        store.dispose()
    return summary


def store_rows(cfg: PipelineConfig, st: stores_mod.Stores) -> list[dict]:
    store = MonitoringStore(st.monitoring_url)
    try:
        return store.accepted(cfg.model_name)
    finally:
        store.dispose()


def _accepted_frames_since(rows: list[dict], champ: Champion) -> list[pd.DataFrame]:
    """The accepted batches that `champ` has not learned from: those after the batch whose retrain promoted it
    (all of them for a champion trained from the config)."""
    start = 0
    for i, r in enumerate(rows):
        if r["new_version"] == champ.version and r["new_champion_version"] == champ.version:
            start = i + 1
    return [pd.read_parquet(r["data_path"]) for r in rows[start:]
            if r["data_path"] and Path(r["data_path"]).exists()]


def _history(store: MonitoringStore, cfg: PipelineConfig, champ: Champion) -> pd.DataFrame | None:
    """The series so far: the champion's reference and every accepted batch after it (read once per champion).
    Classification has no series: None."""
    if champ.task == "classification":
        return None
    return monitor.stream(champ.reference, _accepted_frames(store, cfg.model_name), champ.meta["time_column"])


def _one_batch(config, cfg, st, store, exp, champ, history: pd.DataFrame, path: Path, deployment,
               logger) -> tuple[dict | None, pd.DataFrame]:
    """Judge one batch file; returns its summary row (None for a repeat) and the series extended by the batch."""
    name = path.name
    digest = monitor.file_digest(path)
    done = store.seen(cfg.model_name, digest)
    if done is not None:
        logger.info("batch %s was already judged (%s, %s): not judged again", name, done["batch"], done["verdict"])
        _move(path, incoming_folder(cfg, st) / ("quarantine" if done["status"] == "quarantined" else "processed"))
        return None, history
    base = {"model_name": cfg.model_name, "batch": name, "digest": digest, "champion_version": champ.version}
    raw = None
    try:
        raw = datasets.read_table(path)
        if champ.task == "classification":
            batch = sequences.read_items(raw, str(path), cfg.data, labels=False)
            monitor_classify.check_batch(batch, str(path), champ.bundle.encoder.channels)
        else:
            batch = monitor.read_batch(raw, str(path), champ.meta["time_column"], champ.meta["columns"],
                                       cfg.data.missing, after=history[champ.meta["time_column"]].iloc[-1])
    except DataValidationError as e:
        moved = _move(path, incoming_folder(cfg, st) / "quarantine")
        moved.with_name(moved.name + ".error.txt").write_text(str(e) + "\n")
        logger.error("batch %s quarantined to %s: %s", name, moved.parent, e)
        run_id = _log_run(exp, cfg, name, digest, champ.version, None, "invalid", None, str(e))
        store.record({**base, "status": "quarantined", "verdict": "invalid", "action": "quarantined",
                      "new_champion_version": champ.version, "message": str(e), "mlflow_run_id": run_id,
                      "n_rows": None if raw is None else int(len(raw))})
        return {"batch": name, "verdict": "invalid", "action": "quarantined", "message": str(e),
                "drift_share": None, "champion_mse": None, "error_ratio": None, "champion_version": champ.version,
                "new_champion_version": champ.version}, history

    work = work_folder(cfg, st) / "batches"
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / f"{path.stem}-{digest[:12]}.parquet"
    if champ.task == "classification":
        outcome = judge_items(cfg, champ, batch)
        sequences.items_frame(batch, cfg.data).to_parquet(data_path, index=False)
        labels = outcome["labels"] or {}
        extra = {"n_rows": len(raw), "champion_accuracy": labels.get("accuracy"),
                 "champion_f1": labels.get("f1_macro"), "n_labelled": labels.get("n_labelled"),
                 "reference_accuracy": outcome["reference_accuracy"]}
    else:
        outcome = judge(cfg, champ, history, batch)
        history = pd.concat([history, batch], ignore_index=True)  # the stream now includes this batch
        batch.to_parquet(data_path, index=False)
        tcol = champ.meta["time_column"]
        extra = {"n_rows": len(batch), "first_time": str(batch[tcol].iloc[0]),
                 "last_time": str(batch[tcol].iloc[-1])}
    row = _record_and_act(config, cfg, st, store, exp, champ, history, base, outcome, extra, data_path, path.stem,
                          deployment, logger, lambda: _move(path, incoming_folder(cfg, st) / "processed"))
    return row, history


def _record_and_act(config, cfg, st, store, exp, champ, history, base: dict, outcome: dict, extra: dict,
                    data_path: Path | None, stem: str, deployment, logger, recorded=None) -> dict:
    """Record a judged batch (HTML report, MLflow run, store row); on drift or degradation retrain and re-gate.
    `recorded()` runs once the row is in the store. Returns the batch's summary row."""
    name, digest = base["batch"], base["digest"]
    v = outcome["verdict"]
    drift = outcome["drift"]
    report = drift.save_html(st.reports / cfg.name / f"{stem}-{digest[:8]}.html")
    run_id = _log_run(exp, cfg, name, digest, champ.version, outcome, v, report, None)
    row = {**base, "status": "judged", "verdict": v, "drift_share": drift.share, "error_ratio":
           _finite(outcome["error_ratio"]), "champion_mse": outcome["champion_mse"],
           "reference_mse": outcome["reference_mse"], "n_windows": outcome["n_windows"], **extra,
           "feature_scores": drift.scores, "data_path": data_path and str(data_path), "report_path": str(report),
           "mlflow_run_id": run_id, "action": "none", "new_champion_version": champ.version}
    retraining = v in ("drift", "degraded") and cfg.monitoring.retrain.enabled
    if retraining:
        row["action"] = "retrain started"
    row_id = store.record(row)
    if recorded is not None:
        recorded()
    ratio = outcome["error_ratio"]
    if champ.task == "classification":
        logger.info("batch %s: %s (drifted share %.2f, predicted labels drifted: %s, champion v%s accuracy %s vs "
                    "%.4g on its test items)", name, v, drift.share, outcome["prediction_drift"], champ.version,
                    _fmt(row["champion_accuracy"]), outcome["reference_accuracy"])
    else:
        logger.info("batch %s: %s (drifted share %.2f, champion v%s MSE %s, error ratio %s)", name, v, drift.share,
                    champ.version, _fmt(outcome["champion_mse"]), _fmt(ratio))
    if retraining:
        try:
            res = retrain(config, cfg, st, champ, history, name, v, deployment)
        except BaseException as e:  # Ctrl-C included: the row says what happened, the registry rolled back itself
            store.update(row_id, action="retrain failed", message=f"{type(e).__name__}: {e}"[:4000])
            mlflow.MlflowClient().set_tag(run_id, "action", "retrain failed")
            raise
        store.update(row_id, action=res["action"], new_version=res["new_version"],
                     new_champion_version=res["new_champion_version"], message=res.get("message"))
        mlflow.MlflowClient().set_tag(run_id, "action", res["action"])
        if res["action"] == "retrain failed":
            logger.error("retraining after %s failed: %s", name, res["message"])
        logger.info("batch %s: %s (challenger v%s, champion v%s)", name, res["action"], res["new_version"],
                    res["new_champion_version"])
        row.update(res)
    else:
        mlflow.MlflowClient().set_tag(run_id, "action", row["action"])
    return {k: row.get(k) for k in ("batch", "verdict", "action", "drift_share", "champion_mse", "error_ratio",
                                    "champion_accuracy", "champion_f1", "reference_accuracy", "n_labelled",
                                    "champion_version", "new_version", "new_champion_version", "n_windows",
                                    "report_path", "mlflow_run_id")}


def _finite(x):
    return None if x is None or not np.isfinite(x) else float(x)


def _nan(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else x


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def history_table(frame: pd.DataFrame, task: str = "forecasting") -> str:
    """The monitoring store's rows for a model, as a terminal table."""
    a, b = ("accuracy", "f1") if task == "classification" else ("champ mse", "ratio")
    lines = [f"{'batch':<28}{'verdict':<10}{'drift':>7}{a:>11}{b:>8}  {'champion':<9}action"]
    for r in frame.itertuples():
        x, y = (r.champion_accuracy, r.champion_f1) if task == "classification" else (r.champion_mse, r.error_ratio)
        lines.append(f"{str(r.batch)[:27]:<28}{r.verdict:<10}{_fmt(r.drift_share):>7}{_fmt(_nan(x)):>11}"
                     f"{_fmt(_nan(y)):>8}  v{str(r.champion_version or '-'):<8}{r.action}"
                     + (f" (v{r.new_version}; champion v{r.new_champion_version})" if r.new_version else ""))
    return "\n".join(lines)


def results_json(summary: dict) -> str:
    return json.dumps(summary, indent=2, default=str)
