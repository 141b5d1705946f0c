"""Tuning workers: flow runs on a Prefect work pool that join one Optuna study (tuning.workers).

The training run owns the study: as soon as it has read its data, it opens the study (trials left running by an
interrupted run failed, the configured model enqueued), deploys the `rnn-tune-worker` flow on `tuning.work_pool`
(from this checkout: the pool's process workers run it from the same folder) and starts `tuning.workers` runs of it.
Each worker starts up (imports, reads and prepares the same data) while the training run opens its MLflow run, then
waits for the training run to release it (the MLflow run's id, written on the study), then runs trials until the
finished trials and those the other workers are running make `tuning.n_trials` (Optuna's MaxTrialsCallback: the total
is capped across workers), each trial a nested MLflow run under the training run. A worker that dies loses only its
running trial (its heartbeat stops); when the workers are done, the training run resumes the study in-process, runs
what is still missing (the dead worker's trial among them) and fits the best parameters as it always does. Worker
runs still going when the training run fails are cancelled.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger

from flows.deploy import entrypoint
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
LAUNCH_ATTR = "tuning_workers"  # the study attribute that releases (or withdraws) the latest launch's workers


@flow(name=FLOW_NAME, flow_run_name="tune-worker-{worker}")
def tune_worker(config: str, study_name: str, experiment_id: str | None = None, parent_run_id: str | None = None,
                overrides: dict | None = None, worker: int = 1, launch: str | None = None) -> dict:
    """One tuning worker: the config's data prepared as the training run prepared it, then trials of the shared study
    until its finished trials and those other workers run make tuning.n_trials. Started with a `launch` id
    (before the training run had its MLflow run), it waits for the training run to release it first
    (`Launch.release`)."""
    quiet_libraries()
    logger = get_run_logger()
    cfg = load_config(config, overrides)
    st = stores_mod.resolve(cfg.stores, os.environ)
    t = tasks.for_config(cfg)
    setup_torch(cfg.training.threads, cfg.seed + worker)
    frame, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    data = t.prepare(t.read(frame, source), source)
    if launch:
        t0 = time.monotonic()
        experiment_id, parent_run_id = wait_for_release(st.optuna_url, study_name, launch)
        logger.info("tuning worker %d: released by the training run after %.1fs", worker, time.monotonic() - t0)
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


class Launch:
    """Worker runs started on a pool before the training run is ready for them: each waits, after its own start-up
    (imports, the data), until the training run names its MLflow run on the study (`release`). The training run's
    steps in between overlap the workers' start-up."""

    def __init__(self, study, pool: str, name: str, runs: list, logger):
        self.id, self.study, self.pool, self.name, self.runs, self.logger = uuid.uuid4().hex, study, pool, name, runs, \
            logger
        self.out: dict = {}

    def release(self, experiment_id: str, parent_run_id: str) -> None:
        """Tell the waiting workers which MLflow run their trials nest under: they start trials now."""
        self.study.set_user_attr(LAUNCH_ATTR, {"launch": self.id, "experiment_id": experiment_id,
                                               "parent_run_id": parent_run_id})

    def withdraw(self, why: str) -> None:
        """Tell workers still waiting to be released that they never will be: they end at once."""
        self.study.set_user_attr(LAUNCH_ATTR, {"launch": self.id, "withdrawn": why})

    def wait(self, timeout: float = WAIT_SECONDS, start_timeout: float = START_SECONDS) -> list[dict]:
        """Wait until each worker run has ended; returns each run's name and final state. A worker run that failed
        or crashed is reported, not raised: its trial is redone by the training run. Runs that no worker picks up
        within `start_timeout` seconds, or that are still going after `timeout`, make the training run fail saying
        so (and are cancelled, as all unfinished ones are when the training run fails: `cancel`)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs, out, started, t0 = self.runs, self.out, set(), time.monotonic()
        with get_client(sync_client=True) as client:
            while len(out) < len(runs):
                waited = time.monotonic() - t0
                if waited > timeout:
                    raise PipelineError(f"tuning workers still running after {timeout:.0f}s: "
                                        f"{', '.join(r.name for r in runs if r.id not in out)}")
                pending = [r.id for r in runs if r.id not in out]
                try:  # 200 to a request (the server's most; each request costs CPU the trials share)
                    states = {f.id: f.state for i in range(0, len(pending), 200) for f in client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=pending[i:i + 200])), limit=200)}
                except Exception as e:  # a transient API error: asked again on the next round
                    self.logger.debug("reading the worker runs: %s", e)
                    states = {}
                for r in runs:
                    if r.id in out or r.id not in states:
                        continue
                    state = states[r.id]
                    if state is not None and not (state.is_scheduled() or state.is_pending()):
                        started.add(r.id)
                    if state is not None and state.is_final():
                        out[r.id] = {"name": r.name, "state": state.name}
                        (self.logger.info if state.is_completed() else self.logger.warning)(
                            "tuning worker run %s ended %s", r.name, state.name)
                if len(started) < len(runs) and waited > start_timeout:
                    raise PipelineError(f"no worker of pool '{self.pool}' picked up "
                                        f"{', '.join(r.name for r in runs if r.id not in started)} within "
                                        f"{start_timeout:.0f}s (rnn-pipeline stack status)")
                time.sleep(POLL_SECONDS)
        return [out[r.id] for r in runs]

    def cancel(self, why: str, settle_seconds: float = 60.0) -> None:
        """Stop the worker runs that have not ended: workers waiting to be released are told so on the study; runs
        not picked up yet are cancelled, the others set Cancelling (their pool worker then ends the process). Waits
        up to `settle_seconds` for them to end, so that a retrain does not open the study beside dying workers."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Cancelling

        try:
            self.withdraw(why)
        except Exception as e:
            self.logger.warning("could not withdraw the tuning workers on the study: %s", e)
        left = [r for r in self.runs if r.id not in self.out]
        with get_client(sync_client=True) as client:
            for r in left:
                try:
                    state = client.read_flow_run(r.id).state
                    if state is not None and state.is_final():
                        continue
                    client.set_flow_run_state(r.id, Cancelled(message=why) if state is None or state.is_scheduled()
                                              else Cancelling(message=why), force=True)
                except Exception as e:
                    self.logger.warning("could not cancel %s: %s", r.name, e)
            deadline = time.monotonic() + settle_seconds
            while left and time.monotonic() < deadline:
                try:
                    left = [r for r in left if not (client.read_flow_run(r.id).state or Cancelled()).is_final()]
                except Exception as e:
                    self.logger.debug("reading the cancelled worker runs: %s", e)
                if left:
                    time.sleep(POLL_SECONDS)
            if left:
                self.logger.warning("tuning worker run(s) %s not ended %.0fs after being cancelled",
                                    ", ".join(r.name for r in left), settle_seconds)


def launch(study, n: int, pool: str, parameters: dict, logger) -> Launch:
    """Deploy the worker flow on `pool` and start `n` runs of it on `study` (`parameters` plus each run's number and
    the launch's id; no MLflow run yet: `Launch.release` names it)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        if online_workers(client, pool) == 0:
            raise PipelineError(f"no worker of pool '{pool}' is online on {api_url()}: start some (rnn-pipeline stack "
                                "up, or prefect worker start --pool " + pool + ")")
    name = deploy(pool)
    out = Launch(study, pool, name, [], logger)
    try:
        for i in range(n):
            out.runs.append(run_deployment(name, parameters={**parameters, "worker": i + 1, "launch": out.id},
                                           timeout=0))
    except BaseException:
        out.cancel("the training run could not start all its tuning workers")
        raise
    logger.info("started %d tuning worker run(s) on pool '%s': %s", n, pool, ", ".join(r.name for r in out.runs))
    return out


@contextmanager
def launched(study, n: int, pool: str, parameters: dict, logger):
    """`launch` as a context: worker runs that have not ended when the block is left (the training run failed, or
    was interrupted, before or while they ran) are cancelled."""
    out = launch(study, n, pool, parameters, logger)
    try:
        yield out
    finally:
        if len(out.out) < len(out.runs):
            out.cancel("the training run failed or was interrupted before its tuning workers ended")


def wait_for_release(storage_url: str, study_name: str, launch_id: str, timeout: float = START_SECONDS) -> tuple:
    """(experiment_id, parent_run_id) once the training run has released the workers of `launch_id` on the study
    (`Launch.release`); polled on one connection, every half second, for at most `timeout` seconds (a training run
    killed outright releases nothing). A withdrawn launch (the training run failed first) ends the wait at once."""
    import optuna

    storage = optuna.storages.RDBStorage(storage_url)
    t0 = time.monotonic()
    try:
        while True:
            try:
                owner = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name)).get(LAUNCH_ATTR)
            except KeyError:  # no such study (yet)
                owner = None
            if owner and owner.get("launch") == launch_id:
                if "withdrawn" in owner:
                    raise PipelineError(f"the training run withdrew its tuning workers: {owner['withdrawn']}")
                return owner["experiment_id"], owner["parent_run_id"]
            if time.monotonic() - t0 > timeout:
                raise PipelineError(f"the training run did not release its tuning workers on study '{study_name}' "
                                    f"within {timeout:.0f}s (it was stopped, or reads other data than this worker)")
            time.sleep(0.5)
    finally:
        storage.engine.dispose()
