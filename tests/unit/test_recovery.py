"""What a crash leaves and what the next run does about it: the per-model lock (one holder; a dead holder's lock taken
over at once, a silent one after its TTL; a clear message naming the live holder), the store checks at flow start
(a damaged or missing store is one line naming the file), and reconciling a registry left half-written."""

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import migrated_mlflow_store

from rnn_pipeline.errors import PipelineError
from rnn_pipeline.locks import Lock, LockHeld, locks
from rnn_pipeline.stores import Stores, check


def _lock(url, **kw):
    return Lock(url, "train:m", ttl_seconds=kw.pop("ttl", 60), what="training run of model 'm'", **kw)


def lock_contract(url: str) -> None:
    with _lock(url) as first:
        with pytest.raises(LockHeld, match=rf"another training run of model 'm' is in progress \(pid {os.getpid()} on "):
            _lock(url).acquire()
        first.check()  # still ours
    with _lock(url):  # released
        pass

    # a holder on this host whose process is gone (kill -9): taken over at once, whatever its heartbeat says
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    holder = _lock(url)
    with holder.engine.begin() as c:
        c.execute(locks.insert().values(name="train:m", owner=f"x:{pid}:y", host=os.uname().nodename, pid=pid,
                                        since=time.time(), heartbeat=time.time()))
    with holder as h:
        assert h.holder()["pid"] == os.getpid()

    # a live holder elsewhere whose heartbeat is fresh: refused; once silent past the TTL: taken over, and the old
    # holder finds out before it writes anything more
    with _lock(url, ttl=2) as slow:
        slow._stop.set()  # its heartbeat thread stops, as in a process frozen for longer than the TTL
        slow._thread.join()
        with pytest.raises(LockHeld):
            _lock(url, ttl=2).acquire()
        time.sleep(2.5)
        with _lock(url, ttl=2):
            with pytest.raises(LockHeld, match="taken over by another process"):
                slow.check()
        slow._thread = None


def test_lock_on_sqlite(tmp_path):
    lock_contract(f"sqlite:///{tmp_path / 'state.db'}")


def test_lock_on_postgresql(pg_databases):
    lock_contract(pg_databases[2])


def test_a_waiting_run_gets_the_lock_when_the_holder_finishes(tmp_path):
    import threading

    url = f"sqlite:///{tmp_path / 'state.db'}"
    seen = []
    first = _lock(url).acquire()
    threading.Timer(1.0, first.release).start()
    with _lock(url, wait=60, poll_seconds=0.2, on_wait=seen.append) as second:
        assert second.holder()["owner"] == second.owner
    assert seen and seen[0]["pid"] == os.getpid()  # it said whom it waited for


def _stores(root):
    return Stores(root, f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri(),
                  f"sqlite:///{root / 'optuna.db'}", f"sqlite:///{root / 'monitoring.db'}")


def test_store_checks_name_the_damaged_or_missing_file(tmp_path):
    st = _stores(tmp_path)
    check(st)  # nothing yet: a first run
    shutil.copyfile(migrated_mlflow_store(), tmp_path / "mlflow.db")
    (tmp_path / "optuna.db").write_bytes(b"")
    check(st)  # healthy stores

    (tmp_path / "monitoring.db").write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(PipelineError, match=r"monitoring store .*monitoring\.db cannot be read .*make clean") as e:
        check(st)
    # the way to start over names this root; `make clean` only deletes the default one, and the message says so
    assert f"start over by deleting {tmp_path}" in str(e.value) and "deletes only the default .rnn_pipeline" in str(e.value)
    (tmp_path / "monitoring.db").unlink()

    damaged = bytearray((tmp_path / "mlflow.db").read_bytes())  # one bad page in the middle of the file
    page = 4096 * (len(damaged) // 4096 // 2)
    damaged[page:page + 4096] = b"\xff" * 4096
    (tmp_path / "mlflow.db").write_bytes(bytes(damaged))
    with pytest.raises(PipelineError, match=r"MLflow store .*mlflow\.db (is damaged|cannot be read)"):
        check(st)

    (tmp_path / "mlflow.db").unlink()  # deleted beside the Optuna store of earlier runs
    with pytest.raises(PipelineError, match=r"MLflow store .*mlflow\.db is missing, but .*optuna\.db"):
        check(st)


def test_a_store_that_another_process_is_writing_is_waited_for_not_called_damaged(tmp_path, monkeypatch):
    """A monitoring pass started beside another one found the store mid-write: the check waits for the writer's lock
    and passes; a lock held past the wait says so and tries nothing, where it once said "restore it from a backup, or
    start over by deleting" a healthy store."""
    import sqlite3
    import threading

    from rnn_pipeline import db
    from rnn_pipeline.monitoring.store import MonitoringStore

    st = _stores(tmp_path)
    shutil.copyfile(migrated_mlflow_store(), tmp_path / "mlflow.db")
    writer = sqlite3.connect(tmp_path / "monitoring.db", isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN EXCLUSIVE")  # no reader gets in until it ends
    writer.execute("INSERT INTO t VALUES (1)")
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    with pytest.raises(PipelineError, match=r"monitoring store .*monitoring\.db stayed locked by another process") as e:
        check(st)
    assert "backup" not in str(e.value) and "deleting" not in str(e.value)

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 60.0)
    timer = threading.Timer(0.5, writer.execute, ["COMMIT"])  # the writer finishes while the check waits
    timer.start()
    try:
        check(st)
    finally:
        timer.join()
        writer.close()
    assert sqlite3.connect(tmp_path / "monitoring.db").execute("SELECT x FROM t").fetchall() == [(1,)]
    # the stores' own connections wait as long (SQLite's default is 5 s)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
    finally:
        store.dispose()


def test_reconcile_fails_orphaned_runs_and_marks_versions_without_a_decision(tmp_path):
    import mlflow

    from rnn_pipeline.registry import CHALLENGER, DECISION_TAG, alias_version, reconcile

    db = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_mlflow_store(), db)
    client = mlflow.MlflowClient(f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    exp = client.create_experiment("m", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"model_name": "m"}).info.run_id  # left RUNNING by a kill -9
    trial = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
    other = client.create_run(exp, tags={"model_name": "other"}).info.run_id  # another model's live run
    client.create_registered_model("m")
    done = client.create_model_version("m", "file:///nowhere", run_id=parent).version
    client.set_model_version_tag("m", done, DECISION_TAG, "promoted")
    half = client.create_model_version("m", "file:///nowhere", run_id=parent).version
    client.set_model_version_tag("m", half, "gate.metric", "mse")  # killed before the decision
    client.set_registered_model_alias("m", CHALLENGER, half)

    out = reconcile(client, "m", exp)
    assert sorted(out["failed_runs"]) == sorted([parent, trial]) and out["incomplete_versions"] == [str(half)]
    for rid in (parent, trial):
        r = client.get_run(rid)
        assert r.info.status == "FAILED" and r.data.tags["failure_reason"].startswith("interrupted")
    assert client.get_run(other).info.status == "RUNNING"
    assert client.get_model_version("m", half).tags["incomplete"] == "true"
    assert "incomplete" not in client.get_model_version("m", done).tags
    assert alias_version(client, "m", CHALLENGER) is None
    assert reconcile(client, "m", exp) == {"failed_runs": [], "incomplete_versions": []}  # idempotent


def test_tables_created_by_another_process_at_the_same_moment_are_not_an_error(tmp_path, monkeypatch):
    """Two runs opening a new PostgreSQL state store together: the second CREATE fails because the first one's table
    appeared between the check and the create. Opening the store checks again rather than failing the run."""
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError

    from rnn_pipeline import db

    calls = []
    real = sa.MetaData.create_all

    def racing(self, engine, *a, **kw):
        calls.append(1)
        if len(calls) == 1:  # what PostgreSQL answers the loser of the race
            raise IntegrityError("CREATE TABLE pipeline_locks", {}, Exception("duplicate key value violates unique "
                                                                             "constraint pg_type_typname_nsp_index"))
        return real(self, engine, *a, **kw)

    monkeypatch.setattr(sa.MetaData, "create_all", racing)
    engine = db.open_database(f"sqlite:///{tmp_path / 'state.db'}", locks.metadata, "state store")
    assert len(calls) == 2 and sa.inspect(engine).has_table("pipeline_locks")
    engine.dispose()

    calls.clear()
    monkeypatch.setattr(sa.MetaData, "create_all", lambda self, engine, *a, **kw: (_ for _ in ()).throw(
        IntegrityError("CREATE TABLE x", {}, Exception("duplicate key"))))
    with pytest.raises(PipelineError, match="state store .* cannot be opened"):  # a lasting failure is still one line
        db.open_database(f"sqlite:///{tmp_path / 'other.db'}", locks.metadata, "state store")
