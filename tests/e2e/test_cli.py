"""The CLI as a user runs it, end to end in subprocesses: exit codes, one-line errors, predict == in-memory, resume
after a kill or Ctrl-C. Help and argument handling are tested in-process (test_cli_args.py)."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import psutil
import pytest
from conftest import write_config

from flows import cli as cli_module
from rnn_pipeline.data import datasets
from rnn_pipeline.forecasting.windows import lag_matrix

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "flows.cli"]


def run(args, cwd, timeout=300, **kw):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def env(server_env):
    return server_env


def test_train_then_predict_matches_the_in_memory_model(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path, n_trials=2, trial_epochs=2, epochs=3)
    out = run(["train", "--config", str(cfg)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert summary["promoted"] and summary["model_version"] == "1"
    assert "rnn " in out.stdout + out.stderr and "ridge" in out.stdout + out.stderr  # the summary table

    # the in-memory forecasts of the test windows, as the flow logged them
    import mlflow

    expected = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=summary["mlflow_run_id"], artifact_path="predictions/test_predictions.csv",
        tracking_uri=f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"))
    window = summary["best_params"]["window"]
    values = datasets.seed_sine()[["value"]].to_numpy()
    x = lag_matrix(values, np.arange(810, 1000), window)
    history = pd.DataFrame({"window_id": np.repeat(np.arange(190), window), "value": x.reshape(-1)})
    history.to_csv(tmp_path / "history.csv", index=False)
    pred = run(["predict", "--config", str(cfg), "--input", "history.csv", "--output", "pred.csv"], tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    got = pd.read_csv(tmp_path / "pred.csv")
    np.testing.assert_allclose(got["value_h1"], expected["value_h1"], rtol=1e-5, atol=1e-7)

    # the rest in-process (main(), as the console script calls it): each subprocess costs seconds of imports
    def cli(*args):
        """main() in this process; the environment it sets (MLFLOW_TRACKING_URI among others, as a process of its own
        would) is put back afterwards, so that later tests do not inherit this test's stores."""
        monkeypatch.setattr(sys, "argv", ["rnn-pipeline", *args])
        saved = dict(os.environ)
        try:
            cli_module.main()
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out = capsys.readouterr()
        return code, out.out, out.err

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    # the explicit version URI, printing to stdout
    code, out, err = cli("predict", "--config", str(cfg), "--model", "models:/tiny/1", "--input", "history.csv")
    assert code == 0 and out.startswith("window_id,value_h1"), err[-2000:]
    assert np.allclose(pd.read_csv(io.StringIO(out))["value_h1"], expected["value_h1"], rtol=1e-5, atol=1e-7)
    # whole numbers and string ids are fine: they are validated and converted before MLflow's schema check
    ints = history.copy()
    ints["value"] = (ints["value"] * 1000).round().astype("int64")
    ints["window_id"] = "w" + ints["window_id"].astype(str)
    ints.to_csv(tmp_path / "ints.csv", index=False)
    code, out, err = cli("predict", "--config", str(cfg), "--input", "ints.csv")
    assert code == 0, err[-2000:]
    assert out.splitlines()[1].startswith("w0,")
    junk = history.copy().astype({"value": object})
    junk.loc[5, "value"] = "abc"
    junk.to_csv(tmp_path / "junk.csv", index=False)
    code, _, err = cli("predict", "--config", str(cfg), "--input", "junk.csv")
    assert code == 2 and "junk.csv, column 'value', row 6: not a finite number" in err
    # bad prediction input: one line, non-zero
    pd.DataFrame({"value": [1.0, 2.0]}).to_csv(tmp_path / "short.csv", index=False)
    code, _, err = cli("predict", "--config", str(cfg), "--input", "short.csv")
    assert code == 2 and "has 2 rows of history" in err and "Traceback" not in err
    code, _, err = cli("predict", "--config", str(cfg), "--model", "models:/nope@champion", "--input", "short.csv")
    assert code == 2 and "cannot load model 'models:/nope@champion'" in err


def test_bad_data_through_the_cli_is_one_error_line_without_traceback(tmp_path, env):
    (tmp_path / "d.csv").write_text("time,value\n1,2\n2,x\n")
    cfg = write_config(tmp_path, name="badcli", data="path: d.csv")
    out = run(["train", "--config", str(cfg)], tmp_path, env=env)
    assert out.returncode == 2
    assert "error: d.csv, column 'value', row 2: non-numeric value (value: 'x')" in out.stderr
    assert "Traceback" not in out.stderr


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
    cfg = write_config(tmp_path, name="resume", n_trials=6, trial_epochs=25, epochs=2,
                       extra="tuning:\n  n_trials: 6\n  max_epochs: 25\n  pruner: none\n"
                             "  space: {hidden: [24, 32, 40, 48], lr: [0.001, 0.002, 0.004]}\n")
    # the extra block overrides the tuning section written by write_config (YAML: the last key wins)
    url = f"sqlite:///{tmp_path / 'state' / 'optuna.db'}"
    proc = subprocess.Popen(CLI + ["train", "--config", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    done = wait_for_complete_trials(url, proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(done) < 6, f"could not catch the run mid-tuning ({len(done)} trials finished)"
    kept = {t.number: t.params for t in done}

    out = run(["train", "--config", str(cfg)], tmp_path, timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert summary["resumed_trials"] >= len(kept) and summary["n_trials"] == 6
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


def test_ui_serves_the_tracking_store_on_loopback(tmp_path):
    import re
    import urllib.request

    cfg = write_config(tmp_path, name="ui")
    proc = subprocess.Popen(CLI + ["ui", "--config", str(cfg), "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status != 200:
            time.sleep(1)
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/health", timeout=2).status
            except OSError:
                pass
        assert status == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the MLflow server and its workers
        proc.send_signal(signal.SIGTERM)  # to the command alone, as a service manager would
        proc.wait(timeout=60)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(c.pid, c.cmdline()[:4]) for c in left]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(m.group(1)))) != 0, "the MLflow UI still listens"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


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
