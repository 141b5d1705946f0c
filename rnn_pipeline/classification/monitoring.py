"""Monitoring for sequence classification: a batch of texts or sequences (labels optional) against the champion's
reference (the labelled data it was trained on).

- Input drift: per-item descriptors through Evidently. Text: Evidently's text descriptors (length, word count,
  share of non-letter characters) plus the share of tokens outside the model's vocabulary (computed with the
  model's own tokenizer: Evidently's OOV descriptor needs an English word list downloaded at run time).
  Numeric sequences: length and each channel's mean and spread.
- Prediction drift: the distribution of the champion's predicted labels (Evidently, categorical).
- When the batch carries labels: the champion's accuracy and macro F1 on it against its test scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.classification.sequences import RawSequences, items_frame, read_items
from rnn_pipeline.errors import DataValidationError

REFERENCE_DATA, REFERENCE_META = "data.parquet", "reference.json"
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
