"""Test isolation: Prefect, MLflow and Optuna state in temp folders; quiet, offline libraries."""

import os
import tempfile
import textwrap
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="rnnp-prefect-")
for k, v in {
    "PREFECT_HOME": _HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[k] = v
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]


def write_config(folder: Path, name: str = "tiny", extra: str = "", data: str = "builtin: seed_sine",
                 n_trials: int = 2, trial_epochs: int = 2, epochs: int = 3, floor: str | None = "[]") -> Path:
    """A small, fast config whose state lives under `folder/state`.

    Its models train 2-3 epochs: too few to be sure of beating persistence, so the gate's floor is off
    (`registry.floor: []`) for the tests about something else; `floor=None` keeps the default floor. A test whose
    `extra` has a `registry:` section of its own gives the floor there."""
    registry = f"registry: {{floor: {floor}}}\n" if floor is not None and "registry:" not in extra else ""
    text = registry + textwrap.dedent(f"""\
        name: {name}
        seed: 7
        data:
          {data}
        training: {{max_epochs: {epochs}, patience: 3}}
        tuning:
          n_trials: {n_trials}
          max_epochs: {trial_epochs}
          space: {{cell: [gru, rnn_tanh], hidden: [8, 16]}}
        stores: {{root: "{folder / 'state'}"}}
        """) + textwrap.dedent(extra)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for every in-process flow test (it costs seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
