"""Named locks in a SQL database (the pipeline's state store: `<root>/monitoring.db` by default, PostgreSQL by URL), so
that one training run per model and one monitoring pass per model run at a time, across processes and machines.

A lock is a row (name, owner, host, pid, since, heartbeat) taken with an INSERT on the primary key, which is atomic in
every database. The holder refreshes its heartbeat from a background thread. A lock is stale, and taken over, when its
heartbeat is older than the TTL, or at once when its holder was a process on this host that no longer exists
(`kill -9`). Taking over deletes the row only if it still names the stale owner, so two takers cannot both win.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rnn_pipeline.db import open_database
from rnn_pipeline.errors import PipelineError

log = logging.getLogger(__name__)
metadata = sa.MetaData()

locks = sa.Table(
    "pipeline_locks", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),       # host:pid:token
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("since", sa.Float, nullable=False),             # epoch seconds
    sa.Column("heartbeat", sa.Float, nullable=False),
)


class LockHeld(PipelineError):
    """Another live process holds the lock."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder


def describe(holder: dict | None) -> str:
    if not holder:
        return "unknown holder"
    since = datetime.fromtimestamp(holder["since"]).isoformat(sep=" ", timespec="seconds")
    return f"pid {holder['pid']} on {holder['host']}, since {since}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def is_stale(holder: dict, ttl_seconds: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if holder["heartbeat"] < now - ttl_seconds:
        return True
    return holder["host"] == socket.gethostname() and holder["pid"] != os.getpid() and not _alive(holder["pid"])


class Lock:
    """`with Lock(url, "train:mymodel", ttl_seconds=120, what="training run of model 'mymodel'"):` holds the lock (or
    raises LockHeld naming the holder; with `wait`, polls until it is free or `wait` seconds pass)."""

    def __init__(self, url_or_engine, name: str, *, ttl_seconds: float, what: str, wait: float = 0.0,
                 poll_seconds: float = 2.0, on_wait: Callable[[dict | None], None] | None = None):
        self._own_engine = not isinstance(url_or_engine, sa.engine.Engine)
        self.engine = open_database(url_or_engine, metadata, "state store") if self._own_engine else url_or_engine
        if not self._own_engine:
            metadata.create_all(self.engine)
        self.name, self.ttl, self.what = name, float(ttl_seconds), what
        self.wait, self.poll, self.on_wait = float(wait), poll_seconds, on_wait
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(locks).where(locks.c.name == self.name)).mappings().first()
        return dict(row) if row else None

    def _try(self) -> dict | None:
        """Take the lock; None on success, else the live holder."""
        now = time.time()
        held = self.holder()
        if held is not None and is_stale(held, self.ttl, now):
            log.warning("taking over the stale lock '%s' (%s; last heartbeat %.0fs ago)", self.name, describe(held),
                        now - held["heartbeat"])
            with self.engine.begin() as c:
                c.execute(locks.delete().where(locks.c.name == self.name, locks.c.owner == held["owner"]))
        try:
            with self.engine.begin() as c:
                c.execute(locks.insert().values(name=self.name, owner=self.owner, host=socket.gethostname(),
                                                pid=os.getpid(), since=now, heartbeat=now))
            return None
        except IntegrityError:
            return self.holder() or {}

    def acquire(self) -> Lock:
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            held = self._try()
            if held is None:
                break
            if time.monotonic() >= deadline:
                if self._own_engine:
                    self.engine.dispose()
                more = "" if self.wait else " (pass --wait to wait for it)"
                raise LockHeld(f"another {self.what} is in progress ({describe(held or None)}){more}", held)
            if not told and self.on_wait is not None:
                self.on_wait(held or None)
                told = True
            time.sleep(min(self.poll, max(0.05, deadline - time.monotonic())))
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        every = max(0.5, self.ttl / 4)
        while not self._stop.wait(every):
            try:
                with self.engine.begin() as c:
                    n = c.execute(locks.update().where(locks.c.name == self.name, locks.c.owner == self.owner)
                                  .values(heartbeat=time.time())).rowcount
                if n == 0:
                    self.lost = True
                    log.error("the lock '%s' was taken over by another process", self.name)
                    return
            except Exception as e:  # a store hiccup: try again next beat; the TTL leaves room for a few misses
                log.warning("lock heartbeat for '%s' failed: %s", self.name, e)

    def check(self) -> None:
        """Raise if the lock was lost (its heartbeat stalled past the TTL and another process took it over)."""
        if self.lost or (self.holder() or {}).get("owner") != self.owner:
            self.lost = True
            raise LockHeld(f"the lock for this {self.what} was taken over by another process "
                           f"({describe(self.holder())}); stopping before writing anything more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            with self.engine.begin() as c:
                c.execute(locks.delete().where(locks.c.name == self.name, locks.c.owner == self.owner))
        finally:
            if self._own_engine:
                self.engine.dispose()

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
