"""Flows called from Python (a notebook, the forecasting benchmark) are as offline as the CLI: importing them turns off
Prefect's server analytics and MLflow's telemetry before either library reads its settings."""

import os
import subprocess
import sys

from conftest import REPO

OFF = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")  # as flows.OFFLINE sets


def _settings(env: dict) -> str:
    # `flows` is what a notebook's `import flows.training` (or .monitoring, .batch) runs first
    code = ("import flows, os; from prefect.settings import get_current_settings as s; "
            "print(s().server.analytics_enabled, os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DO_NOT_TRACK'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_importing_the_flows_turns_telemetry_off():
    clean = {k: v for k, v in os.environ.items() if k not in OFF}
    assert _settings(clean) == "False true 1"
