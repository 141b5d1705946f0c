"""Orchestration: Prefect flows whose tasks each call one library function, and the `rnn-pipeline` CLI.

Importing the flows sets the libraries' offline defaults (no telemetry from Prefect's local server or MLflow) before
either is imported, so that flows called from Python (a notebook, a benchmark) stay offline as the CLI does; a
user's own settings win."""

import os as _os

OFFLINE = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
for _key, _value in OFFLINE.items():
    _os.environ.setdefault(_key, _value)
