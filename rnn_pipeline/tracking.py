"""MLflow tracking helpers every flow shares: pointing MLflow at the configured stores for one flow, the experiment
of a config, the dataset a run learned from, and what a run records about the code it ran (git commit, package
versions)."""

from __future__ import annotations

import os
import subprocess
import warnings
from contextlib import contextmanager
from importlib import metadata

import mlflow
import mlflow.data
import pandas as pd

# MLflow's UI reads this experiment tag to pick its view; the value is the UI's CUSTOM_MODEL_DEVELOPMENT kind (without
# it, MLflow 3 may open an experiment in GenAI mode: traces, no metric or parameter columns)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
STACK = ("torch", "prefect", "mlflow", "optuna", "pandas", "numpy", "scikit-learn", "evidently")


@contextmanager
def mlflow_stores(uri: str):
    """Point MLflow's fluent API at `uri` for the duration of one flow, then restore what was there.
    (mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment, which would otherwise make the
    next flow in the same process mistake it for the user's own setting.)"""
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved_tracking, saved_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        mlflow.set_registry_uri(saved_registry)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def experiment_for(name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with its artifacts under `artifact_location`, when given) if new. It is
    tagged a model-training experiment (EXPERIMENT_KIND), so that MLflow's UI opens it on its runs table rather than
    in GenAI mode; an existing experiment without the tag gets it (one that has any kind keeps it)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if EXPERIMENT_KIND_TAG not in (exp.tags or {}):
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location and f"{artifact_location}/{name}",
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


SCHEMA_SAMPLE_ROWS = 10_000


def log_dataset(frame: pd.DataFrame, name: str, source: str, digest: str, context: str = "training") -> None:
    """Log `frame` as the active run's input dataset (the runs table's Dataset column, the run page's Datasets
    section): its name, `digest` (given: MLflow would otherwise hash the frame), `source` (a file path, or a built-in
    dataset name `builtin:<name>`), the schema and the row count. Cheap for big frames: nothing is copied, and the
    schema is inferred from the first SCHEMA_SAMPLE_ROWS rows (MLflow would read every value of a text column); the
    profile still counts every row."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    src = CodeDatasetSource({"builtin": source.split(":", 1)[1]}) if source.startswith("builtin:") else source
    # MLflow's UserWarnings here are about model signatures (integer columns) and paths that "can be interpreted in
    # multiple ways" (as two kinds of local file): neither matters to a record of the data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=src, name=name, digest=digest)
        if len(frame) > SCHEMA_SAMPLE_ROWS:  # PandasDataset.schema is a cached property: fill it from the sample
            dataset.__dict__["schema"] = mlflow.data.from_pandas(frame.head(SCHEMA_SAMPLE_ROWS), source=src,
                                                                 name=name, digest=digest).schema
        mlflow.log_input(dataset, context=context)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """The installed version of each library of the stack."""
    out = {}
    for p in STACK:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out
