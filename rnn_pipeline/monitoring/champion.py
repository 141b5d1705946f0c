"""The champion under watch: its registered model, the reference it was trained on, and the task's monitoring picked
once from that reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow

from rnn_pipeline import registry
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import RegistryError
from rnn_pipeline.monitoring.drift import REFERENCE_META
from rnn_pipeline.monitoring.task import TaskMonitor
from rnn_pipeline.stores import Stores


def _bool(v) -> bool:
    return str(v) == "True"


# the tuned hyperparameters a 'reuse' retrain takes from the champion's run, by their types
PARAM_TYPES = {"cell": str, "hidden": int, "layers": int, "dropout": float, "lr": float, "batch_size": int,
               "window": int, "optimizer": str, "bidirectional": _bool, "pooling": str, "embedding_dim": int,
               "architecture": str, "norm": str, "channels": str, "segment": int, "affine": _bool, "highway": _bool,
               "channel_embedding": _bool, "loss": str}
MODEL_KEYS = ("cell", "hidden", "layers", "dropout", "bidirectional", "pooling", "embedding_dim", "architecture", "norm",
              "channels", "segment", "affine", "highway", "channel_embedding")
TRAINING_KEYS = ("lr", "batch_size", "optimizer", "loss")


def incoming_folder(cfg: PipelineConfig, st: Stores) -> Path:
    if cfg.monitoring.incoming is None:
        return st.root / "incoming" / cfg.name
    p = Path(cfg.monitoring.incoming)
    return p if p.is_absolute() else Path(cfg.base_dir) / p


def work_folder(cfg: PipelineConfig, st: Stores) -> Path:
    return st.root / "monitoring" / cfg.name


def monitor_class(task: str) -> type[TaskMonitor]:
    """The monitoring of the task called `task` (its Task's `monitor`)."""
    from rnn_pipeline.tasks import task_class

    return task_class(task).monitor


def for_reference(folder: Path, cfg: PipelineConfig, bundle, version: str) -> TaskMonitor:
    """The task's monitoring for a reference folder, chosen by the task it records (forecasting before tasks
    were recorded)."""
    task = json.loads((folder / REFERENCE_META).read_text()).get("task", "forecasting")
    return monitor_class(task).load(folder, cfg, bundle, version)


class Champion:
    """The current champion with the reference it was registered with (downloaded once per version)."""

    def __init__(self, cfg: PipelineConfig, st: Stores):
        client = mlflow.MlflowClient()
        mv = registry.current_champion(client, cfg.model_name)
        if mv is None:
            raise RegistryError(f"model '{cfg.model_name}' has no champion to monitor: train one first "
                                f"(rnn-pipeline train --config {cfg.name})")
        self.version = str(mv.version)
        self.run_id = mv.run_id
        ref_uri = (mv.tags or {}).get("reference")
        if not ref_uri:
            raise RegistryError(f"champion v{self.version} of '{cfg.model_name}' was registered without its "
                                "reference data (before monitoring existed): retrain it once with rnn-pipeline train")
        local = work_folder(cfg, st) / f"reference-{self.run_id}"  # by run: a re-created model reuses numbers
        if not (local / REFERENCE_META).exists():
            _download(ref_uri, local)
        self.model = registry.load(f"models:/{cfg.model_name}/{self.version}")
        self.bundle = registry.bundle_of(self.model)
        self.monitor = for_reference(local, cfg, self.bundle, self.version)
        params = client.get_run(self.run_id).data.params
        self.params = {k: PARAM_TYPES[k](params[f"best.{k}"]) for k in PARAM_TYPES if f"best.{k}" in params}


def _download(uri: str, local: Path) -> None:
    """The reference artifact folder to `local`, whole or not at all."""
    tmp = local.with_name(local.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
    found = next(tmp.rglob(REFERENCE_META)).parent
    shutil.rmtree(local, ignore_errors=True)
    found.rename(local)
    shutil.rmtree(tmp, ignore_errors=True)


def retrain_overrides(cfg: PipelineConfig, champ: Champion, data_path: Path) -> dict:
    """The config overrides of a retrain on `data_path`: the task's data and split, and with tuning 'reuse' the
    champion's hyperparameters (no search)."""
    r = cfg.monitoring.retrain
    out = champ.monitor.retrain_config(data_path)
    if r.tuning == "reuse" and champ.params:
        p = champ.params
        out["model"] = {k: p[k] for k in MODEL_KEYS if k in p}
        out["training"] = {k: p[k] for k in TRAINING_KEYS if k in p}
        if "window" in p:
            out["features"] = {"window": p["window"]}
        out["tuning"] = {"n_trials": 0}
    elif r.n_trials is not None:
        out["tuning"] = {"n_trials": r.n_trials}
    return out
