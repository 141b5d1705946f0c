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


# The runs table's saved view (MLflow's "Views" menu; an experiment tag holding the view's state, as the UI's own
# "Save as new view" writes it): the columns a user compares runs by, instead of none
VIEW_ID = "rnn-pipeline"
VIEW_NAME = "Pipeline: scores, baselines and gate"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_PARAMS = ("architecture", "hidden", "window", "pooling")
VIEW_TAGS = ("gate.decision",)


def runs_view_columns(run) -> list[str]:
    """The saved view's columns for an experiment whose latest parent run is `run`: its gate metric on the test set,
    its skill against each baseline (1 - its error over the baseline's: above 0 beats it), the tuned architecture and
    the gate's decision. Few, so that they fit beside the run names (the version description has the full table).
    MLflow's column keys: metrics.`name`, params.`name`, tags.`name`."""
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    names = [f"test_{params.get('gate.metric', '')}", *sorted(m for m in metrics if m.startswith("skill_vs_"))]
    columns = [f"metrics.`{m}`" for m in names if m in metrics]
    columns += [f"params.`best.{p}`" for p in VIEW_PARAMS if f"best.{p}" in params]
    columns += [f"tags.`{t}`" for t in VIEW_TAGS if t in tags]
    return columns


def save_runs_view(client: mlflow.MlflowClient, experiment_id: str, run) -> str:
    """Write (or refresh) the pipeline's saved view of the runs table from `run`'s keys, newest first; a view of that
    id that a user saved by hand under another name is left alone. Returns the view's URL fragment (for the UI
    address: `#/experiments/<id>/runs?viewStateShareKey=rnn-pipeline`)."""
    import json
    import time

    old = client.get_experiment(experiment_id).tags.get(VIEW_TAG)
    created = int(time.time() * 1000)
    if old:
        try:
            envelope = json.loads(old)
            if envelope.get("name") != VIEW_NAME:
                return view_fragment(experiment_id)
            created = int(envelope.get("createdAt", created))
        except (ValueError, AttributeError):
            pass
    state = {"selectedColumns": runs_view_columns(run), "orderByKey": "attributes.start_time", "orderByAsc": False}
    envelope = {"name": VIEW_NAME, "createdAt": created, "updatedAt": int(time.time() * 1000),
                "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    return view_fragment(experiment_id)


def view_fragment(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}"


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
