"""The training flow: ingest -> validate -> preprocess -> tune -> fit best -> evaluate -> gate -> register."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rnn_pipeline import registry, tune
from rnn_pipeline import stores as stores_mod
from rnn_pipeline.bundle import ClassifierBundle, ForecastBundle
from rnn_pipeline.classification import evaluation as cls_evaluation
from rnn_pipeline.classification import monitoring as monitor_classify
from rnn_pipeline.classification import sequences
from rnn_pipeline.classification.sequences import PreparedSequences
from rnn_pipeline.config import PipelineConfig, load_config
from rnn_pipeline.data import datasets, validation
from rnn_pipeline.forecasting import evaluation as evaluate
from rnn_pipeline.forecasting.windows import PreparedSeries, before_test_end, lag_matrix, prepare_series
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.tracking import experiment_for, git_commit, mlflow_stores, versions
from rnn_pipeline.train import pick_device, setup_torch


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(cfg: PipelineConfig):
    return datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)


@task(name="validate", cache_policy=NO_CACHE)
def validate(frame, source: str, cfg: PipelineConfig):
    """Forecasting: (time, values); classification: the raw texts or sequences with their labels."""
    d = cfg.data
    if cfg.task == "classification":
        return sequences.read_items(frame, source, d, labels=True, split=True)
    frame = before_test_end(frame, source, d.time_column, cfg.split.test_end)  # rows from split.test_end on: unused
    return validation.validate_series(frame, source, d.time_column, d.target_columns, d.feature_columns, d.missing)


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(checked, source: str, cfg: PipelineConfig) -> PreparedSeries | PreparedSequences:
    s = cfg.split
    if cfg.task == "classification":
        return sequences.prepare_sequences(checked, source, cfg.features, val=s.val, test=s.test, seed=cfg.seed,
                                           imbalance=cfg.training.imbalance, noise_std=cfg.training.noise_std)
    time_col, values = checked
    data = prepare_series(time_col, values, source, cfg.data.target_columns, cfg.data.feature_columns,
                          window=cfg.features.window, max_window=cfg.max_window(), horizon=cfg.features.horizon,
                          scaler=cfg.features.scaler, val=s.val, test=s.test, val_start=s.val_start,
                          test_start=s.test_start, test_end=s.test_end, outliers=cfg.data.outliers,
                          outlier_threshold=cfg.data.outlier_threshold)
    return data


@task(name="tune", cache_policy=NO_CACHE)
def tune_task(data, cfg, storage_url, study_name, device, experiment_id, parent_run_id):
    return tune.tune(data, cfg, storage_url, study_name, device, experiment_id, parent_run_id)


@task(name="train-best", cache_policy=NO_CACHE)
def fit_best(params, data, cfg, device):
    return tune.train_with(params, data, cfg, max_epochs=cfg.training.max_epochs, patience=cfg.training.patience,
                           device=device, log_every=10)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(data, bundle: ForecastBundle | ClassifierBundle, cfg, season: int | None):
    if cfg.task == "classification":
        return cls_evaluation.evaluate_classifier(data, bundle.predict_proba, cfg.seed)
    return evaluate.evaluate(data, bundle.predict_windows, bundle.window, season, cfg.evaluation.ridge_alphas)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(model_uri, cfg, data, key: str, floor: dict[str, float]):
    return registry.gate(model_uri, cfg.model_name, data, key, cfg.registry.margin, floor)


@task(name="register", cache_policy=NO_CACHE)
def register_task(model_uri, cfg, decision, key: str, run_id, tags):
    return registry.register(model_uri, cfg.model_name, decision, key, run_id, tags)


def data_digest(data: PreparedSeries | PreparedSequences) -> str:
    h = hashlib.sha256()
    if isinstance(data, PreparedSequences):
        raw = data.raw
        h.update(json.dumps([raw.kind, raw.channels, [str(v) for v in raw.ids], list(map(str, raw.labels))]).encode())
        for item in raw.items:
            h.update(item.encode() if isinstance(item, str) else np.ascontiguousarray(item).tobytes())
        return h.hexdigest()
    h.update(json.dumps([data.target_columns, data.feature_columns]).encode())
    h.update(np.ascontiguousarray(data.values).tobytes())
    h.update(data.time.astype(str).str.cat(sep=",").encode())
    return h.hexdigest()


def make_bundle(model, data: PreparedSeries | PreparedSequences, params: dict, cfg: PipelineConfig):
    if isinstance(data, PreparedSequences):
        d = cfg.data
        return ClassifierBundle(model, data.encoder, data.classes, d.text_column, d.sequence_column, d.step_column)
    return ForecastBundle(model, data.scaling, data.target_columns, data.feature_columns, int(params["window"]),
                          data.horizon)


def log_evaluation(ev: dict, data) -> None:
    """Test metrics, the baselines' metrics and the skills, in the active MLflow run."""
    mlflow.log_metrics({f"test_{k}": v for k, v in ev["metrics"].items()})
    for name, m in ev["baselines"].items():
        mlflow.log_metrics({f"baseline_{name}_{k}": v for k, v in m.items()})
    mlflow.log_metrics({f"skill_vs_{k}": v for k, v in ev["skill"].items()})
    if isinstance(data, PreparedSequences):
        for c, r in ev["report"].items():
            if isinstance(r, dict) and c in data.classes:
                mlflow.log_metrics({f"test_class_{c}_{k}": r[k] for k in ("precision", "recall", "f1-score")})
        return
    mlflow.log_metrics({f"test_mse_h{h + 1}": v for h, v in enumerate(ev["mse_by_horizon"])})
    if len(data.target_columns) > 1:
        for col, m in ev["per_target"].items():
            mlflow.log_metrics({f"test_{col}_{k}": v for k, v in m.items()})


def task_summary(ev: dict, data) -> dict:
    if isinstance(data, PreparedSequences):
        return {"n_test": ev["n_test"], "classes": data.classes, "per_class": {
            c: ev["report"][c] for c in data.classes}, "n_truncated": data.n_truncated,
            "max_length": data.encoder.max_length, "split_sizes": {k: len(v) for k, v in data.split.items()}}
    return {"metrics_per_target": ev["per_target"], "mse_by_horizon": ev["mse_by_horizon"],
            "n_test_windows": ev["n_test_windows"]}


def log_artifacts(tmp: Path, ev: dict, data, bundle, fitted, tuned, cfg: PipelineConfig, digest: str):
    """Plots, the model (with its save/load check), the test predictions and the monitoring reference. Returns the
    model URI and the save/load difference."""
    study = tuned.study if tuned.n_complete > 1 else None
    if isinstance(data, PreparedSequences):
        files = cls_evaluation.save_classification_plots(tmp, ev, data.classes, fitted.history, study)
        mlflow.log_dict(ev["report"], "report/classification_report.json")
        index, expected = ev["test_index"], ev["proba"]
        example = bundle.items_frame([data.raw.items[i] for i in index[:2]])
        predictions = cls_evaluation.classification_frame(ev, data)
        reference = monitor_classify.write_reference(tmp / "reference", data, bundle, ev["metrics"], cfg.data,
                                                     digest)
    else:
        files = evaluate.save_plots(tmp, ev, data.time.iloc[ev["first_targets"]].to_numpy(), fitted.history, study)
        index, expected = ev["first_targets"], ev["y_pred"]
        example = bundle.windows_frame(lag_matrix(data.values, index[:1], bundle.window))
        predictions = evaluate.predictions_frame(ev, data.time, bundle.output_columns)
        meta = monitor.reference_meta(cfg.data.time_column, data.target_columns + data.feature_columns,
                                      data.n_targets, bundle.window, data.horizon, ev["metrics"]["mse"], data.time,
                                      digest)
        reference = monitor.write_reference(tmp / "reference", data.time, data.values, meta)
    for f in files:
        mlflow.log_artifact(str(f), "plots")
    model_uri = registry.log_model(bundle, tmp / "bundle", example)
    # the seed's save/load check: the logged pyfunc must reproduce the in-memory predictions
    diff = registry.check_reproduces(model_uri, bundle, data, index, expected)
    predictions.to_csv(tmp / "test_predictions.csv", index=False)
    mlflow.log_artifact(str(tmp / "test_predictions.csv"), "predictions")
    # the reference for monitoring: the data this model learned from, recorded with it
    mlflow.log_artifacts(str(reference), monitor.REFERENCE_DIR)
    return model_uri, diff


def summary_table(s: dict) -> str:
    if s.get("task") == "classification":
        return _classification_table(s)
    # the headline scale: original units for one target, standardised (training z-scores) for several
    p = "std_" if s.get("headline", "mse").startswith("std_") else ""
    scale = ("standardised (each target's errors over its training std: original units would mix)" if p
             else "original units")
    lines = _head(s) + [f"test windows, {scale}; skill = 1 - mse / baseline mse",
                        f"{'model':<16}{'mse':>12}{'rmse':>10}{'mae':>10}{'r2':>8}{'mase':>8}{'skill':>8}"]
    rows = [("rnn", s["metrics"], None)] + [(k, v, s["skill"][k]) for k, v in s["baselines"].items()]
    for name, m, sk in rows:
        skill = "" if sk is None else f"{sk:+.3f}"
        lines.append(f"{name:<16}{m[p + 'mse']:>12.6f}{m[p + 'rmse']:>10.4f}{m[p + 'mae']:>10.4f}{m[p + 'r2']:>8.4f}"
                     f"{m[p + 'mase']:>8.3f}{skill:>8}")
    lines.append(f"wall time {s['wall_seconds']:.1f}s (tuning {s['timings']['tune']:.1f}s, final fit "
                 f"{s['timings']['final_fit']:.1f}s, training compute {s['timings']['training_compute']:.1f}s)")
    return "\n".join(lines)


def _head(s: dict) -> list[str]:
    return [f"model {s['model_name']} v{s['model_version']}: "
            f"{'PROMOTED to champion' if s['promoted'] else 'kept as challenger'} ({s['reason']})",
            f"champion is now v{s['champion_version']}",
            f"best params: {s['best_params']}",
            f"trials: {s['n_trials']} ({s['n_pruned']} pruned, {s['n_failed']} failed, {s['resumed_trials']} resumed)",
            *(f"DATA WARNING: {w}" for w in s.get("data_warnings", []))]


def _classification_table(s: dict) -> str:
    lines = _head(s) + [f"{'model':<16}{'accuracy':>10}{'f1_macro':>10}{'f1_wtd':>8}{'roc_auc':>9}{'log_loss':>10}"]
    for name, m in [("rnn", s["metrics"]), *s["baselines"].items()]:
        lines.append(f"{name:<16}{m['accuracy']:>10.4f}{m['f1_macro']:>10.4f}{m['f1_weighted']:>8.4f}"
                     f"{m['roc_auc']:>9.4f}{m['log_loss']:>10.4f}")
    lines.append(f"{s['n_test']} test items; wall time {s['wall_seconds']:.1f}s (tuning {s['timings']['tune']:.1f}s, "
                 f"final fit {s['timings']['final_fit']:.1f}s)")
    return "\n".join(lines)


@flow(name="rnn-training")
def training_flow(config: str, overrides: dict | None = None, reason: str = "manual") -> dict:
    """Train, evaluate, register and gate one model from a config (path or built-in name). `overrides` are deep-merged
    into the config (the monitoring flow retrains on new data this way); `reason` is tagged on the run."""
    t_start = time.perf_counter()
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.ensure(st)
    setup_torch(cfg.training.threads, cfg.seed)
    device = pick_device(cfg.training.device)

    frame, source = ingest(cfg)
    data = preprocess(validate(frame, source, cfg), source, cfg)
    digest = data_digest(data)
    # settled before training, so that a bad season or floor fails early: the season (evaluation.season 'auto'
    # reads the time column), the headline key the gate scores (std_mse for several targets), the floor baselines
    forecast = isinstance(data, PreparedSeries)
    season = evaluate.resolve_season(cfg.evaluation.season, data) if forecast else None
    gate_key = evaluate.headline(cfg.gate_metric, data.n_targets if forecast else 1)
    floor = registry.floor_names(cfg.registry.floor, cfg.task, season)
    data_warnings = list(data.warnings) if forecast else []
    if isinstance(data, PreparedSequences):
        logger.info("data %s: %d %s items, %d classes; split %s; max length %d (%d truncated)", source,
                    len(data.raw), data.kind, len(data.classes), {k: len(v) for k, v in data.split.items()},
                    data.encoder.max_length, data.n_truncated)
    else:
        logger.info("data %s: %d rows, %d columns; split at rows %d (validation) and %d (test)", source,
                    data.points.n, data.values.shape[1], data.points.val_start + 1, data.points.test_start + 1)

    study_name = f"{cfg.name}-{cfg.digest()}-{digest[:8]}"
    timings = {}
    with mlflow_stores(st.mlflow_uri), mlflow.start_run(
            experiment_id=experiment_for(cfg.name, st.artifact_location), run_name=f"train-{cfg.name}") as run:
        experiment_id = run.info.experiment_id
        run_id = run.info.run_id
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")
        mlflow.log_params({"config": config, "seed": cfg.seed, "data_source": source, "data_digest": digest[:16],
                           "study": study_name, "device": str(device),
                           **({"overrides": json.dumps(overrides, sort_keys=True, default=str)[:6000]}
                              if overrides else {})})
        mlflow.set_tags({"git_commit": git_commit(), "data_digest": digest, "trigger": reason,
                         **{f"version.{k}": v for k, v in versions().items()}})
        mlflow.log_params({"season": season, "gate.metric": gate_key, "gate.floor": ",".join(floor) or "none",
                           "data_warnings": len(data_warnings)})
        if data_warnings:  # the values themselves, in a tag (a param holds 6000 characters at most)
            mlflow.set_tag("data.warnings", "\n".join(data_warnings)[:7500])

        t0 = time.perf_counter()
        tuned = tune_task(data, cfg, st.optuna_url, study_name, device, experiment_id, run_id)
        timings["tune"] = time.perf_counter() - t0
        logger.info("tuning: %d complete, %d pruned, %d failed in %.1fs; best %s", tuned.n_complete, tuned.n_pruned,
                    tuned.n_failed, timings["tune"], tuned.best_params)
        mlflow.log_params({f"best.{k}": v for k, v in tuned.best_params.items()})

        t0 = time.perf_counter()
        fitted = fit_best(tuned.best_params, data, cfg, device)
        timings["final_fit"] = time.perf_counter() - t0
        client = mlflow.MlflowClient()
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, h[k], int(time.time() * 1000), h["epoch"])
                                          for h in fitted.history for k in ("train_loss", "val_loss", "lr")])
        bundle = make_bundle(fitted.model, data, tuned.best_params, cfg)

        t0 = time.perf_counter()
        ev = evaluate_task(data, bundle, cfg, season)
        log_evaluation(ev, data)
        with tempfile.TemporaryDirectory() as tmp:
            model_uri, save_load_diff = log_artifacts(Path(tmp), ev, data, bundle, fitted, tuned, cfg, digest)
        timings["evaluate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # the floor's scores come from the evaluation: the same test windows the gate scores the challenger on
        decision = gate_task(model_uri, cfg, data, gate_key, {b: ev["baselines"][b][gate_key] for b in floor})
        scores = ("accuracy", "f1_macro") if cfg.task == "classification" else dict.fromkeys(("mse", gate_key))
        version = register_task(model_uri, cfg, decision, gate_key, run_id,
                                {"data_digest": digest[:16], "config": cfg.name, "trigger": reason, "task": cfg.task,
                                 **{f"test_{k}": f"{ev['metrics'][k]:.8g}" for k in scores},
                                 "reference": f"runs:/{run_id}/{monitor.REFERENCE_DIR}"})
        timings["register"] = time.perf_counter() - t0
        champion = registry.current_champion(client, cfg.model_name)
        mlflow.set_tags({"registered_version": version, "gate.decision": decision.label,
                         "gate.reason": decision.reason})

        timings["training_compute"] = tuned.trial_seconds + fitted.seconds
        summary = {
            "task": cfg.task, "model_name": cfg.model_name, "model_version": version, "promoted": decision.promoted,
            "champion_version": str(champion.version) if champion else None, "reason": decision.reason,
            "decision": decision.label, "data_warnings": data_warnings,
            "gate": {"metric": gate_key, "challenger": decision.challenger_score, "champion": decision.champion_score,
                     "previous_champion_version": decision.champion_version, "floor": decision.floor},
            "headline": gate_key, "season": season,
            "metrics": ev["metrics"], "baselines": ev["baselines"], "skill": ev["skill"],
            **task_summary(ev, data), "best_params": tuned.best_params,
            "n_trials": tuned.n_complete + tuned.n_pruned, "n_complete": tuned.n_complete, "n_pruned": tuned.n_pruned,
            "n_failed": tuned.n_failed, "resumed_trials": tuned.resumed_trials, "study": study_name,
            "final_fit": {"epochs": fitted.epochs, "best_epoch": fitted.best_epoch, "best_val_loss": fitted.best_val},
            "mlflow_run_id": run_id, "experiment_id": experiment_id, "data_digest": digest, "config": config,
            "overrides": json.loads(json.dumps(overrides or {}, default=str)),  # --set / monitoring, JSON-safe
            "timings": timings, "save_load_max_abs_diff": save_load_diff,
        }
        summary["wall_seconds"] = time.perf_counter() - t_start
        mlflow.log_dict(summary, "summary.json")
    st.last_run_file.write_text(json.dumps(summary, indent=2, default=str))
    logger.info("run summary\n%s", summary_table(summary))
    return summary
