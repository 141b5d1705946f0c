"""What `rnn-pipeline train` prints: the summary table once (the CLI's echo; the flow's own `run summary` log line
stays off the console but goes to Prefect) and never MLflow's "Add type hints to the `predict` method" advice.

The CLI in a subprocess, its flow reporting to the session's Prefect test server (conftest.server_env), with Prefect
logging at INFO (the suite's WARNING would hide the flow's log line and prove nothing)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^model\s+mse\s+rmse\s+mae\s+r2\s+mase\s+skill\s*$", re.MULTILINE)


def test_train_prints_the_summary_once_and_no_type_hint_advice(tmp_path, server_env):
    cfg = write_config(tmp_path, n_trials=1, trial_epochs=1, epochs=2)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(cfg)], capture_output=True,
                       text=True, cwd=REPO, timeout=300, env={**server_env, "PREFECT_LOGGING_LEVEL": "INFO"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Beginning flow run" in out  # INFO lines do reach the console
    assert out.count("Add type hints") == 0, out
    assert len(HEADER.findall(out)) == 1, out
    assert out.count("PROMOTED to champion") == 1, out
    assert "run summary" not in out, out
