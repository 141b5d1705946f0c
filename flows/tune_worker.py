"""Tuning workers: flow runs on a Prefect work pool that join one Optuna study (tuning.workers).

The training run owns the study: it opens it (trials left running by an interrupted run failed, the configured model
enqueued), deploys the `rnn-tune-worker` flow on `tuning.work_pool` (from this checkout: the pool's process workers
run it from the same folder), starts `tuning.workers` runs of it and waits for them. Each worker reads and prepares
the same data, then runs trials until the study holds `tuning.n_trials` finished ones (Optuna's MaxTrialsCallback: the
total is capped across workers), each trial a nested MLflow run under the training run. A worker that dies loses only
its running trial (its heartbeat stops); when the workers are done, the training run resumes the study in-process,
runs what is still missing (the dead worker's trial among them) and fits the best parameters as it always does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger

from flows.deploy import config_parameter, entrypoint  # noqa: F401  (config_parameter: the training flow uses it)
from flows.runtime import quiet_libraries
from rnn_pipeline import stores as stores_mod
from rnn_pipeline import tasks, tune
from rnn_pipeline.config import load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.errors import ConfigError, PipelineError
from rnn_pipeline.tracking import mlflow_stores
from rnn_pipeline.train import pick_device, setup_torch

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME, DEPLOYMENT = "rnn-tune-worker", "tune-worker"
WAIT_SECONDS = 24 * 3600
START_SECONDS = 600  # worker runs that no worker picks up in this long are cancelled
POLL_SECONDS = 1.0  # how often the training run reads its worker runs' states (the study resumes when all ended)


@flow(name=FLOW_NAME, flow_run_name="tune-worker-{worker}")
def tune_worker(config: str, study_name: str, experiment_id: str | None = None, parent_run_id: str | None = None,
                overrides: dict | None = None, worker: int = 1) -> dict:
    """One tuning worker: the config's data prepared as the training run prepared it, then trials of the shared
    study until it holds tuning.n_trials finished ones."""
    quiet_libraries()
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    st = stores_mod.resolve(cfg.stores, os.environ)
    t = tasks.for_config(cfg)
    setup_torch(cfg.training.threads, cfg.seed + worker)
    frame, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    data = t.prepare(t.read(frame, source), source)
    with mlflow_stores(st.mlflow_uri):
        r = tune.tune(data, cfg, st.optuna_url, study_name, pick_device(cfg.training.device), experiment_id,
                      parent_run_id, worker=worker)
    logger.info("tuning worker %d: the study holds %d complete, %d pruned, %d failed trials (%.1fs of training here)",
                worker, r.n_complete, r.n_pruned, r.n_failed, r.trial_seconds)
    return {"worker": worker, "n_complete": r.n_complete, "n_pruned": r.n_pruned, "n_failed": r.n_failed,
            "trial_seconds": r.trial_seconds}


def api_url() -> str | None:
    """The Prefect API this process talks to (PREFECT_API_URL, from the environment or the active profile)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_setup(cfg, st) -> None:
    """Tuning workers need a Prefect server (the ephemeral API cannot dispatch to a work pool) and a study store
    other processes can reach (not a SQLite file)."""
    if not api_url():
        raise ConfigError(f"tuning.workers {cfg.tuning.workers} needs a Prefect server with the work pool "
                          f"'{cfg.tuning.work_pool}' (rnn-pipeline stack up, then export PREFECT_API_URL)")
    if st.optuna_url.startswith("sqlite"):
        raise ConfigError(f"tuning.workers {cfg.tuning.workers} shares the study between processes: give "
                          "stores.optuna_url a server database (postgresql://...), not SQLite")


def online_workers(client, pool: str) -> int:
    """How many workers of `pool` the Prefect server sees online (a missing pool is an error saying what to do)."""
    try:
        workers = client.read_workers_for_work_pool(pool)
    except Exception as e:  # ObjectNotFound: no such pool
        raise PipelineError(f"work pool '{pool}' not found on {api_url()} ({type(e).__name__}): start the stack "
                            "(rnn-pipeline stack up) or set tuning.work_pool") from None
    return sum(1 for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE")


def deploy(pool: str) -> str:
    """The worker flow deployed on `pool`, run from this checkout; returns '<flow>/<deployment>'."""
    tune_worker.from_source(source=str(REPO), entrypoint=entrypoint(tune_worker)).deploy(
        name=DEPLOYMENT, work_pool_name=pool, print_next_steps=False, ignore_warnings=True)
    return f"{FLOW_NAME}/{DEPLOYMENT}"


def run_workers(n: int, pool: str, parameters: dict, logger, timeout: float = WAIT_SECONDS,
                start_timeout: float = START_SECONDS) -> list[dict]:
    """Start `n` worker runs on `pool` and wait until each has ended; returns each run's name and final state. A
    worker run that failed or crashed is reported, not raised: its trial is redone by the training run. Runs that no
    worker picks up within `start_timeout` seconds, or that are still going after `timeout`, are cancelled and the
    training run fails saying so; so are all of them when the wait itself is interrupted."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        if online_workers(client, pool) == 0:
            raise PipelineError(f"no worker of pool '{pool}' is online on {api_url()}: start some (rnn-pipeline stack "
                                "up, or prefect worker start --pool " + pool + ")")
        name = deploy(pool)
        runs = [run_deployment(name, parameters={**parameters, "worker": i + 1}, timeout=0) for i in range(n)]
        logger.info("started %d tuning worker run(s) on pool '%s': %s", n, pool, ", ".join(r.name for r in runs))
        t0, out, started = time.monotonic(), {}, set()
        try:
            while len(out) < len(runs):
                waited = time.monotonic() - t0
                if waited > timeout:
                    raise PipelineError(f"tuning workers still running after {timeout:.0f}s: "
                                        f"{', '.join(r.name for r in runs if r.id not in out)}")
                for r in runs:
                    if r.id in out:
                        continue
                    try:
                        state = client.read_flow_run(r.id).state
                    except Exception as e:  # a transient API error: asked again on the next round
                        logger.debug("reading %s: %s", r.name, e)
                        continue
                    if state is not None and not (state.is_scheduled() or state.is_pending()):
                        started.add(r.id)
                    if state is not None and state.is_final():
                        out[r.id] = {"name": r.name, "state": state.name}
                        (logger.info if state.is_completed() else logger.warning)(
                            "tuning worker run %s ended %s", r.name, state.name)
                if len(started) < len(runs) and waited > start_timeout:
                    raise PipelineError(f"no worker of pool '{pool}' picked up "
                                        f"{', '.join(r.name for r in runs if r.id not in started)} within "
                                        f"{start_timeout:.0f}s (rnn-pipeline stack status)")
                time.sleep(POLL_SECONDS)
        except BaseException:
            for r in runs:
                if r.id not in out:
                    try:
                        client.set_flow_run_state(r.id, Cancelled(message="the training run stopped waiting"),
                                                  force=True)
                    except Exception as e:
                        logger.warning("could not cancel %s: %s", r.name, e)
            raise
    return [out[r.id] for r in runs]
