"""Test isolation: Prefect, MLflow and Optuna state in temp folders; quiet, offline libraries."""

import os
import shutil
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


_TEMPLATES = Path(tempfile.mkdtemp(prefix="rnnp-templates-"))


def migrated_mlflow_store() -> Path:
    """An empty MLflow SQLite store with its schema migrated, made once per session. A fresh store spends seconds in
    MLflow's migrations, and most flow tests start from an empty one; they copy this instead. Tests of creating the
    stores (test_stores.py, and those asserting that nothing was created) start from nothing."""
    path = _TEMPLATES / "mlflow.db"
    if not path.exists():
        import mlflow

        part = _TEMPLATES / "part.db"
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{part}", registry_uri=f"sqlite:///{part}").search_experiments()
        part.rename(path)
    return path


def write_config(folder: Path, name: str = "tiny", extra: str = "", data: str = "builtin: seed_sine",
                 n_trials: int = 2, trial_epochs: int = 2, epochs: int = 3, floor: str | None = "[]",
                 empty_store: bool = True) -> Path:
    """A small, fast config whose state lives under `folder/state`; with `empty_store`, that folder starts with an
    empty (migrated) MLflow store (see migrated_mlflow_store).

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
    store = folder / "state" / "mlflow.db"
    if empty_store and not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_mlflow_store(), store)
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


@pytest.fixture(scope="session")
def server_env(prefect_harness):
    """The environment for a CLI subprocess whose flows report to the session's Prefect test server, instead of
    starting and stopping a temporary server of their own (about 12 s each). The embedded default (no
    PREFECT_API_URL) is still what `make run` and test_cli's train-then-predict use."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


PG_HOST, PG_PORT = os.environ.get("RNNP_TEST_PG_HOST", "127.0.0.1"), int(os.environ.get("RNNP_TEST_PG_PORT", "5432"))


def pg_admin():
    """A connection to the machine's PostgreSQL (database `test`, trust auth); skips the test, saying why, where there
    is none: the embedded default never needs one."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary) - PostgreSQL store test skipped")
    try:
        conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="test", connect_timeout=3)
    except Exception as e:
        pytest.skip(f"no PostgreSQL server reachable at {PG_HOST}:{PG_PORT} ({str(e).strip().splitlines()[0]})")
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_databases():
    """Three fresh PostgreSQL databases (for the MLflow, Optuna and monitoring stores), dropped afterwards."""
    import uuid

    conn = pg_admin()
    names = [f"rnnp_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna", "monitoring")]
    with conn.cursor() as cur:
        for n in names:
            cur.execute(f'CREATE DATABASE "{n}"')
    yield [f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{n}" for n in names]
    with conn.cursor() as cur:
        for n in names:
            cur.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
    conn.close()
