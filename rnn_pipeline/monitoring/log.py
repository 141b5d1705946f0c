"""Monitoring from the inference log: the logged inputs of recent predictions stand in for a batch file, and the
predictions joined with the actuals posted later give the champion's live error.

Forecasting: each logged window is described like a reference window (level, spread and step of each column: the
same definitions as `monitor.window_features`), and the live error is the MSE of the logged forecasts against the
posted actual values. Classification: the logged texts or sequences are the batch; the live accuracy and macro F1
compare the logged labels with the posted ones.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from rnn_pipeline.classification.sequences import RawSequences


def forecast_windows(frame: pd.DataFrame, columns: list[str], window: int) -> np.ndarray:
    """The logged input windows that the champion reads (same columns, same length) as (N, L, F)."""
    out = []
    for text in frame["inputs"]:
        d = json.loads(text)
        if d.get("columns") == list(columns) and len(d["values"]) == window:
            out.append(d["values"])
    return np.asarray(out, dtype="float64").reshape(len(out), window, len(columns))


def window_stats(x: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """Level (mean), spread (std) and step (mean absolute first difference) of every column of every window. A window
    whose values are too large to describe (a statistic overflows) is left out."""
    feats = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for j, c in enumerate(columns):
            feats[f"{c}_level"] = x[:, :, j].mean(1)
            feats[f"{c}_spread"] = x[:, :, j].std(1)
            if x.shape[1] > 1:
                feats[f"{c}_step"] = np.abs(np.diff(x[:, :, j], axis=1)).mean(1)
    out = pd.DataFrame(feats)
    return out[np.isfinite(out.to_numpy()).all(1)].reset_index(drop=True)


def forecast_errors(labelled: pd.DataFrame, targets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Logged forecasts and their actual values, each (N, H, T)."""
    if len(labelled) == 0:
        return np.zeros((0, 1, len(targets))), np.zeros((0, 1, len(targets)))
    pred = [json.loads(t) for t in labelled["output"]]
    true = [json.loads(t)["values"] for t in labelled["actual"]]
    y_pred = np.asarray([[p[t] for t in targets] for p in pred], dtype="float64").transpose(0, 2, 1)
    y_true = np.asarray([[a[t] for t in targets] for a in true], dtype="float64").transpose(0, 2, 1)
    return y_true, y_pred


def items(frame: pd.DataFrame, kind: str, channels: list[str], with_labels: bool = False) -> RawSequences:
    """The logged texts or sequences (of the champion's channels) as a batch; with_labels: the posted labels."""
    keep, out = [], []
    for i, text in enumerate(frame["inputs"]):
        d = json.loads(text)
        if kind == "text" and "text" in d:
            out.append(d["text"])
            keep.append(i)
        elif kind == "numeric" and d.get("columns") == list(channels):
            out.append(np.asarray(d["values"], dtype="float64").reshape(-1, len(channels)))
            keep.append(i)
    labels = None
    if with_labels:
        labels = np.asarray([json.loads(frame["actual"].iloc[i])["label"] for i in keep], dtype=object)
    return RawSequences(kind, out, np.arange(len(out)), labels, None, list(channels) if kind == "numeric" else [])


def logged_proba(frame: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """The logged class probabilities in `classes` order (a class a logged model did not know: 0)."""
    out = np.zeros((len(frame), len(classes)))
    for i, text in enumerate(frame["output"]):
        probs = json.loads(text)["probabilities"]
        out[i] = [probs.get(c, 0.0) for c in classes]
    return out
