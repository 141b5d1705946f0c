"""The monitoring store: one row per judged batch, plus a lock, in any SQLAlchemy database.

Embedded default: a SQLite file (`<root>/monitoring.db`); any URL instead (PostgreSQL for teams). The table is
plain so that drift history can be queried and charted with SQL or `pandas.read_sql`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rnn_pipeline.db import open_database
from rnn_pipeline.errors import PipelineError
from rnn_pipeline.locks import Lock, LockHeld  # noqa: F401  (LockHeld: what lock() raises)

metadata = sa.MetaData()

batches = sa.Table(
    "monitoring_batches", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("batch", sa.String(500), nullable=False),            # file name as it arrived
    sa.Column("digest", sa.String(64), nullable=False),            # sha256 of the file's bytes
    sa.Column("status", sa.String(20), nullable=False),            # judged | quarantined
    sa.Column("verdict", sa.String(20), nullable=False),           # ok | drift | degraded | invalid
    sa.Column("drift_share", sa.Float),
    sa.Column("error_ratio", sa.Float),
    sa.Column("champion_mse", sa.Float),                           # champion's MSE on the batch windows
    sa.Column("reference_mse", sa.Float),                          # champion's MSE on its own test windows
    sa.Column("champion_accuracy", sa.Float),                      # classification: on a labelled batch
    sa.Column("champion_f1", sa.Float),                            # classification: macro F1 on the batch
    sa.Column("reference_accuracy", sa.Float),                     # classification: on its own test items
    sa.Column("n_labelled", sa.Integer),
    sa.Column("champion_version", sa.String(20)),                  # the champion that was judged
    sa.Column("action", sa.String(40), nullable=False, default="none"),
    sa.Column("new_version", sa.String(20)),                       # the retrained challenger, if any
    sa.Column("new_champion_version", sa.String(20)),              # champion after the action
    sa.Column("n_rows", sa.Integer),
    sa.Column("n_windows", sa.Integer),
    sa.Column("first_time", sa.String(40)),
    sa.Column("last_time", sa.String(40)),
    sa.Column("feature_scores", sa.Text),                          # JSON {feature: {score, drifted}}
    sa.Column("log_prediction_seq", sa.Integer),                   # inference-log pass: last prediction judged
    sa.Column("log_actual_seq", sa.Integer),                       # inference-log pass: last actual judged
    sa.Column("data_path", sa.String(1000)),                       # the accepted batch, normalised (Parquet)
    sa.Column("report_path", sa.String(1000)),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("model_name", "digest", name="uq_monitoring_batch"),
)

def _now() -> datetime:
    return datetime.now(UTC)


class MonitoringStore:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_database(url, metadata, "monitoring store", self._add_missing_columns)

    @staticmethod
    def _add_missing_columns(engine) -> None:
        """A store written by an older version lacks the newer (nullable) columns: add them."""
        have = {c["name"] for c in sa.inspect(engine).get_columns(batches.name)}
        with engine.begin() as c:
            for col in batches.columns:
                if col.name not in have:
                    kind = col.type.compile(dialect=engine.dialect)
                    c.execute(sa.text(f'ALTER TABLE {batches.name} ADD COLUMN "{col.name}" {kind}'))

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- batches -------------------------------------------------------------------------------------------
    def seen(self, model_name: str, digest: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(batches).where(batches.c.model_name == model_name,
                                                     batches.c.digest == digest)).mappings().first()
        return dict(row) if row else None

    def record(self, row: dict) -> int:
        """Insert one batch row. A second row for the same (model, digest) is refused: a batch is judged once."""
        row = {**row, "created_at": row.get("created_at") or _now()}
        if isinstance(row.get("feature_scores"), dict):
            row["feature_scores"] = json.dumps(row["feature_scores"])
        try:
            with self.engine.begin() as c:
                return int(c.execute(batches.insert().values(**row)).inserted_primary_key[0])
        except IntegrityError:
            raise PipelineError(f"batch {row['batch']} (sha256 {row['digest'][:12]}) was already judged for "
                                f"{row['model_name']}") from None

    def update(self, row_id: int, **values) -> None:
        with self.engine.begin() as c:
            c.execute(batches.update().where(batches.c.id == row_id).values(**values))

    def interrupted(self, model_name: str) -> list[str]:
        """Rows an earlier pass left at "retrain started" (it was killed before the retrain finished): marked "retrain
        interrupted", saying so. Call it holding the model's monitoring lock. Returns their batch names."""
        where = (batches.c.model_name == model_name, batches.c.action == "retrain started")
        with self.engine.begin() as c:
            names = [r[0] for r in c.execute(sa.select(batches.c.batch).where(*where))]
            c.execute(batches.update().where(*where).values(
                action="retrain interrupted",
                message=f"the pass that started this retrain stopped before it finished (found {_now():%Y-%m-%d %H:%M} "
                        "UTC); the next drifted batch retrains again"))
        return names

    def history(self, model_name: str) -> pd.DataFrame:
        """Every batch judged for a model, oldest first (what a drift chart plots)."""
        with self.engine.connect() as c:
            frame = pd.read_sql(sa.select(batches).where(batches.c.model_name == model_name)
                                .order_by(batches.c.id), c)
        return frame

    def accepted(self, model_name: str) -> list[dict]:
        """The judged (not quarantined) batches of a model, in arrival order, with their stored data."""
        with self.engine.connect() as c:
            rows = c.execute(sa.select(batches).where(batches.c.model_name == model_name,
                                                      batches.c.status == "judged")
                             .order_by(batches.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def log_watermark(self, model_name: str) -> tuple[int, int]:
        """The last inference-log prediction and actual that a pass judged for this model (0, 0 before the first)."""
        with self.engine.connect() as c:
            p, a = c.execute(sa.select(sa.func.max(batches.c.log_prediction_seq), sa.func.max(batches.c.log_actual_seq))
                             .where(batches.c.model_name == model_name)).one()
        return int(p or 0), int(a or 0)

    # ---- lock ----------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, name: str, ttl_seconds: float):
        """At most one holder per name across processes and machines sharing the store (rnn_pipeline.locks: a row
        with a heartbeat; a stale one, or one whose process died on this host, is taken over)."""
        with Lock(self.engine, name, ttl_seconds=ttl_seconds, what="monitoring run") as held:
            yield held.owner
