"""Batch scoring: a file, a URL or a database table -> the registered model's predictions (Parquet or CSV) and the
inference log, all or nothing.

Inputs are in the training format (as `rnn-pipeline predict` reads them). Forecasting: rows of history, grouped by
`window_id` (one forecast per group, from its last L rows). Classification: one text per row, or one row per
sequence step; or a .json list of texts or of sequences.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.classification.bundle import ClassifierBundle
from rnn_pipeline.data.datasets import read_csv, read_parquet, read_table
from rnn_pipeline.db import safe_url
from rnn_pipeline.errors import DataValidationError, first_line
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.serving import inference_log as ilog

SUFFIXES = (".csv", ".parquet", ".pq", ".json")


def read_input(source: str, table: str | None = None) -> tuple[pd.DataFrame | list, str]:
    """A path, a file:// or http(s):// URL (CSV, Parquet or JSON by suffix), or with `table` a database table at a
    SQLAlchemy URL. Returns (a frame, or a JSON list; a name for the log)."""
    if table is not None:
        import sqlalchemy as sa

        try:
            engine = sa.create_engine(source)
            with engine.connect() as c:
                frame = pd.read_sql_table(table, c)
            engine.dispose()
        except Exception as e:
            raise DataValidationError(f"table '{table}' cannot be read: {first_line(e)}", source=safe_url(source)) from None
        return frame, f"table:{table}"
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        source = urllib.request.url2pathname(parsed.path)
    elif parsed.scheme in ("http", "https"):
        suffix = Path(parsed.path).suffix.lower()
        if suffix not in SUFFIXES:
            raise DataValidationError(f"the URL's path must end in one of {', '.join(SUFFIXES)}", source=source)
        try:
            with urllib.request.urlopen(source, timeout=60) as r:
                data = r.read()
        except OSError as e:
            raise DataValidationError(f"cannot be downloaded: {e}", source=source) from None
        return _parse_bytes(data, suffix, source), source
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise DataValidationError(f"unsupported URL scheme '{parsed.scheme}' (use a path, file://, http(s)://, or "
                                  "--table with a database URL)", source=source)
    path = Path(source)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise DataValidationError("file not found", source=str(path))
        return _parse_bytes(path.read_bytes(), ".json", str(path)), path.name
    return read_table(path), path.name


def _parse_bytes(data: bytes, suffix: str, source: str) -> pd.DataFrame | list:
    try:
        if suffix == ".json":
            return json.loads(data)
        if suffix in (".parquet", ".pq"):
            return read_parquet(data, source)
        return read_csv(data, source)  # a header naming a column twice is refused, as for training files
    except DataValidationError:
        raise
    except Exception as e:
        raise DataValidationError(f"cannot be parsed as {suffix[1:].upper()}: {first_line(e)}", source=source) from None


def model_inputs(bundle: ForecastBundle | ClassifierBundle, data: pd.DataFrame | list, source: str):
    """(ids, inputs): forecasting windows (N, L, F) or raw items (the bundle's model_inputs); every problem names
    the source."""
    try:
        return bundle.model_inputs(data, source)
    except DataValidationError as e:
        raise DataValidationError(e.problem, source=source, column=e.column, row=e.row, value=e.value) from None


def score(bundle, ids, inputs, chunk: int = 10_000, progress=None) -> tuple[pd.DataFrame, list]:
    """Predict in chunks. Returns (the result frame, the outputs per chunk for the log). `progress(done, total)`."""
    n = len(ids)
    parts, outputs = [], []
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        t0 = time.perf_counter()
        y = bundle.predict_inputs(inputs[lo:hi], ids=ids[lo:hi])
        # a quantile forecaster answers its quantiles too (from the inputs)
        frame = (bundle.result_frame(ids[lo:hi], y, inputs[lo:hi]) if getattr(bundle, "quantile_levels", ())
                 else bundle.result_frame(ids[lo:hi], y))
        finite = np.isfinite(y.reshape(hi - lo, -1)).all(1)
        if not finite.all():
            bad = ids[lo + int(np.flatnonzero(~finite)[0])]
            raise DataValidationError(f"the prediction for item {bad!r} is not a finite number: its input is far "
                                      "outside the range the model was trained on")
        outputs.append((lo, hi, y, (time.perf_counter() - t0) * 1000 / max(1, hi - lo)))
        parts.append(frame)
        if progress is not None:
            progress(hi, n)
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=bundle.output_columns)), outputs


def log_rows(bundle, inputs, outputs: list, prediction_ids: list[str], version: str, model_name: str,
             source: str) -> list[dict]:
    """Inference-log rows for what `score` predicted, chunk by chunk (each with its chunk's time per item)."""
    rows = []
    for lo, hi, y, ms in outputs:
        rows += ilog.prediction_rows(bundle, inputs[lo:hi], y, prediction_ids[lo:hi], version, model_name, source, ms)
    return rows


def write_output(frame: pd.DataFrame, path: str | Path) -> Path:
    """Parquet (default, and for .parquet/.pq) or CSV (.csv), written to a temporary name that the caller renames
    to `path` (Path.replace) once everything else succeeded: a reader never sees half a file, a failure leaves none."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    if path.suffix.lower() == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    return tmp
