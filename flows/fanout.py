"""Independent training runs fanned out on Dask (`rnn-pipeline train-many`): one `train-one` task per config, mapped
over Prefect's DaskTaskRunner (prefect-dask). On one machine it starts a local cluster of `workers` processes (one
thread each: a small RNN trains fastest on one); given `address` (tcp://host:8786) it uses that scheduler and its
workers instead. Each task runs the ordinary training flow (tune, fit, evaluate, register, gate) for its config, as a
subflow; a config that fails fails its own task only, and the others go on.
"""

from __future__ import annotations

import os

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


def run(configs: list[str], overrides: dict | None = None, runner: str = "dask", workers: int = 2,
        address: str | None = None) -> list[dict]:
    """`configs` trained through the chosen task runner: 'dask' (a local cluster of `workers` processes, or the
    scheduler at `address`) or 'sequential' (one after another in this process, for comparison)."""
    if runner == "sequential":
        from prefect.task_runners import ThreadPoolTaskRunner

        return train_many_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(configs, overrides)
    import dask
    from prefect_dask import DaskTaskRunner

    # a task whose worker died is not rerun elsewhere: it would train and register its model a second time
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    tr = DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None})
    return train_many_flow.with_options(task_runner=tr)(configs, overrides)
