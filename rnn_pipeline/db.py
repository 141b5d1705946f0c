"""Opening the pipeline's SQL databases (the monitoring store, the inference log, batch input tables): any
SQLAlchemy URL, a SQLite file by default. Errors name the database without its password."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from rnn_pipeline.errors import PipelineError, first_line


def open_database(url: str, tables: sa.MetaData, what: str, migrate=None) -> sa.engine.Engine:
    """An engine on `url` with `tables` created (and `migrate(engine)` run); one line naming the store if not."""
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        tables.create_all(engine)
        if migrate is not None:
            migrate(engine)
        return engine
    except (SQLAlchemyError, ImportError) as e:
        raise PipelineError(f"{what} '{safe_url(url)}' cannot be opened: {first_line(e)}") from None


def safe_url(url: str) -> str:
    """A URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
