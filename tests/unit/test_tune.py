"""The tuner: seeded and reproducible, trials fail alone, a killed study resumes with its finished trials."""

import math
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import optuna
import pytest

from rnn_pipeline import tune
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.data import datasets
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.forecasting import tuning
from rnn_pipeline.forecasting.windows import prepare_series


def small_cfg(**tuning):
    return PipelineConfig.model_validate({
        "name": "t", "seed": 11, "data": {"builtin": "seed_sine"},
        "tuning": {"n_trials": 4, "max_epochs": 2, "pruner": "none",
                   "space": {"cell": ["gru", "lstm"], "hidden": [4, 8], "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
                   **tuning}})


@pytest.fixture(scope="module")
def data():
    time_, values = validate_series(datasets.seed_sine(), "s", "time", ["value"], [], "error")
    return prepare_series(time_, values, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                          val=0.15, test=0.2)


def test_seeded_study_is_reproducible(tmp_path, data):
    cfg = small_cfg()
    a = tune.tune(data, cfg, f"sqlite:///{tmp_path}/a.db", "s", "cpu")
    b = tune.tune(data, cfg, f"sqlite:///{tmp_path}/b.db", "s", "cpu")
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]
    assert [t.value for t in a.study.trials] == [t.value for t in b.study.trials]
    assert a.n_complete == 4 and a.best_params["cell"] in ("gru", "lstm")


def test_a_failing_trial_fails_alone(tmp_path, data, monkeypatch):
    real = tune.fit_model
    calls = {"n": 0}

    def flaky(params, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in trial 2")
        return real(params, *a, **kw)

    monkeypatch.setattr(tune, "fit_model", flaky)
    res = tune.tune(data, small_cfg(n_trials=3), f"sqlite:///{tmp_path}/f.db", "s", "cpu")
    states = [t.state for t in res.study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert res.n_complete == 3 and res.n_failed == 1  # the study went on until 3 finished


def test_pruner_prunes_bad_trials(tmp_path, data):
    cfg = small_cfg(n_trials=12, max_epochs=8, pruner="median",
                    space={"lr": {"low": 1e-5, "high": 3e-2, "log": True}, "hidden": [4]})
    res = tune.tune(data, cfg, f"sqlite:///{tmp_path}/p.db", "s", "cpu")
    assert res.n_pruned >= 1 and res.n_complete + res.n_pruned == 12


RESUME_CONFIG = {"name": "r", "seed": 5, "data": {"builtin": "seed_sine"},
                 "tuning": {"n_trials": 6, "max_epochs": 3, "pruner": "none",
                            "space": {"hidden": [4, 8, 12], "lr": [0.001, 0.003, 0.01]}}}
RESUME_SCRIPT = textwrap.dedent(f"""
    import sys, time
    from types import SimpleNamespace
    from rnn_pipeline import tune
    from rnn_pipeline.data import datasets
    from rnn_pipeline.config import PipelineConfig
    from rnn_pipeline.forecasting.windows import prepare_series
    from rnn_pipeline.data.validation import validate_series
    cfg = PipelineConfig.model_validate({RESUME_CONFIG!r})
    def slow(params, *a, **kw):  # what is tested is the study's storage, not training: a trial takes a fixed time
        time.sleep(float(sys.argv[2]))
        return SimpleNamespace(best_val=params["hidden"] * params["lr"])
    tune.fit_model = slow
    t, v = validate_series(datasets.seed_sine(), "s", "time", ["value"], [], "error")
    d = prepare_series(t, v, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard", val=0.15, test=0.2)
    tune.tune(d, cfg, sys.argv[1], "resume-me", "cpu")
""")


def test_killed_study_resumes_with_finished_trials_kept(tmp_path, data, monkeypatch):
    """A process tuning the study is killed (-9) after two trials; the study is then resumed here (the same data as
    the script's), as the next run's process would."""
    script = tmp_path / "run_tune.py"
    script.write_text(RESUME_SCRIPT)
    url = f"sqlite:///{tmp_path}/resume.db"
    proc = subprocess.Popen([sys.executable, str(script), url, "1.0"], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            st = optuna.load_study(study_name="resume-me", storage=url)
            done = [t for t in st.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
        except KeyError:
            continue
        if len(done) >= 2:
            break
    proc.send_signal(signal.SIGKILL)  # as hard as a crash: no cleanup runs
    proc.wait()
    assert len(done) >= 2, "the first run never finished two trials"
    before = {t.number: (t.params, t.value) for t in done}

    monkeypatch.setattr(tune, "fit_model", lambda params, *a, **kw: SimpleNamespace(
        best_val=params["hidden"] * params["lr"]))
    res = tune.tune(data, PipelineConfig.model_validate(RESUME_CONFIG), url, "resume-me", "cpu")
    st = optuna.load_study(study_name="resume-me", storage=url)
    complete = {t.number: (t.params, t.value) for t in st.get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(complete) == 6 and res.n_complete == 6
    for number, pv in before.items():
        assert complete[number] == pv  # finished trials kept as they were
    assert res.resumed_trials >= len(before)
    # the trial that was running when killed is marked failed, not left running forever
    assert not [t for t in st.get_trials() if t.state == optuna.trial.TrialState.RUNNING]


def fake_training(monkeypatch):
    """Trials that score their parameters instantly: for tests of the study (what it enqueues, draws and keeps),
    not of training."""
    monkeypatch.setattr(tune, "fit_model", lambda params, *a, **kw: SimpleNamespace(
        best_val=float(params["hidden"]) * params["lr"] + 0.01 * len(str(sorted(params.items())))))


def test_a_resumed_study_draws_new_parameters(tmp_path, data, monkeypatch):
    fake_training(monkeypatch)
    url = f"sqlite:///{tmp_path}/r.db"
    first = tune.tune(data, small_cfg(n_trials=3), url, "s", "cpu")
    resumed = tune.tune(data, small_cfg(n_trials=6), url, "s", "cpu")  # same study: n_trials is not in its name
    params = [tuple(sorted(t.params.items())) for t in resumed.study.trials]
    assert resumed.resumed_trials == 3 and len(params) == 6
    assert params[3:] != params[:3]  # not a replay of the first draws
    assert first.study.study_name == resumed.study.study_name


def test_study_name_ignores_settings_that_do_not_shape_a_trial():
    a = small_cfg(n_trials=3)
    b = small_cfg(n_trials=30, timeout_seconds=60)
    c = small_cfg(max_epochs=5)
    assert a.digest() == b.digest() != c.digest()


# ---- the search itself: start-up trials scaled to the budget, a conditional space, a default space -------------
def test_start_up_trials_scale_with_the_budget(tmp_path):
    assert [tune.n_startup_trials(small_cfg(n_trials=n)) for n in (1, 8, 20, 100)] == [2, 2, 5, 10]
    assert tune.n_startup_trials(small_cfg(n_trials=8, n_startup_trials=4)) == 4
    study = tune.open_study(f"sqlite:///{tmp_path}/s.db", "s", small_cfg(n_trials=8))
    sampler = study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 2 and sampler._multivariate and sampler._group


def test_a_small_study_is_not_random_search_with_the_same_draws_everywhere(tmp_path, data):
    """With 8 trials, TPE's default 10 start-up trials would draw the same 8 configurations whatever the results.
    Now 2 random draws come first, and then the draws follow each study's own results: two studies whose results
    rank the learning rate oppositely move to opposite ends of its range."""
    cfg = small_cfg(n_trials=8, space={"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "hidden": [4, 8, 16]})
    draws = {}
    for sign in (1, -1):
        study = optuna.create_study(sampler=tune.make_sampler(cfg, cfg.seed))
        for _ in range(8):
            trial = study.ask()
            p = tune.suggest(trial, cfg)
            study.tell(trial, sign * math.log(p["lr"]))
        draws[sign] = [t.params["lr"] for t in study.trials]
    assert draws[1][:2] == draws[-1][:2]  # the seeded random start-up draws
    assert draws[1][2:] != draws[-1][2:]
    median = {k: sorted(v[2:])[3] for k, v in draws.items()}
    assert median[1] < median[-1] / 3  # low lr where low lr scored best, high where high did


def test_a_new_study_tries_the_configured_model_first(tmp_path, data, monkeypatch):
    fake_training(monkeypatch)
    cfg = small_cfg(n_trials=3, space={"hidden": [4, 32], "lr": {"low": 1e-3, "high": 1e-2, "log": True}})
    res = tune.tune(data, cfg, f"sqlite:///{tmp_path}/e.db", "s", "cpu")
    assert res.study.trials[0].params == {"hidden": cfg.model.hidden, "lr": cfg.training.lr}


def test_conditional_knobs_are_sampled_only_where_they_act(tmp_path):
    cfg = PipelineConfig.model_validate({
        "name": "c", "seed": 3, "data": {"builtin": "seed_sine"},
        "tuning": {"n_trials": 12, "space": {"architecture": ["segment", "direct"], "norm": ["revin", "none"],
                                             "layers": [1, 2], "dropout": {"low": 0.0, "high": 0.5},
                                             "segment": [5, 10], "affine": [True, False]}}})
    study = optuna.create_study(sampler=tune.make_sampler(cfg, 3))
    for _ in range(12):
        trial = study.ask()
        p = tune.suggest(trial, cfg)
        study.tell(trial, 1.0)
        sampled = set(trial.params)
        assert ("dropout" in sampled) == (p["layers"] > 1 or p["architecture"] == "segment")
        assert ("segment" in sampled) == (p["architecture"] == "segment")
        assert ("affine" in sampled) == (p["norm"] == "revin")


def test_a_forecasting_config_without_a_space_searches_the_default_space(tmp_path, data, monkeypatch):
    fake_training(monkeypatch)
    cfg = PipelineConfig.model_validate({"name": "d", "data": {"builtin": "seed_sine"},
                                         "features": {"window": 50}, "tuning": {"n_trials": 3, "max_epochs": 2}})
    space = tune.search_space(cfg, data)
    assert space.architecture == ["segment", "direct"] and space.norm == ["revin", "last", "none"]
    assert space.window == [25, 50, 100]  # L/2, L, 2L
    assert not tuning.fits(data, 900)  # a window that leaves no training windows is never offered
    long = cfg.model_copy(update={"features": cfg.features.model_copy(update={"window": 400})})
    assert tune.search_space(long, data).window == [200, 400]
    assert space.channels is None  # one target: nothing to mix or separate
    assert space.hidden and space.lr and space.loss
    res = tune.tune(data, cfg, f"sqlite:///{tmp_path}/d.db", "d", "cpu")
    first, second = res.study.trials[0].params, res.study.trials[1].params
    assert first["architecture"] == "segment" and first["norm"] == "revin" and first["window"] == 50
    assert {k: second[k] for k in tuning.RECIPE if k in second} == {**{k: v for k, v in tuning.RECIPE.items()
                                                                      if k in second}, "segment": 24}
    assert second["hidden"] == 256 and second["dropout"] == 0.5 and second["window"] == 50  # the recipe
    assert second["highway"] is False and space.highway == [False, True]
    third = res.study.trials[2].params  # the recipe started from the NLinear-style linear forecast
    assert third["highway"] is True and third["norm"] == "last" and third["hidden"] == 256
    several = tuning.start_points(tune.default_params(cfg), 50, n_targets=7)
    assert [(p["norm"], p["channels"], p["highway"]) for p in several] == [
        ("revin", "independent", False), ("last", "independent", True), ("none", "mixed", True)]
    longer = tuning.start_points(tune.default_params(cfg), 50, n_targets=1, longest=100)  # then NLinear at 2L
    assert [(p["norm"], p["highway"], p["window"]) for p in longer] == [("revin", False, 50), ("last", True, 50),
                                                                         ("last", True, 100)]
    assert tuning.start_points(tune.default_params(cfg), 50, n_targets=1, longest=50) == longer[:2]
    assert res.n_complete + res.n_pruned == 3
    given = PipelineConfig.model_validate({"name": "g", "data": {"builtin": "seed_sine"},
                                           "tuning": {"space": {"hidden": [8]}}})
    assert tune.search_space(given, data).architecture is None  # a given space is taken as it is


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_shared_study_leaves_live_trials_alone_and_an_exclusive_one_fails_them(tmp_path):
    """Running trials send heartbeats: a process opening a study it shares (exclusive=False) leaves another process's
    running trial alone (Optuna fails it only once its heartbeat stops); the holder of the model's training lock
    (exclusive=True) knows no other process runs a trial of it, and fails a leftover one at once."""
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    cfg = PipelineConfig.model_validate({"name": "hb", "data": {"builtin": "seed_sine"}})
    study = tune.open_study(url, "hb", cfg)
    running = study.ask()  # another process's trial, still running
    study.tell(study.ask(), 1.0)
    assert study._storage._backend.get_heartbeat_interval() == tune.HEARTBEAT_SECONDS
    shared = tune.open_study(url, "hb", cfg, exclusive=False)
    assert shared.trials[running.number].state == optuna.trial.TrialState.RUNNING
    alone = tune.open_study(url, "hb", cfg, exclusive=True)
    states = [t.state for t in alone.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_starts_no_trial_beyond_the_cap_that_others_are_running(tmp_path, data):
    """A tuning worker counts the trials other workers are running against n_trials: with 2 of 4 finished and 1
    running elsewhere, it runs 1 trial, not 2 (the second kept one worker training past the cap while the other
    idled). If the trial running elsewhere then fails, the study's owner resumes it and runs the missing one."""
    url, cfg = f"sqlite:///{tmp_path / 'cap.db'}", small_cfg(n_trials=4)
    study = tune.open_study(url, "cap", cfg)
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    elsewhere = study.ask()  # another worker's trial, running
    res = tune.tune(data, cfg, url, "cap", "cpu", worker=2)
    states = [t.state for t in optuna.load_study(study_name="cap", storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and res.trial_seconds > 0
    assert states[elsewhere.number] == optuna.trial.TrialState.RUNNING and len(states) == 4
    # the other worker died: its trial is failed when the owner resumes the study, which runs the one missing
    res = tune.tune(data, cfg, url, "cap", "cpu")
    states = [t.state for t in res.study.trials]
    assert states[elsewhere.number] == optuna.trial.TrialState.FAIL
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4 and len(states) == 5


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_stops_when_another_starts_the_last_trial_while_it_trains(tmp_path, data, monkeypatch):
    """Both workers start with n_trials to go; once another worker has started the last trial of the cap during
    this worker's trial, this worker starts no further one."""
    url, cfg = f"sqlite:///{tmp_path / 'cap2.db'}", small_cfg(n_trials=4)
    study = tune.open_study(url, "cap2", cfg)
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    fit, elsewhere = tune.fit_model, []

    def fit_while_another_starts(*args, **kwargs):
        if not elsewhere:  # the other worker starts a trial while this one trains its first
            elsewhere.append(optuna.load_study(study_name="cap2", storage=url).ask().number)
        return fit(*args, **kwargs)

    monkeypatch.setattr(tune, "fit_model", fit_while_another_starts)
    tune.tune(data, cfg, url, "cap2", "cpu", worker=1)
    states = [t.state for t in optuna.load_study(study_name="cap2", storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and len(states) == 4, states
    assert states[elsewhere[0]] == optuna.trial.TrialState.RUNNING


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_stale_trial_holds_no_place_under_the_cap(tmp_path, monkeypatch):
    """A running trial whose heartbeat stopped (its worker died) is failed before the count, and queued once more."""
    monkeypatch.setattr(tune, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(tune, "GRACE_SECONDS", 1)
    cfg = PipelineConfig.model_validate({"name": "st", "data": {"builtin": "seed_sine"}})
    study = tune.open_study(f"sqlite:///{tmp_path / 'st.db'}", "st", cfg, exclusive=False)
    dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    study._storage.record_heartbeat(dead._trial_id)
    deadline = time.monotonic() + 60
    while len(tune.claimed_trials(study)) and time.monotonic() < deadline:
        time.sleep(0.2)  # stale once its heartbeat is older than the grace period
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert trials[1].params == dead.params  # queued once more with the same parameters


def test_the_owner_resumes_within_what_is_left_of_the_time_budget(tmp_path, data, caplog):
    """tuning.timeout_seconds covers the whole study: after its workers spent it, the training run's resume starts
    no trial (before, it got a fresh budget of its own); with time left, it runs what is missing."""
    url, cfg = f"sqlite:///{tmp_path / 'budget.db'}", small_cfg(n_trials=3, timeout_seconds=30)
    res = tune.tune(data, cfg, url, "b", "cpu", spent_seconds=30.5)
    assert res.n_complete + res.n_pruned == 0 and "time budget of 30s spent with 3 trials still to run" in caplog.text
    res = tune.tune(data, cfg, url, "b", "cpu", spent_seconds=1.0)
    assert res.n_complete == 3


def test_a_trial_and_the_final_fit_say_how_their_first_epoch_went(tmp_path, data, caplog):
    """Progress while training runs: each trial logs its first epoch (then one line every progress_seconds), and a
    fit with log_every logs its first epoch too (then every log_every epochs or LOG_SECONDS)."""
    import logging

    cfg = PipelineConfig.model_validate({"name": "p", "data": {"builtin": "seed_sine"}, "features": {"window": 50},
                                         "model": {"hidden": 8, "architecture": "segment", "segment": 10},
                                         "tuning": {"n_trials": 1, "max_epochs": 2, "space": {"hidden": [8]}}})
    with caplog.at_level(logging.INFO, logger="rnn_pipeline"):
        tune.tune(data, cfg, f"sqlite:///{tmp_path}/p.db", "p", "cpu")
        tune.fit_model(tune.default_params(cfg), data, cfg, max_epochs=3, patience=3, device="cpu", log_every=10)
    text = caplog.text
    assert "trial 0 epoch 1/2" in text
    assert "epoch 1/3" in text.replace("trial 0 epoch 1/2", "")


def test_the_final_fit_stops_at_training_max_seconds(data):
    """The final fit is bounded like a trial: after the epoch that passes training.max_seconds it stops, keeping its
    best epoch so far (a direct GRU-256 once ran its 200 epochs for over 20 minutes)."""
    from flows.training import fit_best

    cfg = PipelineConfig.model_validate({"name": "b", "data": {"builtin": "seed_sine"}, "features": {"window": 50},
                                         "model": {"hidden": 8, "architecture": "segment", "segment": 10},
                                         "training": {"max_epochs": 30, "patience": 30, "max_seconds": 1e-6}})
    assert PipelineConfig.model_validate({"name": "d", "data": {"builtin": "seed_sine"}}).training.max_seconds == 1800
    fitted = fit_best.fn(tune.default_params(cfg), data, cfg, "cpu")
    assert fitted.epochs == 1 and fitted.best_epoch == 1


def test_a_default_space_study_enqueues_the_nlinear_start_at_the_longest_window_last(data):
    import optuna

    from rnn_pipeline.forecasting import tuning

    cfg = PipelineConfig.model_validate({"name": "d", "data": {"builtin": "seed_sine"}, "features": {"window": 50}})
    space = tune.search_space(cfg, data)
    study = optuna.create_study()
    tune.enqueue_configured(study, cfg, space)
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False)]
    assert max(space.window) == 100 and len(waiting) == 4
    assert (waiting[-1]["norm"], waiting[-1]["highway"], waiting[-1]["window"]) == ("last", True, 100)
    assert [w["window"] for w in waiting[:3]] == [50, 50, 50]
    assert {k: waiting[-1][k] for k in ("architecture", "hidden")} == {k: tuning.RECIPE[k] for k in
                                                                          ("architecture", "hidden")}
