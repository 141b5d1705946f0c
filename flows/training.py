"""The training flow: ingest -> validate -> preprocess -> tune -> fit best -> evaluate -> gate -> register.

Every step that differs between forecasting and classification is a method of the config's Task
(rnn_pipeline.tasks), chosen once here."""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import enter_workdir, quiet_libraries
from rnn_pipeline import faults, registry, tasks, tune
from rnn_pipeline import stores as stores_mod
from rnn_pipeline.config import PipelineConfig, load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.locks import Lock, describe
from rnn_pipeline.monitoring.drift import REFERENCE_DIR
from rnn_pipeline.tracking import experiment_for, git_commit, log_dataset, mlflow_stores, save_runs_view, versions
from rnn_pipeline.train import pick_device, setup_torch

LOCK_TTL_SECONDS = 120  # the holder's heartbeat refreshes it every 30 s; a lock not refreshed for 2 minutes is stale


@task(name="ingest", cache_policy=NO_CACHE)
def ingest(cfg: PipelineConfig):
    return datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)


@task(name="validate", cache_policy=NO_CACHE)
def validate(t: tasks.Task, frame, source: str):
    """Forecasting: (time, values); classification: the raw texts or sequences with their labels."""
    return t.read(frame, source)


@task(name="preprocess", cache_policy=NO_CACHE)
def preprocess(t: tasks.Task, checked, source: str):
    return t.prepare(checked, source)


@task(name="tune", cache_policy=NO_CACHE)
def tune_task(data, cfg, storage_url, study_name, device, experiment_id, parent_run_id, spent_seconds=0.0):
    return tune.tune(data, cfg, storage_url, study_name, device, experiment_id, parent_run_id,
                     spent_seconds=spent_seconds)


@task(name="train-best", cache_policy=NO_CACHE)
def fit_best(candidates, data, cfg, device):
    return tune.fit_final(candidates, data, cfg, device=device, log_every=10)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(t: tasks.Task, data, bundle, season: int | None):
    return t.evaluate(data, bundle, season)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(t: tasks.Task, model_uri, cfg, data, key: str, floor: dict[str, float]):
    b = cfg.backtest
    if b.gate:  # challenger and champion forecast from the backtest's origins (and the floor is scored there too)
        def score(model):
            return t.backtest_score(model, data, key, b.origins, b.step)
    else:
        def score(model):
            return t.score(model, data, key)
    return registry.gate(model_uri, cfg.model_name, score, key, cfg.registry.margin, floor)


@task(name="backtest", cache_policy=NO_CACHE)
def backtest_task(t: tasks.Task, data, bundle, season, ev, params, device, refitted=None):
    return t.backtest(data, bundle, season, ev, params, device, refitted=refitted)


@task(name="register", cache_policy=NO_CACHE)
def register_task(model_uri, cfg, decision, key: str, run_id, tags, description=None, model_description=None):
    return registry.register(model_uri, cfg.model_name, decision, key, run_id, tags, description, model_description)


def log_artifacts(t: tasks.Task, tmp: Path, ev: dict, data, bundle, fitted, tuned, digest: str):
    """Plots, the model (with its save/load check), the test predictions and the monitoring reference. Returns the
    model URI and the save/load difference."""
    art = t.artifacts(tmp, ev, data, bundle, fitted.history, tuned.study if tuned.n_complete > 1 else None, digest)
    for f in art.plots:
        mlflow.log_artifact(str(f), "plots")
    for path, content in art.json.items():
        mlflow.log_dict(content, path)
    model_uri = registry.log_model(bundle, tmp / "bundle", art.example)
    # the seed's save/load check: the logged pyfunc must reproduce the in-memory predictions
    diff = registry.check_reproduces(t.predict_logged(registry.load(model_uri), bundle, data, art.index),
                                     art.expected)
    art.predictions.to_csv(tmp / "test_predictions.csv", index=False)
    mlflow.log_artifact(str(tmp / "test_predictions.csv"), "predictions")
    # the reference for monitoring: the data this model learned from, recorded with it
    mlflow.log_artifacts(str(art.reference), REFERENCE_DIR)
    return model_uri, diff


def summary_table(s: dict) -> str:
    """The run summary (last_run.json) as the terminal table the CLI prints."""
    return tasks.for_name(s.get("task", "forecasting"), None).summary_table(s)


def run_name(model: str, version: str | None = None, reason: str | None = None, state: str | None = None) -> str:
    """The parent MLflow run's name: `seed_sine v3 (manual)` once registered, `seed_sine (training…)` before,
    `seed_sine (failed)` for a run that stopped on an error."""
    return (f"{model} v{version} ({reason})" if version else f"{model} ({state or 'training…'})")[:250]


def artifact_key(model: str) -> str:
    """The Prefect artifact key of a model's training summary (lowercase letters, digits and dashes only)."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", f"training-{model}".lower())).strip("-")


def _flow_run_name() -> str:
    """A training flow run's name in Prefect: the config (its file's stem) and the trigger, `seed_sine (manual)`."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"{Path(str(params.get('config') or 'training')).stem} ({params.get('reason') or 'manual'})"


@contextmanager
def _named_if_failed(model: str):
    """Rename the active run `<model> (failed)` (or `(interrupted)`) when the block raises; the error goes on."""
    try:
        yield
    except BaseException as e:
        with suppress(Exception):  # a broken store must not hide the original error
            mlflow.set_tag("mlflow.runName", run_name(model, state="failed" if isinstance(e, Exception)
                                                      else "interrupted"))
        raise


def model_about(t: tasks.Task, cfg: PipelineConfig, data, source: str) -> str:
    """The registered model's description: what it is (task, targets or classes, config, data)."""
    return (f"**{cfg.model_name}**: an RNN ({t.name}) trained by rnn-pipeline from config `{cfg.name}` on "
            f"`{source}`.\n\n{t.about(data)}")


def _dataset_uri(cfg: PipelineConfig, source: str) -> str:
    """Where the data came from: `builtin:<name>`, or the data file's absolute path."""
    return source if source.startswith("builtin:") else str((Path(cfg.base_dir) / source).resolve())


@flow(name="rnn-training", flow_run_name=_flow_run_name)
def training_flow(config: str, overrides: dict | None = None, reason: str = "manual", wait: float = 0.0) -> dict:
    """Train, evaluate, register and gate one model from a config (path or built-in name). `overrides` are deep-merged
    into the config (the monitoring flow retrains on new data this way); `reason` is tagged on the run. One training
    run per model at a time: another run of the same model makes this one fail at once naming the holder, or wait up
    to `wait` seconds for it."""
    quiet_libraries()  # also in a flow-run process that a deployment started, where no CLI command did it
    enter_workdir()
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.check(st)  # a damaged or missing store: one line, before anything is written or trained
    stores_mod.ensure(st)
    with Lock(st.monitoring_url, f"train:{cfg.model_name}", ttl_seconds=LOCK_TTL_SECONDS, wait=wait,
              what=f"training run of model '{cfg.model_name}'",
              on_wait=lambda h: logger.warning("waiting for the training run of '%s' that holds the lock (%s)",
                                               cfg.model_name, describe(h))) as lock:
        with ExitStack() as cleanup:  # tuning workers started early are cancelled if the run fails before they end
            return _train(config, overrides, reason, cfg, st, lock, logger, cleanup)


def _train(config, overrides, reason, cfg, st, lock: Lock, logger, cleanup: ExitStack) -> dict:
    t_start = time.perf_counter()
    t = tasks.for_config(cfg)
    setup_torch(cfg.training.threads, cfg.seed)
    device = pick_device(cfg.training.device)

    frame, source = ingest(cfg)
    data = preprocess(t, validate(t, frame, source), source)
    digest = t.digest(data)
    # settled before training, so that a bad season or floor fails early: the season (evaluation.season 'auto'
    # reads the time column), the headline key the gate scores (std_mse for several targets), the floor baselines
    season = t.season(data)
    gate_key = t.gate_key(data)
    floor = t.floor(season)
    if cfg.backtest.origins:  # origins that do not fit in the test period: said now, not after training
        t.check_backtest(data)
    study_name = f"{cfg.name}-{cfg.digest()}-{digest[:8]}"
    timings = {}
    launch = None
    if cfg.tuning.workers and cfg.tuning.n_trials:  # workers on the pool share the study: started now, so that their
        from flows import tune_worker  # start-up overlaps this run's steps up to tuning; released then
        from flows.deploy import config_parameter

        tune_worker.check_setup(cfg, st)  # a Prefect server and a shared study store: said before anything starts
        t_launch = time.perf_counter()
        study = tune.prepare_study(data, cfg, st.optuna_url, study_name)
        launch = cleanup.enter_context(tune_worker.launched(study, cfg.tuning.workers, cfg.tuning.work_pool, {
            "config": config_parameter(config), "study_name": study_name,
            # the stores as this run resolved them (environment included): the workers log where it logs
            "overrides": {**(overrides or {}), "stores": {**(overrides or {}).get("stores", {}),
                                                          "mlflow_uri": st.mlflow_uri, "optuna_url": st.optuna_url}}},
            logger))
        timings["tune_workers_launch"] = time.perf_counter() - t_launch
    data_warnings = t.warnings(data)
    logger.info(t.describe(data, source))
    with mlflow_stores(st.mlflow_uri):  # what an earlier, crashed run of this model left (no live run owns it now)
        experiment_id = experiment_for(cfg.name, st.artifact_location)
        cleaned = registry.reconcile(mlflow.MlflowClient(), cfg.model_name, experiment_id)
    if any(cleaned.values()):
        logger.warning("an earlier run of '%s' stopped part-way: marked %d run(s) failed and %d version(s) "
                       "incomplete (%s)", cfg.model_name, len(cleaned["failed_runs"]),
                       len(cleaned["incomplete_versions"]), cleaned)
    with mlflow_stores(st.mlflow_uri), mlflow.start_run(experiment_id=experiment_id,
                                                         run_name=run_name(cfg.model_name)) as run, \
            _named_if_failed(cfg.model_name):
        run_id = run.info.run_id
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")
        mlflow.log_params({"config": config, "seed": cfg.seed, "data_source": source, "data_digest": digest[:16],
                           "study": study_name, "device": str(device),
                           **({"overrides": json.dumps(overrides, sort_keys=True, default=str)[:6000]}
                              if overrides else {})})
        mlflow.set_tags({"git_commit": git_commit(), "data_digest": digest, "trigger": reason,
                         "model_name": cfg.model_name, "lock_owner": lock.owner,
                         **{f"version.{k}": v for k, v in versions().items()}})
        mlflow.log_params({"season": season, "gate.metric": gate_key, "gate.floor": ",".join(floor) or "none",
                           "data_warnings": len(data_warnings)})
        if data_warnings:  # the values themselves, in a tag (a param holds 6000 characters at most)
            mlflow.set_tag("data.warnings", "\n".join(data_warnings)[:7500])
        if isinstance(frame, pd.DataFrame):  # the run's Dataset: the ingested frame, under the run's data digest
            try:
                uri = _dataset_uri(cfg, source)
                log_dataset(frame, uri.removeprefix("builtin:") if uri.startswith("builtin:") else Path(uri).name,
                            uri, digest[:16])  # MLflow keeps 36 characters of a digest; the tag has all of it
            except Exception as e:  # what the UI shows of the data must not stop a training run
                logger.warning("the dataset was not logged to MLflow: %s: %s", type(e).__name__, e)

        t0, spent = time.perf_counter(), 0.0
        if launch is not None:  # the workers started above: their trials nest under this run from now on
            launch.release(experiment_id, run_id)
            workers = launch.wait()
            mlflow.log_params({"tuning.workers": cfg.tuning.workers, "tuning.work_pool": cfg.tuning.work_pool})
            now = time.perf_counter()  # the wait here, and the whole phase since the workers were started
            timings["tune_workers"], timings["tune_workers_since_launch"] = now - t0, now - t_launch
            spent = now - t0  # the workers' share of tuning.timeout_seconds (each counts it from its release)
            logger.info("tuning workers done (%s); resuming the study here for what is missing",
                        ", ".join(f"{w['name']} {w['state']}" for w in workers))
        tuned = tune_task(data, cfg, st.optuna_url, study_name, device, experiment_id, run_id, spent)
        timings["tune"] = time.perf_counter() - t0
        logger.info("tuning: %d complete, %d pruned, %d failed in %.1fs; best %s", tuned.n_complete, tuned.n_pruned,
                    tuned.n_failed, timings["tune"], tuned.best_params)
        mlflow.log_params({f"best.{k}": v for k, v in tuned.best_params.items()})

        t0 = time.perf_counter()
        faults.point("final_fit")
        candidates = tune.top_params(tuned.study if tuned.n_complete else None, cfg, tune.ensemble_trials(cfg))
        fitted = fit_best(candidates, data, cfg, device)
        timings["final_fit"] = time.perf_counter() - t0
        mix = [m for m in fitted.members if m["weight"] > 0]
        if len(fitted.members) > 1:  # which trials' parameters the final model mixes, and how much of each
            mlflow.log_params({"ensemble.candidates": len(fitted.members), "ensemble.mixed": len(mix)})
            mlflow.set_tag("ensemble", json.dumps([{"weight": round(m["weight"], 4), "val_loss": round(m["val_loss"], 6),
                                                    **m["params"]} for m in fitted.members], default=str)[:7500])
        client = mlflow.MlflowClient()
        now = int(time.time() * 1000)  # val_loss per epoch and best_val_loss: the trial runs' names for the same
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, h[k], now, h["epoch"])
                                          for h in fitted.history for k in ("train_loss", "val_loss", "lr")]
                         + [mlflow.entities.Metric("best_val_loss", fitted.best_val, now, 0)])
        bundle = t.bundle(fitted.model, data, tuned.best_params)

        t0 = time.perf_counter()
        ev = evaluate_task(t, data, bundle, season)
        t.log_evaluation(ev, data)
        bt = None
        if cfg.backtest.origins:  # rolling origins through the test period, beside the baselines from each
            refitted = None
            if cfg.backtest.fans_out:  # the refits are independent fits: mapped over Dask (flows.fanout)
                from flows.fanout import refit_origins

                positions = t.refit_positions(data, bundle, tuned.best_params)
                t1 = time.perf_counter()
                from flows.deploy import config_parameter

                refitted = refit_origins(config_parameter(config), overrides, tuned.best_params, positions, digest,
                                         str(device), cfg.backtest.workers, cfg.backtest.dask_address)
                timings["backtest_refits"] = time.perf_counter() - t1
                logger.info("backtest: %d refits on Dask (%s) in %.1fs", len(positions),
                            cfg.backtest.dask_address or f"{cfg.backtest.workers} local processes",
                            timings["backtest_refits"])
            bt = backtest_task(t, data, bundle, season, ev, tuned.best_params, device, refitted)
            t.log_backtest(bt, gate_key)
        with tempfile.TemporaryDirectory() as tmp:
            model_uri, save_load_diff = log_artifacts(t, Path(tmp), ev, data, bundle, fitted, tuned, digest)
        timings["evaluate"] = time.perf_counter() - t0

        lock.check()  # the lock was not taken over while this run trained: nothing else registers now
        t0 = time.perf_counter()
        # the floor's scores come from the evaluation: the same test windows the gate scores the challenger on
        # (backtest.gate: on the backtest's origins, the floor's scores from the backtest's baselines)
        judged = bt["models"] if cfg.backtest.gate else ev["baselines"]
        decision = gate_task(t, model_uri, cfg, data, gate_key, {b: judged[b][gate_key] for b in floor})
        scores = t.tag_scores(gate_key)
        version_tags = {"data_digest": digest[:16], "config": cfg.name, "trigger": reason, "task": t.name,
                        **{f"test_{k}": f"{ev['metrics'][k]:.8g}" for k in scores},
                        "reference": f"runs:/{run_id}/{REFERENCE_DIR}"}
        description = registry.version_description(decision, gate_key, run_id, metrics=ev["metrics"],
                                                   baselines=ev["baselines"], tags=version_tags,
                                                   data=f"`{source}`")
        version = register_task(model_uri, cfg, decision, gate_key, run_id, version_tags, description,
                                model_about(t, cfg, data, source))
        timings["register"] = time.perf_counter() - t0
        champion = registry.current_champion(client, cfg.model_name)
        mlflow.set_tags({"registered_version": version, "gate.decision": decision.label,
                         "gate.reason": decision.reason,
                         "mlflow.runName": run_name(cfg.model_name, version, reason)})
        save_runs_view(client, experiment_id, client.get_run(run_id))

        timings["training_compute"] = tuned.trial_seconds + fitted.seconds
        summary = {
            "task": t.name, "model_name": cfg.model_name, "model_version": version, "promoted": decision.promoted,
            "champion_version": str(champion.version) if champion else None, "reason": decision.reason,
            "decision": decision.label, "data_warnings": data_warnings,
            "gate": {"metric": gate_key, "challenger": decision.challenger_score, "champion": decision.champion_score,
                     "previous_champion_version": decision.champion_version, "floor": decision.floor},
            "headline": gate_key, "season": season,
            "metrics": ev["metrics"], "baselines": ev["baselines"], "skill": ev["skill"],
            **t.summary(ev, data), "best_params": tuned.best_params,
            "n_trials": tuned.n_complete + tuned.n_pruned, "n_complete": tuned.n_complete, "n_pruned": tuned.n_pruned,
            "n_failed": tuned.n_failed, "resumed_trials": tuned.resumed_trials, "study": study_name,
            "final_fit": {"epochs": fitted.epochs, "best_epoch": fitted.best_epoch, "best_val_loss": fitted.best_val,
                          "members": cfg.training.ensemble,
                          "ensemble": [{"weight": m["weight"], "val_loss": m["val_loss"], "params": m["params"]}
                                       for m in fitted.members]},
            "mlflow_run_id": run_id, "experiment_id": experiment_id, "data_digest": digest, "config": config,
            "overrides": json.loads(json.dumps(overrides or {}, default=str)),  # --set / monitoring, JSON-safe
            "timings": timings, "save_load_max_abs_diff": save_load_diff,
            **({"backtest": bt} if bt else {}),
        }
        summary["wall_seconds"] = time.perf_counter() - t_start
        mlflow.log_dict(summary, "summary.json")
    st.last_run_file.write_text(json.dumps(summary, indent=2, default=str))
    table = t.summary_table(summary)
    logger.info("run summary\n%s", table, extra={"run_summary": True})  # the CLI prints it itself (hide_from_console)
    try:  # the flow run's Artifacts tab (and the Artifacts page, by key: the model's latest summary)
        create_markdown_artifact(
            markdown=f"### {run_name(cfg.model_name, version, reason)}\n\n```\n{table}\n```\n\n"
                     f"MLflow run `{run_id}` (experiment `{experiment_id}`)",
            key=artifact_key(cfg.model_name), description=f"training summary of {cfg.model_name} v{version}")
    except Exception as e:  # the model is registered: a summary the UI could not take must not fail the run
        logger.warning("the summary artifact was not created: %s: %s", type(e).__name__, e)
    return summary
