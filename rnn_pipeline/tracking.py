"""MLflow tracking helpers every flow shares: pointing MLflow at the configured stores for one flow, the experiment
of a config, and what a run records about the code it ran (git commit, package versions)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from importlib import metadata

import mlflow

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
    """The id of experiment `name`, created (with its artifacts under `artifact_location`, when given) if new."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location and f"{artifact_location}/{name}")


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
