"""The CLI as a user runs it, end to end in subprocesses: exit codes, one-line errors, predict == in-memory, the UI
(resume after a kill or Ctrl-C: test_interrupts.py). Help and argument handling are tested in-process
(test_cli_args.py)."""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import put_prefect_db, write_config

from rnn_pipeline.data import datasets
from rnn_pipeline.forecasting.windows import lag_matrix

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "flows.cli"]
SUMMARY_HEADER = re.compile(r"^model\s+mse\s+rmse\s+mae\s+r2\s+mase\s+skill\s*$", re.MULTILINE)


def run(args, cwd, timeout=300, **kw):
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def test_train_then_predict_matches_the_in_memory_model(tmp_path, monkeypatch, cli, prefect_db_template):
    """On the embedded default (Prefect's temporary local server, as `make run`), with Prefect logging at INFO (the
    suite's WARNING would hide the flow's log lines and prove nothing about what reaches the console)."""
    put_prefect_db(prefect_db_template, Path(os.environ["PREFECT_HOME"]))  # the temporary server's, migrated already
    cfg = write_config(tmp_path, n_trials=2, trial_epochs=2, epochs=3)
    out = run(["train", "--config", str(cfg)], tmp_path, env={**os.environ, "PREFECT_LOGGING_LEVEL": "INFO"})
    said = out.stdout + out.stderr
    assert out.returncode == 0, said[-3000:]
    summary = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert summary["promoted"] and summary["model_version"] == "1"
    # what it prints: the summary table once (the CLI's echo; the flow's own `run summary` log line stays off the
    # console but goes to Prefect), and never MLflow's "Add type hints to the `predict` method" advice
    assert "Beginning flow run" in said  # INFO lines do reach the console
    assert len(SUMMARY_HEADER.findall(said)) == 1 and said.count("PROMOTED to champion") == 1, said[-3000:]
    assert "ridge" in said and "run summary" not in said and "Add type hints" not in said, said[-3000:]

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

    # the rest in-process (the `cli` fixture): each subprocess costs seconds of imports
    monkeypatch.chdir(tmp_path)
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


def test_bad_data_through_the_cli_is_one_error_line_without_traceback(tmp_path, prefect_harness, cli):
    """In-process (the `cli` fixture: the same main() as the console script, without a process's seconds of imports);
    what a process of its own prints is checked by test_train_then_predict_matches_the_in_memory_model."""
    (tmp_path / "d.csv").write_text("time,value\n1,2\n2,x\n")
    cfg = write_config(tmp_path, name="badcli", data="path: d.csv")
    code, _, err = cli("train", "--config", cfg, cwd=tmp_path)
    assert code == 2, err[-2000:]
    assert "error: d.csv, column 'value', row 2: non-numeric value (value: 'x')" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "state" / "optuna.db").exists()  # refused before anything was started


def test_ui_serves_the_tracking_store_on_loopback(tmp_path):
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
