"""Monitoring for sequence classification: a batch of texts or sequences (labels optional) against the champion's
reference (the labelled data it was trained on).

- Input drift: per-item descriptors through Evidently. Text: Evidently's text descriptors (length, word count,
  share of non-letter characters) plus the share of tokens outside the model's vocabulary (computed with the
  model's own tokenizer: Evidently's OOV descriptor needs an English word list downloaded at run time).
  Numeric sequences: length and each channel's mean and spread.
- Prediction drift: the distribution of the champion's predicted labels (Evidently, categorical).
- When the batch carries labels: the champion's accuracy and macro F1 on it against its test scores.

From the inference log, the logged texts or sequences are the batch; the live accuracy and macro F1 compare the
logged labels with the posted ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.classification.reading import RawSequences, items_frame, read_items
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring.task import NothingToRetrain, Outcome, TaskMonitor, fmt, frames, rows_since

REFERENCE_DATA, REFERENCE_META = "data.parquet", monitor.REFERENCE_META
PREDICTED = "predicted_label"


def write_reference(folder: str | Path, data, bundle, metrics: dict, d, digest: str) -> Path:
    """The training items (every split, labelled, in the user's format) and what monitoring needs about them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items_frame(data.raw, d).to_parquet(folder / REFERENCE_DATA, index=False)
    meta = {"format": 1, "task": "classification", "kind": data.kind, "classes": data.classes,
            "test_accuracy": float(metrics["accuracy"]), "test_f1_macro": float(metrics["f1_macro"]),
            "n_items": len(data.raw), "channels": data.raw.channels, "data_digest": digest,
            "train_index": data.split["train"].tolist()}
    (folder / REFERENCE_META).write_text(json.dumps(meta, indent=2))
    return folder


def read_reference(folder: str | Path, d) -> tuple[RawSequences, dict]:
    folder = Path(folder)
    meta = json.loads((folder / REFERENCE_META).read_text())
    raw = read_items(pd.read_parquet(folder / REFERENCE_DATA), str(folder / REFERENCE_DATA), d, labels=True)
    return raw, meta


def descriptors(raw: RawSequences, bundle) -> pd.DataFrame:
    """One row per item: the input descriptors (see the module docstring) and the champion's predicted label."""
    from evidently import DataDefinition, Dataset
    from evidently.descriptors import NonLetterCharacterPercentage, TextLength, WordCount

    proba = bundle.predict_proba(raw.items, ids=raw.ids)
    predicted = np.asarray(bundle.classes, dtype=object)[proba.argmax(1)]
    if raw.kind == "text":
        frame = pd.DataFrame({"text": raw.items})
        ds = Dataset.from_pandas(frame, data_definition=DataDefinition(text_columns=["text"]),
                                 descriptors=[TextLength("text", alias="length"), WordCount("text", alias="words"),
                                              NonLetterCharacterPercentage("text", alias="non_letter_share")])
        out = ds.as_dataframe()[["length", "words", "non_letter_share"]].astype("float64").reset_index(drop=True)
        encoded, _ = bundle.encoder.encode(raw.items)
        out["oov_share"] = bundle.encoder.text.oov_share(encoded)
    else:
        cols = {"length": [float(len(x)) for x in raw.items]}
        for j, c in enumerate(raw.channels):
            cols[f"{c}_mean"] = [float(x[:, j].mean()) for x in raw.items]
            cols[f"{c}_std"] = [float(x[:, j].std()) for x in raw.items]
        out = pd.DataFrame(cols)
    out[PREDICTED] = predicted
    return out


def label_scores(raw: RawSequences, proba: np.ndarray, classes: list[str]) -> dict | None:
    """Accuracy and macro F1 of the champion on a labelled batch; None when the batch has no labels. A label the
    champion has never seen counts as an error (it cannot predict it) and is listed."""
    from sklearn.metrics import accuracy_score, f1_score

    if raw.labels is None:
        return None
    predicted = np.asarray(classes, dtype=object)[proba.argmax(1)]
    truth = raw.labels.astype(object)
    unseen = sorted(set(truth) - set(classes))
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "n_labelled": int(len(truth)), "unseen_labels": unseen}


def check_batch(raw: RawSequences, source: str, channels: list[str]) -> None:
    """A monitoring batch must hold items the champion can read."""
    if len(raw) == 0:
        raise DataValidationError("no items", source=source)
    if raw.kind == "numeric" and raw.channels != list(channels):
        missing = [c for c in channels if c not in raw.channels]
        raise DataValidationError(f"channels {raw.channels} do not match the champion's {channels}"
                                  + (f" (missing {missing})" if missing else ""), source=source)


def retrain_items(reference: RawSequences, batches: list[pd.DataFrame], d, policy: str,
                  recent_points: int) -> pd.DataFrame | None:
    """The champion's items and the labelled batches since, in the training format (None: no labelled batch).
    Sequence ids are prefixed by their origin so that batches cannot collide; the 'recent' policy keeps the last
    `recent_points` items."""
    labelled = [b for b in batches if d.label_column in b.columns]
    if not labelled:
        return None
    parts = [items_frame(reference, d), *labelled]
    if reference.kind == "numeric":
        parts = [p.assign(**{d.sequence_column: f"{k}:" + p[d.sequence_column].astype(str)})
                 for k, p in enumerate(parts)]
    out = pd.concat(parts, ignore_index=True)
    if policy == "recent":
        if reference.kind == "text":
            out = out.iloc[-recent_points:]
        else:
            keep = pd.unique(out[d.sequence_column])[-recent_points:]
            out = out[out[d.sequence_column].isin(keep)]
    return out.reset_index(drop=True)


# ---- the inference log ----------------------------------------------------------------------------------------
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


# ---- the task's monitoring ------------------------------------------------------------------------------------
class ClassificationMonitor(TaskMonitor):
    """Items are exchangeable: no state carries from batch to batch; a retrain learns from the champion's items and
    the labelled batches it has not seen."""

    task = "classification"
    SCORE_COLUMNS = (("accuracy", "champion_accuracy"), ("f1", "champion_f1"))

    @staticmethod
    def error_threshold(cfg) -> float | None:
        return None  # a labelled batch is judged on its accuracy, not on an error ratio

    @staticmethod
    def score_text(row: dict) -> str:
        acc = row.get("champion_accuracy")
        return "no labels" if acc is None else f"accuracy {acc:.3f} vs {row['reference_accuracy']:.3f} on test"

    @classmethod
    def load(cls, folder: Path, cfg, bundle, version: str) -> ClassificationMonitor:
        """The items the champion learned from, described like a batch; shuffled so that a block of them is a random
        sample (for the calibrated thresholds)."""
        reference, meta = read_reference(folder, cfg.data)
        desc = descriptors(reference.subset(np.asarray(meta["train_index"])), bundle)
        return cls(reference, meta, desc.sample(frac=1.0, random_state=0).reset_index(drop=True), bundle, version)

    def initial_state(self, accepted: list[dict]) -> None:
        return None

    def read_batch(self, raw: pd.DataFrame, source: str, cfg, state) -> RawSequences:
        batch = read_items(raw, source, cfg.data, labels=False)
        check_batch(batch, source, self.bundle.encoder.channels)
        return batch

    def judge(self, cfg, state, batch: RawSequences) -> Outcome:
        """Evidently drift of the item descriptors and of the predicted labels; with labels, the champion's accuracy
        and macro F1 on the batch against its test accuracy."""
        drift = self._drift(cfg, batch)
        scores = label_scores(batch, self.bundle.predict_proba(batch.items, ids=batch.ids), self.bundle.classes)
        out = self._outcome(cfg, drift, scores, len(batch))
        if scores and scores["unseen_labels"]:
            out.warnings.append(f"batch labels {scores['unseen_labels']} were never seen by champion v{self.version}: "
                                "counted as errors (a retrain on this batch learns them)")
        return out

    def accept(self, state, raw, batch, cfg):
        return state, items_frame(batch, cfg.data), {"n_rows": len(raw)}

    def judge_log(self, cfg, current: pd.DataFrame, labelled: pd.DataFrame) -> Outcome:
        """Descriptor and predicted-label drift of the logged items, and the champion's live accuracy and macro F1
        (its logged labels against the posted ones)."""
        mc, b = cfg.monitoring, self.bundle
        batch = items(current, b.kind, b.input_columns)
        if len(batch) < mc.min_windows:
            raise DataValidationError(f"only {len(batch)} logged item(s) match the champion's input; monitoring "
                                      f"needs at least {mc.min_windows}")
        drift = self._drift(cfg, batch)
        truth = items(labelled, b.kind, b.input_columns, with_labels=True)
        scores = label_scores(truth, logged_proba(labelled, b.classes), b.classes) if len(truth) else None
        return self._outcome(cfg, drift, scores, len(batch))

    def _drift(self, cfg, batch: RawSequences) -> monitor.DriftResult:
        mc = cfg.monitoring
        return monitor.drift_report(self.features, descriptors(batch, self.bundle), mc.drift_method,
                                    mc.drift_threshold, mc.drift_calibration, categorical=(PREDICTED,))

    def _outcome(self, cfg, drift: monitor.DriftResult, scores: dict | None, n_items: int) -> Outcome:
        """With at least min_windows labelled items, accuracy below test accuracy minus accuracy_drop is
        'degraded'; otherwise the drift decides."""
        mc, ref = cfg.monitoring, self.meta["test_accuracy"]
        degraded = bool(scores and scores["n_labelled"] >= mc.min_windows
                        and scores["accuracy"] < ref - mc.accuracy_drop)
        v = "degraded" if degraded else monitor.verdict(drift.share, None, mc.drift_share, mc.error_ratio)
        return Outcome(drift, n_items, v, labels=scores, reference_accuracy=ref,
                       prediction_drift=drift.scores.get(PREDICTED, {}).get("drifted"))

    def log_frame(self, answered: pd.DataFrame, cfg) -> pd.DataFrame | None:
        """Every logged item with its posted label."""
        truth = items(answered, self.bundle.kind, self.bundle.input_columns, with_labels=True)
        return items_frame(truth, cfg.data) if len(truth) else None

    def retrain_data(self, cfg, state, accepted: list[dict]) -> pd.DataFrame:
        """The champion's items plus the labelled batches it has not learned from, split afresh."""
        r = cfg.monitoring.retrain
        data = retrain_items(self.reference, frames(rows_since(accepted, self.version)), cfg.data, r.policy,
                             r.recent_points)
        if data is None:
            raise NothingToRetrain("retrain skipped (no new labels)", "no labelled batch since the champion",
                                   f"no labelled batch has arrived since champion v{self.version} was trained: nothing "
                                   "new to retrain on")
        return data

    @staticmethod
    def retrain_config(data_path: Path) -> dict:
        # the champion's items and the labelled batches, split afresh (not by the configured split column)
        return {"data": {"builtin": None, "path": str(data_path), "split_column": None}, "split": {}}

    def describe(self, outcome: Outcome) -> str:
        acc = (outcome.labels or {}).get("accuracy")
        return (f"drifted share {outcome.drift.share:.2f}, predicted labels drifted: {outcome.prediction_drift}, "
                f"champion v{self.version} accuracy {fmt(acc)} vs {outcome.reference_accuracy:.4g} on its test items")
