"""Test isolation: Prefect, MLflow and Optuna state in temp folders; quiet, offline libraries."""

import os
import shutil
import subprocess
import sys
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
# One BLAS/OpenMP thread per test process (and the CLI processes tests start): pytest-xdist runs several test processes
# on few cores, and math libraries that size their thread pools by the core count spin against each other. Training
# itself already runs on training.threads (1).
for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(k, "1")
# A shell pointed at a stack (`eval "$(rnn-pipeline stack env)"`) must not send the suite's runs to it
for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RNNP_OPTUNA_URL", "RNNP_MONITORING_URL", "RNNP_WORKDIR"):
    os.environ.pop(k, None)

REPO = Path(__file__).resolve().parents[1]


# The files that take longest in the suite (measured on 2 cores, 4 workers), first: `make test` hands out whole files
# (--dist loadfile) in collection order (--no-loadscope-reorder; xdist's default order is by test count, which put
# the two-test test_deploy.py last), and a long file that starts last holds up the end of the run.
SLOWEST_FIRST = ("flows/test_browser.py", "e2e/test_cli.py", "flows/test_monitoring.py", "flows/test_deploy.py",
                 "e2e/test_interrupts.py", "flows/test_flow.py", "flows/test_serve.py",
                 "flows/test_classify_monitoring.py", "flows/test_demo.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}

    def slowness(item) -> int:
        path = Path(str(item.path))
        rel = path.relative_to(REPO / "tests").as_posix() if path.is_relative_to(REPO / "tests") else ""
        return rank.get(rel, len(rank))

    items.sort(key=slowness)  # stable: each file keeps its own order


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
                 empty_store: bool = True, plots: bool = False, ensemble_trials: int = 1) -> Path:
    """A small, fast config whose state lives under `folder/state`; with `empty_store`, that folder starts with an
    empty (migrated) MLflow store (see migrated_mlflow_store). It logs no plots (`evaluation.plots: false`, about a
    second of CPU per run) unless `plots`, or an `evaluation:` section in `extra`, says otherwise. Its final model is the
    best trial's refit alone (`training.ensemble_trials: 1`) unless `ensemble_trials` says otherwise: the mix of
    trials is tested where it is the subject (test_flow, test_forecasters).

    Its models train 2-3 epochs: too few to be sure of beating persistence, so the gate's floor is off
    (`registry.floor: []`) for the tests about something else; `floor=None` keeps the default floor. A test whose
    `extra` has a `registry:` section of its own gives the floor there."""
    registry = f"registry: {{floor: {floor}}}\n" if floor is not None and "registry:" not in extra else ""
    if not plots and "evaluation:" not in extra:
        registry += "evaluation: {plots: false}\n"
    text = registry + textwrap.dedent(f"""\
        name: {name}
        seed: 7
        data:
          {data}
        training: {{max_epochs: {epochs}, patience: 3, ensemble_trials: {ensemble_trials}}}
        tuning:
          n_trials: {n_trials}
          max_epochs: {trial_epochs}
          space: {{cell: [gru, rnn_tanh], hidden: [8, 16]}}
        stores: {{root: "{folder / 'state'}"}}
        """) + textwrap.dedent(extra)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    if empty_store:
        put_mlflow_store(folder / "state")
    return path


def put_mlflow_store(root: Path) -> None:
    """An empty, migrated MLflow store where a config with `stores.root: root` looks for its own (unless one is there
    already): a new store spends seconds of CPU in MLflow's migrations."""
    store = Path(root) / "mlflow.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_mlflow_store(), store)


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path)


@pytest.fixture(scope="session")
def prefect_db_template(tmp_path_factory) -> Path:
    """A Prefect server database with its schema migrated, made once per test run and shared by the xdist workers
    (under a file lock). A Prefect server on a fresh database spends about 7 s of CPU in migrations, and the suite
    starts several: the test harness in each worker, the servers of test_browser and of `deploy` in test_deploy, the
    CLI's temporary server in test_cli. Each starts on a copy of this file instead (put_prefect_db)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above each worker's
    path = shared / "prefect-template.db"
    with FileLock(str(path) + ".lock", timeout=600):
        if not path.exists():
            part = shared / "prefect-template.part.db"
            part.unlink(missing_ok=True)
            env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{part}"}
            out = subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                                 env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
            part.rename(path)
    return path


def put_prefect_db(template: Path, prefect_home: Path) -> None:
    """A migrated database where a Prefect server with PREFECT_HOME=`prefect_home` looks for its own (unless one is
    there already)."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    if not (prefect_home / "prefect.db").exists():
        shutil.copyfile(template, prefect_home / "prefect.db")


@pytest.fixture(scope="session")
def prefect_harness(prefect_db_template):
    """One Prefect test server for every in-process flow test (it costs seconds to start), on a copy of the migrated
    database: the harness makes a temporary folder for its `prefect-test.db`, and the copy is put there first (with
    another Prefect's file name the copy goes unused, and the server migrates a fresh database as before)."""
    import prefect.testing.utilities as harness

    made = harness.mkdtemp

    def folder_with_db(*args, **kwargs):
        folder = made(*args, **kwargs)
        shutil.copyfile(prefect_db_template, Path(folder) / "prefect-test.db")
        return folder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "mkdtemp", folder_with_db)
        with harness.prefect_test_harness(server_startup_timeout=90):
            yield


@pytest.fixture(scope="session")
def server_env(prefect_harness):
    """The environment for a CLI subprocess whose flows report to the session's Prefect test server, instead of
    starting and stopping a temporary server of their own (about 12 s each). The embedded default (no
    PREFECT_API_URL) is still what `make run` and test_cli's train-then-predict use."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture
def cli(monkeypatch, capsys):
    """`rnn-pipeline ARGS...` in this process (main(), as the console script calls it): (exit code, stdout, stderr).
    A subprocess costs seconds of imports; tests/e2e runs the CLI as a user does, in processes of its own. The
    environment the command sets (MLFLOW_TRACKING_URI among others, as a process of its own would) is put back
    afterwards, so that later tests do not inherit its stores; in a test under the session's Prefect server
    (prefect_harness), its flows report there."""
    import logging

    from flows import cli as cli_module

    def console_handlers() -> list:
        """Prefect's console handlers: made when Prefect first sets up logging, they write to the stderr of that
        moment, which may be an earlier test's capture (closed by now). A process of its own has one stderr."""
        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                           if isinstance(v, logging.Logger)]
        return list({id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}.values())

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        saved, here = dict(os.environ), Path.cwd()
        monkeypatch.setattr(sys, "argv", ["rnn-pipeline", *map(str, args)])
        for h in console_handlers():  # to this test's stderr, as in a process of its own
            monkeypatch.setattr(h, "stream", sys.stderr)
            monkeypatch.setattr(h.console, "file", sys.stderr)
        try:
            if cwd is not None:
                os.chdir(cwd)
            cli_module.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(here)
            os.environ.clear()
            os.environ.update(saved)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


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
