"""Opening the pipeline's SQL databases (the monitoring store, the inference log, batch input tables): any
SQLAlchemy URL, a SQLite file by default. Errors name the database without its password."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from rnn_pipeline.errors import PipelineError, first_line

# How long a SQLite connection waits for another process's write lock before "database is locked": two monitoring
# passes, a training run and a service share these files, and a commit on a loaded machine can outlast SQLite's 5 s.
SQLITE_BUSY_TIMEOUT_S = 60.0


def open_database(url: str, tables: sa.MetaData, what: str, migrate=None) -> sa.engine.Engine:
    """An engine on `url` with `tables` created (and `migrate(engine)` run); one line naming the store if not."""
    try:
        sqlite = sa.engine.make_url(url).get_backend_name() == "sqlite"
        engine = sa.create_engine(url, future=True, pool_pre_ping=True,
                                  connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {})
        create_tables(engine, tables)
        if migrate is not None:
            migrate(engine)
        return engine
    except (SQLAlchemyError, ImportError) as e:
        raise PipelineError(f"{what} '{safe_url(url)}' cannot be opened: {first_line(e)}") from None


def create_tables(engine: sa.engine.Engine, tables: sa.MetaData, attempts: int = 5) -> None:
    """`tables` created where missing. Two processes that open a new PostgreSQL database at the same moment (two
    training runs started together) both see no table and both create it; the second one's CREATE fails ('already
    exists', or a duplicate key in pg_type). The tables are there then, so the check is simply made again."""
    for attempt in range(attempts):
        try:
            tables.create_all(engine)
            return
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def safe_url(url: str) -> str:
    """A URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
