"""The inference log: every prediction the service or a batch run made, and every actual posted for it later.

It lives in the monitoring store's database (the same SQLAlchemy URL: a SQLite file by default, PostgreSQL by URL),
in two plain tables that SQL or `pandas.read_sql` can query:

- `inference_predictions`: prediction id, time, model name and version, source (`api` or `batch:<file>`), the
  SHA-256 of the input, the input itself as monitoring needs it (the forecast window, the text or the sequence,
  JSON), the output (JSON), the predicted label (classification) and the request's latency.
- `inference_actuals`: the actual values (forecasting) or label (classification) for a prediction id; one each.

The service writes predictions in the background (`LogWriter`), so a request never waits for the database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rnn_pipeline.db import open_database
from rnn_pipeline.errors import DataValidationError, PipelineError, first_line

log = logging.getLogger(__name__)
metadata = sa.MetaData()

predictions = sa.Table(
    "inference_predictions", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),   # arrival order
    sa.Column("prediction_id", sa.String(64), nullable=False, unique=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(20), nullable=False),
    sa.Column("task", sa.String(20), nullable=False),                     # forecasting | classification
    sa.Column("source", sa.String(500), nullable=False),                  # api | batch:<file>
    sa.Column("input_digest", sa.String(64), nullable=False),             # sha256 of the canonical input JSON
    sa.Column("inputs", sa.Text, nullable=False),                         # JSON: window rows, text or sequence
    sa.Column("output", sa.Text, nullable=False),                         # JSON: forecast, or label + probabilities
    sa.Column("label", sa.String(200)),                                   # classification: the predicted label
    sa.Column("latency_ms", sa.Float),                                    # the request's (or chunk's) time
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_inference_predictions_model_seq", "model_name", "seq"),
)

actuals = sa.Table(
    "inference_actuals", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(64), nullable=False, unique=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("actual", sa.Text, nullable=False),                         # JSON: {target: [H values]} or {label}
    sa.Column("source", sa.String(500), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_inference_actuals_model_seq", "model_name", "seq"),
)


class UnknownPredictions(PipelineError):
    def __init__(self, ids: list[str]):
        self.ids = ids
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        super().__init__(f"unknown prediction id(s) {ids[:5]}{more}: nothing was recorded")


class DuplicateActuals(PipelineError):
    def __init__(self, ids: list[str]):
        self.ids = ids
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        super().__init__(f"prediction id(s) {ids[:5]}{more} already have an actual: nothing was recorded")


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


def digest(inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- rows --------------------------------------------------------------------------------------------------------
def prediction_rows(bundle, inputs, outputs: np.ndarray, ids: list[str], version: str, model_name: str, source: str,
                    latency_ms: float | None = None) -> list[dict]:
    """A bundle's inputs (windows, texts or sequences, in original units) and outputs (forecasts or class
    probabilities) -> prediction rows; the bundle says what each keeps (`log_records`: plain lists, which `encode`
    turns into JSON)."""
    t = now()
    return [{"prediction_id": pid, "model_name": model_name, "model_version": version, "task": bundle.task,
             "source": source, "inputs": inp, "output": out, "label": label, "latency_ms": latency_ms,
             "created_at": t} for pid, (inp, out, label) in zip(ids, bundle.log_records(inputs, outputs), strict=True)]


forecast_rows = prediction_rows  # the former name; tests/test_monitor_log.py still imports it


def encode(row: dict) -> dict:
    """JSON columns and the input digest, computed off the request path."""
    return {**row, "inputs": json.dumps(row["inputs"], separators=(",", ":")),
            "output": json.dumps(row["output"], separators=(",", ":")),
            "input_digest": row.get("input_digest") or digest(row["inputs"])}


def check_actual(output: dict, actual: dict, where: str) -> None:
    """An actual must have the shape of the prediction it answers: every forecast target with as many finite values
    as the horizon, or a non-empty label."""
    if "label" in output:
        label = actual.get("label")
        if not isinstance(label, str) or not label.strip():
            raise DataValidationError(f"{where}: a classification actual needs a non-empty 'label'")
        return
    values = actual.get("values")
    if not isinstance(values, dict):
        raise DataValidationError(f"{where}: a forecast actual needs 'values' {{target: [{_n(output)} values]}}")
    if set(values) != set(output):
        raise DataValidationError(f"{where}: actual targets {sorted(values)} do not match the forecast's "
                                  f"{sorted(output)}")
    for k, v in values.items():
        if len(v) != len(output[k]):
            raise DataValidationError(f"{where}: target '{k}' has {len(v)} actual value(s); the forecast has "
                                      f"{len(output[k])} (one per horizon step)")
        if not all(isinstance(a, (int, float)) and math.isfinite(a) for a in v):
            raise DataValidationError(f"{where}: target '{k}' has a value that is not a finite number")


def actuals_from_frame(frame: pd.DataFrame, source: str) -> list[tuple[str, dict]]:
    """A table of actuals: `prediction_id` plus either `label` (classification) or the forecast's own columns
    `<target>_h<k>` (as predict-batch writes them) holding the actual values."""
    if not isinstance(frame, pd.DataFrame):
        raise DataValidationError("expected a CSV or Parquet table of actuals", source=source)
    if "prediction_id" not in frame.columns:
        raise DataValidationError("missing column 'prediction_id'", source=source)
    steps = {}
    for col in frame.columns:
        m = re.fullmatch(r"(.+)_h(\d+)", str(col))
        if m:
            steps.setdefault(m.group(1), []).append((int(m.group(2)), col))
    if "label" not in frame.columns and not steps:
        raise DataValidationError("needs a 'label' column (classification) or '<target>_h<k>' columns of actual "
                                  "values (forecasting)", source=source)
    cols = ["prediction_id", *(["label"] if "label" in frame.columns else
                               [c for t in steps.values() for _, c in sorted(t)])]
    missing = frame[cols].isna().to_numpy()
    if missing.any():
        r, c = map(int, np.argwhere(missing)[0])
        raise DataValidationError("missing value", source=source, column=cols[c], row=r + 1)
    ids = frame["prediction_id"].astype(str).tolist()
    if "label" in frame.columns:
        return [(pid, {"label": str(v)}) for pid, v in zip(ids, frame["label"])]
    out = []
    for i, pid in enumerate(ids):
        values = {}
        for target, cs in steps.items():
            raw = [frame[c].iloc[i] for _, c in sorted(cs)]
            try:
                values[target] = [float(v) for v in raw]
            except (TypeError, ValueError):
                raise DataValidationError("not a number", source=source, row=i + 1, value=raw) from None
        out.append((pid, {"values": values}))
    return out


def _n(output: dict) -> int:
    return len(next(iter(output.values()))) if output else 0


# ---- the store ---------------------------------------------------------------------------------------------------
class InferenceLog:
    def __init__(self, url: str):
        self.url = url
        self.engine = open_database(url, metadata, "inference log")

    def dispose(self) -> None:
        self.engine.dispose()

    def write_predictions(self, rows: list[dict]) -> None:
        if rows:
            with self.engine.begin() as c:
                c.execute(predictions.insert(), [encode(r) for r in rows])

    def add_actuals(self, model_name: str, items: list[tuple[str, dict]], source: str = "api",
                    where: str = "actuals[{i}]") -> int:
        """Record actuals [(prediction_id, {"values": {...}} | {"label": ...})] for predictions of `model_name`,
        all or none: an unknown id, an id that already has an actual, or an actual of the wrong shape records
        nothing."""
        ids = [pid for pid, _ in items]
        dup = sorted({p for p in ids if ids.count(p) > 1})
        if dup:
            raise DataValidationError(f"prediction id(s) {dup[:5]} appear more than once in this request")
        with self.engine.begin() as c:
            found = {}
            for part in _chunks(ids, 500):
                q = sa.select(predictions.c.prediction_id, predictions.c.output).where(
                    predictions.c.model_name == model_name, predictions.c.prediction_id.in_(part))
                found.update({r.prediction_id: json.loads(r.output) for r in c.execute(q)})
            unknown = [p for p in ids if p not in found]
            if unknown:
                raise UnknownPredictions(unknown)
            for i, (pid, actual) in enumerate(items):
                check_actual(found[pid], actual, where.format(i=i, n=i + 1) + f" ({pid})")
            have = []
            for part in _chunks(ids, 500):
                have += [r[0] for r in c.execute(sa.select(actuals.c.prediction_id)
                                                 .where(actuals.c.prediction_id.in_(part)))]
            if have:
                raise DuplicateActuals(sorted(have))
            t = now()
            try:
                c.execute(actuals.insert(), [{"prediction_id": pid, "model_name": model_name, "source": source,
                                              "actual": json.dumps({k: v for k, v in a.items() if v is not None}),
                                              "created_at": t} for pid, a in items])
            except IntegrityError:  # a concurrent request recorded one of them first
                raise DuplicateActuals(ids) from None
        return len(items)

    def predictions(self, model_name: str, after_seq: int = 0) -> pd.DataFrame:
        """Predictions of a model after `after_seq`, oldest first, with their actual (None when none yet)."""
        return self._read(predictions.outerjoin(actuals, actuals.c.prediction_id == predictions.c.prediction_id),
                          [predictions.c.model_name == model_name, predictions.c.seq > after_seq], predictions.c.seq)

    def labelled(self, model_name: str, after_actual_seq: int = 0) -> pd.DataFrame:
        """Predictions joined with the actuals recorded after `after_actual_seq` (whenever the prediction was made)."""
        return self._read(predictions.join(actuals, actuals.c.prediction_id == predictions.c.prediction_id),
                          [actuals.c.model_name == model_name, actuals.c.seq > after_actual_seq], actuals.c.seq)

    def _read(self, joined, where: list, order) -> pd.DataFrame:
        """Prediction rows with their actual and its position, from `joined`, filtered and ordered."""
        q = (sa.select(predictions, actuals.c.actual, actuals.c.seq.label("actual_seq")).select_from(joined)
             .where(*where).order_by(order))
        with self.engine.connect() as c:
            return pd.read_sql(q, c)

    def last_seqs(self, model_name: str) -> tuple[int, int]:
        with self.engine.connect() as c:
            p = c.execute(sa.select(sa.func.max(predictions.c.seq))
                          .where(predictions.c.model_name == model_name)).scalar()
            a = c.execute(sa.select(sa.func.max(actuals.c.seq)).where(actuals.c.model_name == model_name)).scalar()
        return int(p or 0), int(a or 0)


def _chunks(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


# ---- the background writer -----------------------------------------------------------------------------------------
class LogWriter:
    """Writes prediction rows to the log from a thread, in batches, at least every `flush_seconds`. A failed write is
    retried; rows that still cannot be written are appended to `fallback` (JSON lines) rather than lost."""

    def __init__(self, store: InferenceLog, flush_seconds: float = 0.2, fallback: str | Path | None = None,
                 retries: int = 3):
        self.store, self.flush_seconds, self.retries = store, flush_seconds, retries
        self.fallback = Path(fallback) if fallback else None
        self.queue: queue.Queue = queue.Queue()
        self.written = self.failed = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def put(self, rows: list[dict]) -> None:
        for r in rows:
            self.queue.put(r)

    @property
    def backlog(self) -> int:
        return self.queue.qsize()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every row put before this call is written (or set aside)."""
        done = threading.Event()
        self.queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self.queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            items = [first]
            deadline = time.monotonic() + self.flush_seconds
            while not isinstance(items[-1], threading.Event) and items[-1] is not None and len(items) < 2000:
                try:
                    items.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            rows = [r for r in items if isinstance(r, dict)]
            if rows:
                self._write(rows)
            for r in items:
                if isinstance(r, threading.Event):
                    r.set()
            if items[-1] is None:
                return

    def _write(self, rows: list[dict]) -> None:
        for attempt in range(self.retries):
            try:
                self.store.write_predictions(rows)
                self.written += len(rows)
                return
            except Exception as e:  # the database is away: retry, then set the rows aside
                self.last_error = f"{type(e).__name__}: {first_line(e)}"
                log.warning("inference log write failed (attempt %d): %s", attempt + 1, self.last_error)
                time.sleep(0.2 * (attempt + 1))
        self.failed += len(rows)
        if self.fallback is not None:
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            with self.fallback.open("a") as f:
                for r in rows:
                    f.write(json.dumps(encode(r), default=str) + "\n")
            log.error("%d prediction row(s) could not be written to the inference log; kept in %s", len(rows),
                      self.fallback)
        else:
            log.error("%d prediction row(s) could not be written to the inference log and were dropped", len(rows))
