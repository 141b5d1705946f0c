"""Where state lives. Embedded defaults: one folder (default ./.rnn_pipeline) holding one SQLite file per tool.
Each store takes a URL instead (PostgreSQL for teams). The edge (CLI, flow) resolves this once and passes it on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rnn_pipeline.config import StoresConfig


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
    when the config leaves the MLflow store at its default."""
    root = Path(cfg.root).resolve()
    mlflow_uri = cfg.mlflow_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
    # A database or file store has no server to keep artifacts: they go under the root. A tracking server
    # (http, https, databricks) decides for itself.
    served = mlflow_uri.split(":", 1)[0] in ("http", "https", "databricks")
    artifacts = None if served else (root / "artifacts").as_uri()
    optuna_url = cfg.optuna_url or f"sqlite:///{root / 'optuna.db'}"
    monitoring_url = cfg.monitoring_url or f"sqlite:///{root / 'monitoring.db'}"
    return Stores(root, mlflow_uri, artifacts, optuna_url, monitoring_url)


def ensure(stores: Stores) -> None:
    stores.root.mkdir(parents=True, exist_ok=True)
    (stores.root / "artifacts").mkdir(exist_ok=True)
