"""The backtest flow (`rnn-pipeline backtest`): the config's data -> the model (the champion by default) forecasts
from n origins of the test period -> per-origin and aggregate figures beside the baselines, logged as an MLflow run
of the config's experiment (metrics, the per-origin table and chart). Nothing is trained or registered: the model
is backtested as it is (refit never; the training flow's `backtest.refit` refits while it trains)."""

from __future__ import annotations

import os
import time

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.batch import load_model
from rnn_pipeline import stores as stores_mod
from rnn_pipeline import tasks
from rnn_pipeline.config import load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.forecasting.backtest import table
from rnn_pipeline.registry import champion_uri
from rnn_pipeline.tracking import experiment_for, mlflow_stores


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(t: tasks.Task, cfg):
    frame, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    return t.prepare(t.read(frame, source), source)


@task(name="backtest", cache_policy=NO_CACHE)
def run_backtest(t: tasks.Task, data, bundle, origins: int, step: int | None):
    return t.backtest(data, bundle, t.season(data), origins=origins, step=step)


@flow(name="rnn-backtest")
def backtest_flow(config: str, model: str | None = None, origins: int | None = None, step: int | None = None) -> dict:
    """Backtest `model` (default models:/<name>@champion) on the config's data from `origins` origins (default:
    backtest.origins, else 5) `step` steps apart (default: backtest.step, else H)."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    cfg = load_config(config)
    if cfg.task != "forecasting":
        from rnn_pipeline.errors import ConfigError

        raise ConfigError(f"backtest: config '{cfg.name}' is a {cfg.task} config; backtests forecast from origins")
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.ensure(st)
    t = tasks.for_config(cfg)
    uri = model or champion_uri(cfg.model_name)
    with mlflow_stores(st.mlflow_uri):
        bundle, name, version = load_model(uri)
    data = prepare(t, cfg)
    key = t.gate_key(data)
    n = origins or cfg.backtest.origins or 5
    result = run_backtest(t, data, bundle, n, step or cfg.backtest.step)
    with mlflow_stores(st.mlflow_uri):
        experiment_id = experiment_for(cfg.name, st.artifact_location)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"backtest {name} v{version}") as run:
            mlflow.set_tags({"backtest_of": f"models:/{name}/{version}", "model_name": name})
            t.log_backtest(result, key)
    seconds = time.perf_counter() - t0
    logger.info("%s", table(result, key))
    logger.info("backtested %s v%s from %d origins in %.1f s (MLflow run %s)", name, version, n, seconds,
                run.info.run_id)
    return {"model_name": name, "model_version": version, "headline": key, "mlflow_run_id": run.info.run_id,
            "seconds": round(seconds, 2), **result}
