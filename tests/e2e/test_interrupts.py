"""Interrupting `rnn-pipeline train` as a user would: kill -9 mid-tuning resumes the study with its finished trials
and marks the killed run failed; Ctrl-C keeps the finished trials and exits 130. (Its own file so that pytest-xdist
runs it beside test_cli.py.)"""

import json
import os
import signal
import subprocess
import time

import optuna
import pytest
from conftest import write_config
from test_cli import CLI, run

pytestmark = pytest.mark.slow


@pytest.fixture
def env(server_env):
    return server_env


def wait_for_complete_trials(url: str, proc: subprocess.Popen, n: int, timeout: float = 240) -> list:
    """Poll the Optuna storage until the running CLI has finished `n` trials (or stopped, or time ran out)."""
    done, deadline = [], time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(done) < n:
        time.sleep(0.5)
        try:
            for name in optuna.get_all_study_names(url):
                done = [t for t in optuna.load_study(study_name=name, storage=url).get_trials()
                        if t.state == optuna.trial.TrialState.COMPLETE]
        except Exception:  # the storage is created by the CLI a moment after it starts
            continue
    return done


def test_killing_the_flow_during_tuning_resumes_the_study(tmp_path, env):
    cfg = write_config(tmp_path, name="resume", n_trials=4, trial_epochs=25, epochs=2,
                       extra="tuning:\n  n_trials: 4\n  max_epochs: 25\n  pruner: none\n"
                             "  space: {hidden: [24, 32, 40, 48], lr: [0.001, 0.002, 0.004]}\n")
    # the extra block overrides the tuning section written by write_config (YAML: the last key wins)
    url = f"sqlite:///{tmp_path / 'state' / 'optuna.db'}"
    proc = subprocess.Popen(CLI + ["train", "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    done = wait_for_complete_trials(url, proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(done) < 4, f"could not catch the run mid-tuning ({len(done)} trials finished)"
    kept = {t.number: t.params for t in done}

    out = run(["train", "--config", str(cfg)], tmp_path, timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert summary["resumed_trials"] >= len(kept) and summary["n_trials"] == 4
    study = optuna.load_study(study_name=summary["study"], storage=url)
    complete = {t.number: t.params for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(complete[n] == p for n, p in kept.items())
    # the killed run's lock (its process is gone) was taken over at once, and its MLflow runs, left RUNNING, were
    # marked failed by the next run, saying why
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    runs = client.search_runs([summary["experiment_id"]], f"tags.model_name = '{summary['model_name']}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert [r for r in runs if r.info.status == "FAILED"][0].data.tags["failure_reason"].startswith("interrupted")
    assert not client.search_runs([summary["experiment_id"]], "attributes.status = 'RUNNING'")


def test_ctrl_c_during_tuning_keeps_finished_trials_and_exits_130(tmp_path, env):
    cfg = write_config(tmp_path, name="sigint", extra="tuning:\n  n_trials: 30\n  max_epochs: 25\n  pruner: none\n"
                                                      "  space: {hidden: [24, 32, 40]}\n")
    url = f"sqlite:///{tmp_path / 'state' / 'optuna.db'}"
    # a runner started as a background job passes SIGINT down as ignored; a user's terminal does not
    proc = subprocess.Popen(CLI + ["train", "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_complete_trials(url, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "finished trials are kept" in err and "run the same command to resume" in err
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 1
    assert not (tmp_path / "state" / "last_run.json").exists()  # nothing claimed as finished
