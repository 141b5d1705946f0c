"""Independent units fanned out on Dask through Prefect's DaskTaskRunner (prefect-dask). On one machine a local
cluster of `workers` processes (one thread each: a small RNN trains fastest on one); given `address`
(tcp://host:8786), that scheduler and its workers instead.

- Training runs (`rnn-pipeline train-many`): one `train-one` task per config, each the ordinary training flow (tune,
  fit, evaluate, register, gate) as a subflow; a config that fails fails its own task only, and the others go on.
- A backtest's refits (`backtest.refit` with `backtest.workers` >= 2 or `backtest.dask_address`): one `refit-origin`
  task per refitted origin, each fitting the best trial's parameters on everything before its origin; the training
  flow's backtest then forecasts with them. Each task reads and prepares the config's data itself (once per worker
  process), so that only names and numbers travel to the workers, and the fitted models back.
"""

from __future__ import annotations

import functools
import json
import os
import time

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.runtime import quiet_libraries


@task(name="train-one", cache_policy=NO_CACHE)
def train_one(config: str, overrides: dict | None = None) -> dict:
    from flows.training import training_flow

    s = training_flow(config, overrides)
    return {"config": config, "model_name": s["model_name"], "model_version": s["model_version"],
            "promoted": s["promoted"], "headline": s["headline"], "score": s["metrics"][s["headline"]],
            "wall_seconds": s["wall_seconds"], "pid": os.getpid()}


@flow(name="rnn-train-many")
def train_many_flow(configs: list[str], overrides: dict | None = None) -> list[dict]:
    """Train every config; returns one row per config (its error instead, where its run failed)."""
    quiet_libraries()
    logger = get_run_logger()
    futures = train_one.map(configs, unmapped(overrides))
    rows = []
    for config, f in zip(configs, futures):
        try:
            rows.append(f.result())
        except Exception as e:  # one config's failure is its own
            logger.error("%s failed: %s: %s", config, type(e).__name__, e)
            rows.append({"config": config, "error": f"{type(e).__name__}: {e}"})
    return rows


def dask_runner(workers: int, address: str | None):
    """Prefect's Dask task runner: a local cluster of `workers` single-threaded processes, or the scheduler at
    `address`."""
    import dask
    from prefect_dask import DaskTaskRunner

    # a task whose worker died is not rerun elsewhere: it would train (and register) a second time. Each worker's
    # statistical profiler (a stack sample every 10 ms) is off: it cost a training run about 15% of its time here
    # (4 small trainings on 2 workers: 56.4 s with it, 51.3 s without). The nanny's environment for its worker keeps
    # the thread caps but not MALLOC_TRIM_THRESHOLD_=65536 (Dask's default, to hand freed memory back to the system
    # at once): with it glibc trims the heap after almost every batch's tensors are freed, and a training run took
    # 10.7 s instead of 7.4 s (seed task, 30 epochs, one thread). A remote cluster's workers get what their own
    # nannies were started with (see "Scaling out" in the README).
    dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                                                            "OPENBLAS_NUM_THREADS": 1}})
    return DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None})


@functools.lru_cache(maxsize=2)
def _prepared(config: str, overrides_json: str):
    """The config's task and prepared data, as the training run prepared them (once per worker process)."""
    from rnn_pipeline import tasks
    from rnn_pipeline.config import load_config
    from rnn_pipeline.data import datasets

    cfg = load_config(config, json.loads(overrides_json) or None)
    t = tasks.for_config(cfg)
    frame, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    return cfg, t, t.prepare(t.read(frame, source), source)


@task(name="refit-origin", cache_policy=NO_CACHE)
def refit_origin(config: str, overrides_json: str, params: dict, position: int, device: str, digest: str):
    from rnn_pipeline.errors import PipelineError
    from rnn_pipeline.train import setup_torch

    cfg, t, data = _prepared(config, overrides_json)
    if t.digest(data) != digest:  # a config or data file changed since (a long-lived cluster's cache, or an edit)
        _prepared.cache_clear()
        cfg, t, data = _prepared(config, overrides_json)
        if t.digest(data) != digest:
            raise PipelineError(f"refit-origin: the data of {config} read on this Dask worker is not the data the "
                                "training run trained on (the config or its data changed while it ran)")
    setup_torch(1, cfg.seed)
    t0 = time.perf_counter()
    bundle = t.refit_bundle(params, data, position, device)
    get_run_logger().info("refitted origin at position %d in %.1fs (pid %d)", position, time.perf_counter() - t0,
                          os.getpid())
    return bundle


@flow(name="rnn-backtest-refits")
def refits_flow(config: str, overrides_json: str, params: dict, positions: list[int], digest: str,
                device: str = "cpu") -> dict:
    """{position: fitted bundle} for each refitted origin; `digest`: the training run's data digest, which each
    worker's data must match."""
    quiet_libraries()
    futures = refit_origin.map(unmapped(config), unmapped(overrides_json), unmapped(params), positions,
                               unmapped(device), unmapped(digest))
    return {p: f.result() for p, f in zip(positions, futures)}


def refit_origins(config: str, overrides: dict | None, params: dict, positions: list[int], digest: str, device: str,
                  workers: int, address: str | None) -> dict:
    """The backtest's refits fitted on Dask (a subflow on the Dask task runner); {position: bundle}. Overrides
    travel as JSON (dates as ISO strings, which the config reads back)."""
    runner = dask_runner(max(workers, 1), address)
    return refits_flow.with_options(task_runner=runner)(
        config, json.dumps(overrides or {}, sort_keys=True, default=str), params, [int(p) for p in positions],
        digest, str(device))


def ray_runner(workers: int, address: str | None):
    """Prefect's Ray task runner (prefect-ray, not installed with the project: `pip install prefect-ray`): a local
    Ray instance with `workers` CPUs, or the cluster at `address` (ray://host:10001)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        from rnn_pipeline.errors import ConfigError

        raise ConfigError("--runner ray needs prefect-ray, which the project does not install (Dask is its engine): "
                          "pip install prefect-ray") from None
    return RayTaskRunner(address=address) if address else RayTaskRunner(
        init_kwargs={"num_cpus": workers, "include_dashboard": False})


def run(configs: list[str], overrides: dict | None = None, runner: str = "dask", workers: int = 2,
        address: str | None = None) -> list[dict]:
    """`configs` trained through the chosen task runner: 'dask' (a local cluster of `workers` processes, or the
    scheduler at `address`), 'ray' (prefect-ray, when installed: a local Ray of `workers` CPUs, or the cluster at
    `address`) or 'sequential' (one after another in this process, for comparison)."""
    if runner == "sequential":
        from prefect.task_runners import ThreadPoolTaskRunner

        return train_many_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(configs, overrides)
    if runner == "ray":
        return train_many_flow.with_options(task_runner=ray_runner(workers, address))(configs, overrides)
    return train_many_flow.with_options(task_runner=dask_runner(workers, address))(configs, overrides)
