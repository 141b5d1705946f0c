"""Where state lives. Embedded defaults: one folder (default ./.rnn_pipeline) holding one SQLite file per tool.
Each store takes a URL instead (PostgreSQL for teams). The edge (CLI, flow) resolves this once and passes it on."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rnn_pipeline import db
from rnn_pipeline.config import StoresConfig
from rnn_pipeline.errors import PipelineError


@dataclass(frozen=True)
class Stores:
    root: Path
    mlflow_uri: str
    artifact_location: str | None  # None: the tracking server decides
    optuna_url: str
    monitoring_url: str

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def last_run_file(self) -> Path:
        return self.root / "last_run.json"


def resolve(cfg: StoresConfig, env: Mapping[str, str]) -> Stores:
    """Config wins over the environment for the stores it names; MLFLOW_TRACKING_URI keeps its usual meaning
    when the config leaves the MLflow store at its default, and RNNP_OPTUNA_URL / RNNP_MONITORING_URL do the same
    for the study and monitoring stores (`rnn-pipeline stack env` prints all three for the running stack)."""
    root = Path(cfg.root).resolve()
    mlflow_uri = cfg.mlflow_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    # A database or file store has no server to keep artifacts: they go under the root. A tracking server
    # (http, https, databricks) decides for itself.
    served = mlflow_uri.split(":", 1)[0] in ("http", "https", "databricks")
    artifacts = None if served else (root / "artifacts").as_uri()
    optuna_url = cfg.optuna_url or env.get("RNNP_OPTUNA_URL") or f"sqlite:///{root / 'optuna.db'}"
    monitoring_url = cfg.monitoring_url or env.get("RNNP_MONITORING_URL") or f"sqlite:///{root / 'monitoring.db'}"
    return Stores(root, mlflow_uri, artifacts, optuna_url, monitoring_url)


def ensure(stores: Stores) -> None:
    stores.root.mkdir(parents=True, exist_ok=True)
    (stores.root / "artifacts").mkdir(exist_ok=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for any other store."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


DEFAULT_ROOT = Path(StoresConfig.model_fields["root"].default)  # `make clean` deletes it


def check(stores: Stores) -> None:
    """Before any work: every SQLite store that exists opens and passes SQLite's integrity check, and the MLflow store
    is not missing beside the state of earlier runs (a deleted mlflow.db would otherwise be recreated silently, a new
    v1 promoted and the registry's history lost). One line naming the file, otherwise."""
    fresh = (f"move it away, or start over by deleting {stores.root}"
             + (" (`make clean`)" if stores.root.resolve() == DEFAULT_ROOT.resolve() else
                f" (`make clean` deletes only the default {DEFAULT_ROOT})"))
    for what, url in (("MLflow store", stores.mlflow_uri), ("Optuna store", stores.optuna_url),
                      ("monitoring store", stores.monitoring_url)):
        path = sqlite_file(url)
        if path is None or not path.exists():
            continue
        try:
            # another pass or run may be writing it: wait for its lock, as the stores' own connections do
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=db.SQLITE_BUSY_TIMEOUT_S)
            try:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                # busy, not damaged: nothing to restore or delete
                raise PipelineError(f"{what} {path} stayed locked by another process for "
                                    f"{db.SQLITE_BUSY_TIMEOUT_S:.0f} s ({e}): try again when the other run has "
                                    f"finished") from None
            raise PipelineError(f"{what} {path} cannot be read ({e}): restore it from a backup, or {fresh}") from None
        if problems != ["ok"]:
            raise PipelineError(f"{what} {path} is damaged ({'; '.join(problems)[:300]}): restore it from a backup, "
                                f"or {fresh}")
    mlflow_db = sqlite_file(stores.mlflow_uri)
    if mlflow_db is not None and not mlflow_db.exists():
        earlier = [p for p in (sqlite_file(stores.optuna_url), stores.root / "artifacts")
                   if p is not None and p.exists() and (p.is_file() or any(p.iterdir()))]
        if earlier:
            raise PipelineError(f"MLflow store {mlflow_db} is missing, but {', '.join(map(str, earlier))} hold(s) the "
                                f"state of earlier runs: its registry history (versions, aliases) would be lost. "
                                f"Restore it from a backup, or {fresh}")
