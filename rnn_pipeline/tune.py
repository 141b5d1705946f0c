"""The Optuna study around train.fit: seeded multivariate TPE over a conditional space (start-up trials scaled to
the budget, the configured model enqueued first), a pruner fed the validation loss every epoch, progress while a
trial runs, resumable storage, one nested MLflow run per trial. A trial that raises or goes NaN fails alone; the
study goes on."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import mlflow
import optuna
from mlflow.entities import Metric
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from rnn_pipeline import faults, tasks
from rnn_pipeline.config import FloatRange, IntRange, PipelineConfig, SearchSpace
from rnn_pipeline.forecasting.ensemble import ensemble_of
from rnn_pipeline.train import FitResult, fit

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# what counts against tuning.n_trials when a process decides whether to start another trial: the finished ones and
# the ones other processes are running (one that then fails is run again, by the training run if nobody else does)
CLAIMED = FINISHED + (TrialState.RUNNING,)


def search_space(cfg: PipelineConfig, data=None) -> SearchSpace:
    """The config's space, or the task's default where it gives none (forecasting: forecasting.tuning)."""
    return tasks.for_config(cfg).search_space(data)


def _active(name: str, params: dict) -> bool:
    """Conditional knobs: dropout acts between stacked layers (and in the segment model's head), the segment length
    in the segment model, the affine in revin, the channel embedding in independent mode."""
    if name == "dropout":
        return params.get("layers", 1) > 1 or params.get("architecture") == "segment"
    if name == "segment":
        return params.get("architecture") == "segment"
    if name == "affine":
        return params.get("norm") == "revin"
    return True


def suggest(trial: optuna.Trial, cfg: PipelineConfig, space: SearchSpace | None = None) -> dict:
    """Hyperparameters for one trial: the search space where given, the config's defaults elsewhere. Knobs that do
    nothing under the other choices (dropout with one direct layer, say) are not sampled."""
    space = space if space is not None else cfg.tuning.space
    params = default_params(cfg)
    for name in params:  # default_params orders the knobs so that conditions come first
        dim = getattr(space, name, None)
        if dim is None or not _active(name, params):
            continue
        if isinstance(dim, list):
            params[name] = trial.suggest_categorical(name, dim)
        elif isinstance(dim, IntRange):
            params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
        elif isinstance(dim, FloatRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return params


def _inside(dim, value) -> bool:
    if isinstance(dim, list):
        return value in dim
    return dim.low <= value <= dim.high


def enqueue_configured(study: optuna.Study, cfg: PipelineConfig, space: SearchSpace) -> None:
    """A new study's first trial is the configured model (where its values lie in the space): a search never ends
    below what the config alone would have trained. The task may add more (forecasting's default space: the
    published recipe at the configured window)."""
    params = default_params(cfg)
    for point in [params, *tasks.for_config(cfg).start_points(params, space)]:
        fixed = {k: v for k, v in point.items()
                 if getattr(space, k, None) is not None and _active(k, point) and _inside(getattr(space, k), v)}
        if fixed:
            study.enqueue_trial(fixed, skip_if_exists=True)


def default_params(cfg: PipelineConfig) -> dict:
    """Every tunable knob at its configured value: the task's own (forecasting's architecture, normalisation and
    channel mode come first, since other knobs depend on them; its window and loss; classification's reader knobs)
    around the shared ones."""
    m = cfg.model
    first, rest = tasks.for_config(cfg).default_params()
    return {**first, "cell": m.cell, "hidden": m.hidden, "layers": m.layers, "dropout": m.dropout,
            "lr": cfg.training.lr, "batch_size": cfg.training.batch_size, "optimizer": cfg.training.optimizer, **rest}


def fit_model(params: dict, data, cfg: PipelineConfig, *, max_epochs: int, patience: int, device, on_epoch=None,
              log_every: int = 0, max_seconds: float | None = None, seed: int | None = None):
    """Train one model with `params` on `data`'s training set, early-stopped on its validation set (train.fit);
    `seed` defaults to the config's."""
    t = cfg.training
    task = tasks.for_config(cfg)
    return fit(task.spec(params, data), *task.train_sets(params, data), lr=params["lr"],
               batch_size=int(params["batch_size"]), optimizer=params["optimizer"],
               weight_decay=t.weight_decay, max_epochs=max_epochs, patience=patience, lr_patience=t.lr_patience,
               lr_factor=t.lr_factor, clip_grad_norm=t.clip_grad_norm, loss_steps=t.loss_steps, burn_in=t.burn_in,
               seed=cfg.seed if seed is None else seed, device=device, on_epoch=on_epoch, log_every=log_every,
               max_seconds=max_seconds)


def ensemble_trials(cfg: PipelineConfig) -> int:
    """How many trials' parameters the final model may mix: training.ensemble_trials, or the task's default."""
    n = cfg.training.ensemble_trials
    return n if n is not None else tasks.for_config(cfg).ensemble_trials


def top_params(study: optuna.Study | None, cfg: PipelineConfig, n: int) -> list[dict]:
    """The final model's candidates: the parameters of up to `n` of the study's complete trials, distinct, each over
    the config's defaults, the best first (the defaults alone when the study has no complete trial).

    Diversity first: after the best, the best trial of each model family not yet chosen (the task's
    `family_keys`; forecasting: channel mode, normalisation, highway), then the next best. A mix gains from members
    that err differently: the three best trials are often one family at three widths, while the best of another
    family, a little behind on validation, is the one whose errors cancel theirs."""
    trials = [] if study is None else [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                                       if t.value is not None and math.isfinite(t.value)]
    ranked: list[dict] = []
    for tr in sorted(trials, key=lambda t: (t.value, t.number)):
        params = {**default_params(cfg), **tr.params}
        if params not in ranked:
            ranked.append(params)
    keys = tasks.for_config(cfg).family_keys

    def family(p: dict) -> tuple:
        return tuple(p.get(k) for k in keys)

    out = ranked[:1]
    for p in ranked[1:]:  # the best of each new family, in order of value
        if len(out) < n and family(p) not in {family(q) for q in out}:
            out.append(p)
    for p in ranked[1:]:  # then the next best
        if len(out) < n and p not in out:
            out.append(p)
    out.sort(key=ranked.index)
    return out or [default_params(cfg)]


@dataclass
class FinalFit(FitResult):
    """The final model and how it was made: `members` lists each candidate's parameters with its weight in the mix
    (0: tried, not chosen) and its own validation loss (the mean of its seed fits)."""

    members: list[dict] = field(default_factory=list)


def fit_final(candidates: dict | list[dict], data, cfg: PipelineConfig, *, device, log_every: int = 0) -> FinalFit:
    """The final model. Each candidate (the best trial's parameters first; see top_params) is fitted
    `training.ensemble` times (seeds seed, seed+1, ...; each early-stopped on validation, with the final fit's epochs
    and time limit) and averaged when there are several; with several candidates, the task mixes them, weighted by
    greedy forward selection on validation (the best alone when no mix beats it). The result's history is the first
    fit's; its best_val is the final model's validation loss; its best_epoch the latest of the fits' (0 only when
    every fit kept its linear start); its epochs and seconds are the sums."""
    t = cfg.training
    candidates = [candidates] if isinstance(candidates, dict) else list(candidates)
    task = tasks.for_config(cfg)
    fits, models, vals, kept = [], [], [], []
    for c, params in enumerate(candidates):
        own = []
        try:
            for i in range(t.ensemble):
                if t.ensemble > 1 or len(candidates) > 1:
                    log.info("final fit %d of %d (candidate %d of %d, seed %d)", c * t.ensemble + i + 1,
                             len(candidates) * t.ensemble, c + 1, len(candidates), cfg.seed + i)
                own.append(fit_model(params, data, cfg, max_epochs=t.max_epochs, patience=t.patience, device=device,
                                     log_every=log_every, max_seconds=t.max_seconds, seed=cfg.seed + i))
        except Exception as e:  # the best trial's refit must succeed; a runner-up that fails (diverges) is left out
            if c == 0:
                raise
            log.warning("candidate %d left out of the final model: its refit failed (%s: %s)", c + 1,
                        type(e).__name__, e)
            continue
        kept.append(params)
        fits += own
        models.append(ensemble_of([f.model for f in own]))
        vals.append(own[0].best_val if len(own) == 1 else task.train_sets(params, data)[1].eval_loss(models[-1]))
    if len(models) == 1:
        model, weights, best_val = models[0], [1.0], vals[0]
    else:
        model, weights, best_val = task.combine(models, data)
    if len(fits) > 1:
        log.info("final model: val %.5f; candidates' val %s, weights %s", best_val,
                 ", ".join(f"{v:.5f}" for v in vals), ", ".join(f"{w:.2f}" for w in weights))
    members = [{"params": p, "weight": w, "val_loss": v} for p, w, v in zip(kept, weights, vals)]
    return FinalFit(model, best_val, max(f.best_epoch for f in fits), sum(f.epochs for f in fits), fits[0].history,
                    sum(f.seconds for f in fits), members)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min(10, max_epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, min(5, max_epochs // 4)), max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def n_startup_trials(cfg: PipelineConfig) -> int:
    """Random trials before TPE models the space: TPE's default of 10 would make a study of 10 trials or fewer pure
    random search (the same draws for every dataset under a fixed seed)."""
    if cfg.tuning.n_startup_trials is not None:
        return cfg.tuning.n_startup_trials
    return int(min(10, max(2, cfg.tuning.n_trials // 4)))


def make_sampler(cfg: PipelineConfig, seed: int, shared: bool = False) -> optuna.samplers.TPESampler:
    """Multivariate TPE with grouped (conditional) parameters: dropout exists only where it acts, and so on. `shared`
    (tuning workers): the constant liar, so that processes do not propose what another is already trying."""
    with warnings.catch_warnings():  # multivariate and group are flagged experimental; both have been stable for years
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials(cfg), multivariate=True,
                                          group=True, constant_liar=shared)


HEARTBEAT_SECONDS = 30  # a running trial's heartbeat in the study's storage; stale after GRACE_SECONDS without one
GRACE_SECONDS = 120


def open_study(storage_url: str, study_name: str, cfg: PipelineConfig, exclusive: bool = True) -> optuna.Study:
    """Create the study, or load it to resume. Running trials send heartbeats: one whose heartbeat stopped (its
    process died) is marked FAIL by Optuna, so that processes can share a study without failing each other's trials.
    With `exclusive` (the caller holds the model's training lock, so no other process can be running a trial of
    this study), trials left RUNNING are marked FAIL at once instead of after the grace period."""
    with warnings.catch_warnings():  # heartbeats are flagged experimental; they have been stable since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # a trial failed for its stopped heartbeat is tried once more with the same parameters, by whichever process
        # shares the study next
        storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=HEARTBEAT_SECONDS,
                                             grace_period=GRACE_SECONDS,
                                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", load_if_exists=True,
                                pruner=make_pruner(cfg.tuning.pruner, cfg.tuning.max_epochs))
    # A fresh sampler with the plain seed would replay the first draws on resume (duplicate trials); offsetting
    # the seed by the trials already stored keeps a resumed study reproducible and new.
    study.sampler = make_sampler(cfg, cfg.seed + len(study.get_trials(deepcopy=False)))
    fail_stale(study)
    for tr in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if exclusive else []:
        storage.set_trial_state_values(tr._trial_id, TrialState.FAIL)
        log.warning("trial %d was left running by an interrupted run: marked failed", tr.number)
    return study


def fail_stale(study: optuna.Study, trial=None) -> None:
    """Fail the trials whose heartbeat stopped (Optuna does that only before it starts a trial): a dead worker's
    trial then holds no place under the cap (and is queued once more, by the study's stale-trial callback). Also a
    study callback, placed before MaxTrialsCallback(n_trials, states=CLAIMED)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def claimed_trials(study: optuna.Study) -> list:
    """The trials that count against n_trials when a process decides whether to start another (CLAIMED), stale
    ones failed first."""
    fail_stale(study)
    return study.get_trials(deepcopy=False, states=CLAIMED)


@dataclass
class TuneResult:
    study: optuna.Study
    best_params: dict
    n_complete: int
    n_pruned: int
    n_failed: int
    resumed_trials: int
    seconds: float
    trial_seconds: float  # training time of the trials run by this call (resumed ones excluded)


def prepare_study(data, cfg: PipelineConfig, storage_url: str, study_name: str) -> optuna.Study:
    """The study opened by the run that owns it (trials left running by an interrupted run marked failed), with the
    configured model enqueued when it is new: what tuning workers then share."""
    study = open_study(storage_url, study_name, cfg)
    if not study.get_trials(deepcopy=False) and cfg.tuning.n_trials:
        enqueue_configured(study, cfg, search_space(cfg, data))
    return study


def tune(data, cfg: PipelineConfig, storage_url: str, study_name: str, device,
         experiment_id: str | None = None, parent_run_id: str | None = None, worker: int = 0,
         spent_seconds: float = 0.0) -> TuneResult:
    """Run trials until the study holds `tuning.n_trials` finished ones, or those and the trials other processes
    are running make n_trials (or the time budget, tuning.timeout_seconds less `spent_seconds` already spent on this
    study by its workers, runs out). A `worker` (its number, from 1) shares the study with
    other processes (tuning.workers): it leaves their running trials alone, the owner prepared the study, and its
    sampler is seeded apart from theirs (workers start together: the same seed would propose the same trials) with
    the constant liar. Counting the others' running trials (Optuna's MaxTrialsCallback over finished and running
    ones, stale ones failed first) keeps a worker from starting a trial past the cap while the others finish
    theirs, which left one worker training a trial too many while the other idled (two workers finishing at the
    same moment can still both start one). A running trial that then fails (its worker died) leaves the study
    short, and whoever resumes it (the training run, after its workers) runs what is missing."""
    t0 = time.perf_counter()
    if worker:
        study = open_study(storage_url, study_name, cfg, exclusive=False)
        study.sampler = make_sampler(cfg, cfg.seed + 1000 * worker + len(study.get_trials(deepcopy=False)),
                                     shared=True)
    else:
        study = prepare_study(data, cfg, storage_url, study_name)
    space = search_space(cfg, data)
    claimed = claimed_trials(study)
    done = sum(t.state in FINISHED for t in claimed)
    remaining = max(cfg.tuning.n_trials - len(claimed), 0)
    if done:
        log.info("resuming study '%s': %d finished trials kept, %d to run", study_name, done, remaining)
    if remaining:
        log.info("tuning %d trials over %s", remaining, {k: v for k, v in space.model_dump(mode="json").items()
                                                          if v is not None})
    client = mlflow.MlflowClient() if parent_run_id else None
    pruning = not isinstance(study.pruner, optuna.pruners.NopPruner)  # tuning.pruner none: nothing reads the reports
    spent = [0.0]
    every = cfg.tuning.progress_seconds

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())  # which process runs it (tuning workers share the study)
        if worker:
            trial.set_user_attr("worker", worker)
        params = suggest(trial, cfg, space)
        if trial.number >= 1:
            faults.point("tuning")  # crash tests: killed with this trial running and an earlier one finished
        t_trial = time.perf_counter()
        curve: list[tuple[int, float]] = []
        last_note = [t_trial]

        def on_epoch(epoch: int, val_loss: float) -> None:
            curve.append((epoch, val_loss))
            now = time.perf_counter()
            if epoch == 1 or now - last_note[0] >= every:  # progress while a trial runs, not only when it ends
                last_note[0] = now
                log.info("trial %d epoch %d/%d  val %.5f  best %.5f  (%.0fs)", trial.number, epoch,
                         cfg.tuning.max_epochs, val_loss, min(v for _, v in curve), now - t_trial)
            if pruning:  # each report is a write to the study's storage (80 cost 0.8 s on PostgreSQL here)
                trial.report(val_loss, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {val_loss:.5f})")

        state, value, error = "complete", None, None
        try:
            result = fit_model(params, data, cfg, max_epochs=cfg.tuning.max_epochs, patience=cfg.tuning.patience,
                                device=device, on_epoch=on_epoch, max_seconds=cfg.tuning.trial_seconds)
            value = result.best_val
            return value
        except optuna.TrialPruned:
            state, value = "pruned", curve[-1][1] if curve else None
            raise
        except Exception as e:  # the trial fails alone; optimize(catch=...) keeps the study going
            state, error = "failed", f"{type(e).__name__}: {e}"
            raise
        except BaseException:  # Ctrl-C: Optuna marks the trial failed; say so in MLflow too
            state, error = "failed", "interrupted"
            raise
        finally:
            secs = time.perf_counter() - t_trial
            trial.set_user_attr("seconds", secs)
            spent[0] += secs
            log.info("trial %d %-8s val=%s  %s  (%.1fs)", trial.number, state,
                     f"{value:.5f}" if value is not None else "-", params, secs)
            if client is not None:
                _log_trial(client, experiment_id, parent_run_id, study_name, trial.number, params, curve, state,
                           value, error, secs)

    # Failed trials do not count: run rounds until the study holds n_trials finished (or running elsewhere) ones,
    # stopping when a whole round fails (a config that breaks every trial; a worker's round may be one trial, and
    # the owner then makes a failed one up) or the time budget is spent.
    budget = cfg.tuning.timeout_seconds
    before = done
    while remaining > 0:
        left = None if budget is None else budget - spent_seconds - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            log.warning("tuning time budget of %.0fs spent with %d trials still to run", budget, remaining)
            break
        study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,), gc_after_trial=False,
                       callbacks=[fail_stale, MaxTrialsCallback(cfg.tuning.n_trials, states=CLAIMED)])
        claimed = claimed_trials(study)
        finished = sum(t.state in FINISHED for t in claimed)
        if finished == before:
            break  # nothing finished in this round
        before, remaining = finished, cfg.tuning.n_trials - len(claimed)
    trials = study.get_trials(deepcopy=False)
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    best = default_params(cfg)
    if n_complete:
        best.update(study.best_trial.params)
    return TuneResult(study, best, n_complete, sum(t.state == TrialState.PRUNED for t in trials),
                      sum(t.state == TrialState.FAIL for t in trials), done, time.perf_counter() - t0, spent[0])


TRIAL_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}  # MLflow has no PRUNED status


def _log_trial(client: mlflow.MlflowClient, experiment_id, parent_run_id, study_name, number, params, curve, state,
               value, error, seconds) -> None:
    """One nested run per trial, written in one batch when the trial ends (per-epoch calls would dominate a small
    trial), with the trial's true start and end times (its duration is the training time) and its state as the
    run's status: FINISHED (complete), KILLED (pruned: the nearest MLflow has) or FAILED, also in the name and the
    `trial_state` tag. `val_loss` per epoch and `best_val_loss` are the names the parent run uses for its final fit."""
    end = int(time.time() * 1000)
    start = end - math.ceil(seconds * 1000)
    run = client.create_run(experiment_id, start_time=start,
                            run_name=f"trial-{number:03d}" + ("" if state == "complete" else f" ({state})"),
                            tags={"mlflow.parentRunId": parent_run_id, "trial_state": state,
                                  "optuna_study": study_name, "optuna_trial": str(number)})
    metrics = [Metric("val_loss", v, end, e) for e, v in curve]
    if value is not None and state == "complete":
        metrics.append(Metric("best_val_loss", value, end, 0))
    elif curve and state == "pruned":  # the best it reached before it was stopped
        metrics.append(Metric("best_val_loss", min(v for _, v in curve), end, 0))
    metrics.append(Metric("trial_seconds", seconds, end, 0))
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    if error:
        client.set_tag(run.info.run_id, "error", error[:4000])
    client.set_terminated(run.info.run_id, TRIAL_STATUS.get(state, "FAILED"), end_time=end)
