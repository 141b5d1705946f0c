"""The batch-prediction flow: read a file, URL or table -> score it with the model (the champion by default) ->
write the predictions (Parquet, or CSV by suffix) and the inference log. All or nothing: the output file appears
(renamed from a temporary name) only after every prediction is logged, and a failure logs nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rnn_pipeline import registry
from rnn_pipeline import stores as stores_mod
from rnn_pipeline.config import load_config
from rnn_pipeline.serving import batch, inference_log
from rnn_pipeline.serving.holder import parse_uri
from rnn_pipeline.tracking import mlflow_stores


@task(name="load-model", cache_policy=NO_CACHE)
def load_model(uri: str):
    name, alias, version = parse_uri(uri)
    if alias is not None:  # pin the version the alias points at now, so the log names it
        version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        uri = f"models:/{name}/{version}"
    model = registry.load(uri)
    return registry.bundle_of(model), name or uri, version or ""


@task(name="read-input", cache_policy=NO_CACHE)
def read_input(source: str, table: str | None):
    return batch.read_input(source, table)


@task(name="score", cache_policy=NO_CACHE)
def score_task(bundle, data, name: str, chunk: int):
    logger = get_run_logger()
    ids, inputs = batch.model_inputs(bundle, data, name)
    logger.info("scoring %d %s", len(ids), bundle.unit)

    def progress(done, total):
        logger.info("scored %d/%d", done, total)

    frame, outputs = batch.score(bundle, ids, inputs, chunk, progress)
    return ids, inputs, frame, outputs


@flow(name="rnn-batch-prediction")
def batch_prediction_flow(config: str, input: str, output: str, model: str | None = None,
                          table: str | None = None) -> dict:
    """Score `input` (a path, file:// or http(s):// URL, or with `table` a SQLAlchemy URL) with `model` (default
    models:/<name>@champion); write `output` and one inference-log row per prediction (source batch:<input>)."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    cfg = load_config(config)
    st = stores_mod.resolve(cfg.stores, os.environ)
    stores_mod.ensure(st)
    uri = model or registry.champion_uri(cfg.model_name)
    with mlflow_stores(st.mlflow_uri):
        bundle, name, version = load_model(uri)
    data, source_name = read_input(input, table)
    ids, inputs, frame, outputs = score_task(bundle, data, source_name, cfg.serving.batch_chunk)
    prediction_ids = [inference_log.new_id() for _ in range(len(ids))]
    frame.insert(0, "prediction_id", prediction_ids)
    frame["model_version"] = version
    tmp = batch.write_output(frame, output)
    try:
        if cfg.serving.log_predictions:
            store = inference_log.InferenceLog(st.monitoring_url)
            try:
                store.write_predictions(batch.log_rows(bundle, inputs, outputs, prediction_ids, version, name,
                                                       f"batch:{source_name}"))
            finally:
                store.dispose()
        out = Path(output)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    logger.info("wrote %d predictions of %s v%s to %s in %.1f s", len(frame), name, version, out, seconds)
    return {"model_name": name, "model_version": version, "n_predictions": len(frame), "output": str(out),
            "logged": cfg.serving.log_predictions, "inference_log": st.monitoring_url if cfg.serving.log_predictions
            else None, "seconds": round(seconds, 2)}
