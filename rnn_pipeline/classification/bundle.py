"""The classifier as a self-contained model (weights + encoder JSON): raw texts or numeric sequences in, the label and
every class's probability out (see rnn_pipeline.bundle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnn_pipeline.bundle import LABEL, labelled, load_weights, save_files
from rnn_pipeline.classification.reading import read_sequences, read_texts, sequences_from_arrays
from rnn_pipeline.classification.sequences import Encoder, pad
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.models import ClassifierSpec, RNNClassifier


@dataclass
class ClassifierBundle:
    """Raw texts or raw numeric sequences -> the label and the probability of every class."""

    model: RNNClassifier
    encoder: Encoder
    classes: list[str]
    text_column: str | None
    sequence_column: str
    step_column: str | None

    task = "classification"
    unit = "items"
    output_noun = "class probability"

    @property
    def kind(self) -> str:
        return self.encoder.kind

    @property
    def reads(self) -> str:
        """What a request sends (the PredictRequest field): texts or numeric sequences."""
        return "texts" if self.kind == "text" else "sequences"

    @property
    def id_column(self) -> str:
        return self.sequence_column

    @property
    def input_columns(self) -> list[str]:
        return [self.text_column] if self.kind == "text" else list(self.encoder.channels)

    @property
    def output_columns(self) -> list[str]:
        return [LABEL, *(f"prob_{c}" for c in self.classes)]

    def preprocess_json(self) -> dict:
        return {"format": 1, "task": "classification", "model": self.model.spec.to_json(),
                "encoder": self.encoder.to_json(), "classes": self.classes, "text_column": self.text_column,
                "sequence_column": self.sequence_column, "step_column": self.step_column}

    def save(self, folder: str | Path) -> dict[str, str]:
        return save_files(folder, self.preprocess_json(), self.model)

    @classmethod
    def from_meta(cls, meta: dict, weights_path: str | Path) -> ClassifierBundle:
        model = load_weights(RNNClassifier(ClassifierSpec(**meta["model"])), weights_path)
        return cls(model, Encoder.from_json(meta["encoder"]), meta["classes"], meta["text_column"],
                   meta["sequence_column"], meta["step_column"])

    def predict_proba(self, items: list, source: str = "input", ids=None, chunk: int = 256) -> np.ndarray:
        """Raw items (texts, or (steps, channels) arrays in original units) -> (N, classes) probabilities. Batches
        hold items of similar length; packing makes the result independent of the batching anyway."""
        encoded, _ = self.encoder.encode(items, source, ids)
        return self.predict_encoded(encoded, chunk)

    def predict_encoded(self, encoded: list[np.ndarray], chunk: int = 256) -> np.ndarray:
        out = np.zeros((len(encoded), len(self.classes)), dtype="float64")
        order = np.argsort([len(e) for e in encoded], kind="stable")
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(order), chunk):
                part = order[i:i + chunk]
                x, lengths = pad([torch.from_numpy(encoded[j]) for j in part], self.model.spec.padding)
                out[part] = torch.softmax(self.model(x, lengths), dim=-1).double().numpy()
        return out

    def read_frame(self, frame: pd.DataFrame, source: str = "input") -> tuple[np.ndarray, list]:
        """A user's frame (the training format; a label column, if any, is ignored) -> (ids, raw items)."""
        if self.kind == "text":
            raw = read_texts(frame, source, self.text_column, None)
            ids = (frame[self.sequence_column].to_numpy() if self.sequence_column in frame.columns
                   else np.arange(len(frame)))
            return ids, raw.items
        step = self.step_column if self.step_column in frame.columns else None
        raw = read_sequences(frame, source, self.sequence_column, step, self.encoder.channels, None)
        return raw.ids, raw.items

    def items_from_list(self, data) -> tuple[np.ndarray, list]:
        """Parsed JSON (a list of texts, or of sequences) -> (ids 0..n-1, raw items)."""
        if not isinstance(data, list) or not data:
            raise DataValidationError("expected a non-empty JSON list of "
                                      + ("texts" if self.kind == "text" else "sequences"))
        if self.kind == "text":
            bad = [i for i, t in enumerate(data) if not isinstance(t, str)]
            if bad:
                raise DataValidationError("not a text", row=bad[0] + 1, value=data[bad[0]])
            frame = pd.DataFrame({self.text_column: data})
            return np.arange(len(data)), read_texts(frame, "input", self.text_column, None).items
        return np.arange(len(data)), sequences_from_arrays(data, self.encoder.channels)

    def items_frame(self, items: list) -> pd.DataFrame:
        """The inverse of read_frame, with ids 0..n-1: the frame a client sends to the pyfunc."""
        if self.kind == "text":
            return pd.DataFrame({self.sequence_column: np.arange(len(items), dtype="int64"),
                                 self.text_column: list(items)})
        lengths = [len(x) for x in items]
        frame = pd.DataFrame(np.concatenate(items) if items else np.zeros((0, len(self.input_columns))),
                             columns=self.input_columns)
        frame.insert(0, self.sequence_column, np.repeat(np.arange(len(items), dtype="int64"), lengths))
        return frame

    def result_frame(self, ids, proba: np.ndarray) -> pd.DataFrame:
        """(N, classes) probabilities -> one row per item: its id, the label and `prob_<class>` columns."""
        out = pd.DataFrame(proba, columns=self.output_columns[1:])
        out.insert(0, LABEL, self._labels(proba))
        out.insert(0, self.sequence_column, ids)
        return out

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        ids, items = self.read_frame(frame)
        return self.result_frame(ids, self.predict_proba(items, ids=ids))

    # ---- serving: the same methods on both bundles ----------------------------------------------------------
    def signature(self):
        """The pyfunc's MLflow signature: one text per row, or one row per sequence step, in; labels and class
        probabilities out."""
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        ident = ColSpec("long", self.sequence_column, required=self.kind == "numeric")
        cols = ([ColSpec("string", self.text_column)] if self.kind == "text"
                else [ColSpec("double", c) for c in self.input_columns])
        outputs = Schema([ColSpec("long", self.sequence_column), ColSpec("string", LABEL)]
                         + [ColSpec("double", c) for c in self.output_columns[1:]])
        return ModelSignature(inputs=Schema([ident, *cols]), outputs=outputs)

    def about(self) -> str:
        """What the model does and what a request sends, in one phrase (the service's /docs description)."""
        return f"classifying {self.reads} into {', '.join(map(str, self.classes))} (send `{self.reads}`)"

    def describe(self) -> dict:
        """What a client needs to know to call the model (GET /metadata)."""
        return {"task": self.task, "input": self.kind, "input_columns": self.input_columns, "classes": self.classes,
                "max_length": self.encoder.max_length}

    def warm_up(self) -> None:
        """One prediction on a neutral input: a model that cannot answer is never swapped in."""
        self.predict_proba(["warm up"] if self.kind == "text" else [np.zeros((1, len(self.input_columns)))])

    def request_example(self) -> tuple[str, dict]:
        """A valid POST /predict body for this model (the OpenAPI example: /docs' "Try it out" answers 200 with it)
        and a line saying what it is: two texts, or one short sequence of the model's channels (values inside the
        range it was scaled on)."""
        if self.kind == "text":
            return ("two texts -> each one's label and class probabilities",
                    {"texts": ["The first text to classify.", "And a second, shorter one."]})
        steps = min(5, self.encoder.max_length)
        wave = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(steps) / steps)
        sc = self.encoder.scaling
        seq = [[float(f"{v:.4g}") for v in sc.offset + sc.scale * w] for w in wave]
        return (f"one sequence of {steps} steps, each step the values of {', '.join(self.input_columns)} "
                "-> its label and class probabilities", {"sequences": [seq]})

    def model_inputs(self, data: pd.DataFrame | list, source: str) -> tuple[np.ndarray, list]:
        """A table in the training format, or a parsed JSON list -> (ids, raw items). Encoding them once here makes
        a sequence that is too long (too_long: error) fail before anything is scored."""
        ids, items = self.items_from_list(data) if isinstance(data, list) else self.read_frame(data, source)
        self.encoder.encode(items, source, ids)
        return ids, items

    def inputs_frame(self, items: list, ids=None) -> pd.DataFrame:
        """The inverse of model_inputs: the frame a client sends to the pyfunc."""
        return self.items_frame(items)

    def labelled(self, out: pd.DataFrame, ids) -> pd.DataFrame:
        """The pyfunc's answer to inputs_frame(items, ids): one row per item, in their order, with their ids."""
        return labelled(out, self.id_column, ids)

    def request_inputs(self, req, limits) -> list:
        """A PredictRequest's `texts` or `sequences` -> raw items. `limits`: the serving settings (max_steps,
        max_text_chars)."""
        if self.kind == "text":
            if req.texts is None:
                raise DataValidationError("this model classifies texts: send 'texts'")
            for i, t in enumerate(req.texts):
                if not t.strip():
                    raise DataValidationError(f"texts[{i}] is empty")
                if len(t) > limits.max_text_chars:
                    raise DataValidationError(f"texts[{i}] has {len(t)} characters; the limit is "
                                              f"{limits.max_text_chars} (serving.max_text_chars)")
            return list(req.texts)
        if req.sequences is None:
            raise DataValidationError(f"this model classifies numeric sequences of channels {self.input_columns}: "
                                      "send 'sequences'")
        for i, s in enumerate(req.sequences):
            if len(s) > limits.max_steps:
                raise DataValidationError(f"sequences[{i}] has {len(s)} steps; the limit is {limits.max_steps} "
                                          "(serving.max_steps)")
        return sequences_from_arrays(req.sequences, self.input_columns)

    def predict_inputs(self, items: list, ids=None, source: str = "input") -> np.ndarray:
        """What model_inputs or request_inputs returned -> (N, classes) probabilities."""
        return self.predict_proba(items, source, ids)

    def _labels(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[proba.argmax(1)] if len(proba) else np.array([], dtype=object)

    def answers(self, proba: np.ndarray, x=None) -> list[dict]:
        """(N, classes) probabilities -> one JSON answer per item: the label and every class's probability."""
        labels = self._labels(proba)
        return [{"label": labels[i], "probabilities": dict(zip(self.classes, proba[i].tolist()))}
                for i in range(len(proba))]

    def log_records(self, items: list, proba: np.ndarray) -> list[tuple[dict, dict, str | None]]:
        """(inputs, output, label) per item, as the inference log keeps them: the text, or the sequence's steps."""
        labels = self._labels(proba)
        return [({"text": items[i]} if self.kind == "text"
                 else {"columns": self.input_columns, "values": np.asarray(items[i]).tolist()},
                 {"label": labels[i], "probabilities": dict(zip(self.classes, proba[i].tolist()))}, labels[i])
                for i in range(len(proba))]
