"""The libraries' process-wide settings for a pipeline command: quiet, local, offline environment defaults, and
the warnings and log levels that say nothing to a user. Imports nothing heavy until called."""

from __future__ import annotations

import os
from pathlib import Path


def set_environment(root: Path) -> None:
    """Quiet, local, offline defaults for the libraries; a user's own settings win."""
    defaults = {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "rnn_pipeline",
        "PREFECT_UI_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DO_NOT_TRACK": "1",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    import logging

    logging.getLogger("rnn_pipeline").setLevel(logging.INFO)


def quiet_libraries() -> None:
    """After the heavy imports (some of them install warning filters of their own): drop the noise that says
    nothing to a user of this pipeline."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", message=".*is experimental.*")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial lines say more
