"""The self-contained model: weights (safetensors) + preprocessing (JSON). Loading it unpickles nothing.
ForecastBundle forecasts; ClassifierBundle classifies texts or numeric sequences.

The same object answers in the flow (in memory), in the registered MLflow pyfunc, in the CLI and in any
server, always in original units. Both classes have the same methods for what differs between the tasks where a
model is served (the signature, warm-up, request and file parsing, the answers, the inference-log records), so the
serving layer holds no task branches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from rnn_pipeline.classification.sequences import Encoder, pad, read_sequences, read_texts, sequences_from_arrays
from rnn_pipeline.data.scaling import Scaling
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.models import ClassifierSpec, Forecaster, ForecasterSpec, RNNClassifier, build_forecaster

WINDOW_ID = "window_id"
PREPROCESS_FILE, WEIGHTS_FILE = "preprocess.json", "weights.safetensors"


@dataclass
class ForecastBundle:
    """The last L steps of a history (targets and features) -> the next H steps of every target."""

    model: Forecaster
    scaling: Scaling
    target_columns: list[str]
    feature_columns: list[str]
    window: int
    horizon: int

    task = "forecasting"
    reads = "series"         # what a request sends (the PredictRequest field)
    unit = "windows"         # what one prediction is made from
    output_noun = "forecast"
    id_column = WINDOW_ID

    @property
    def input_columns(self) -> list[str]:
        return [*self.target_columns, *self.feature_columns]

    @property
    def output_columns(self) -> list[str]:
        return [f"{t}_h{h + 1}" for h in range(self.horizon) for t in self.target_columns]

    def preprocess_json(self) -> dict:
        return {"format": 1, "task": "forecasting", "model": self.model.spec.to_json(),
                "scaling": self.scaling.to_json(), "target_columns": self.target_columns,
                "feature_columns": self.feature_columns, "window": self.window, "horizon": self.horizon}

    def save(self, folder: str | Path) -> dict[str, str]:
        return _save(folder, self.preprocess_json(), self.model)

    @classmethod
    def load(cls, preprocess_path: str | Path, weights_path: str | Path) -> ForecastBundle:
        return cls.from_meta(json.loads(Path(preprocess_path).read_text()), weights_path)

    @classmethod
    def from_meta(cls, meta: dict, weights_path: str | Path) -> ForecastBundle:
        model = _weights(build_forecaster(ForecasterSpec(**meta["model"])), weights_path)
        return cls(model, Scaling.from_json(meta["scaling"]), meta["target_columns"], meta["feature_columns"],
                   meta["window"], meta["horizon"])

    def predict_windows(self, x: np.ndarray) -> np.ndarray:
        """x: (N, L, F) in original units -> (N, H, T) forecasts in original units."""
        z = self.scaling.transform(x).astype("float32")
        self.model.eval()
        with torch.inference_mode():
            out = [self.model(torch.from_numpy(z[i:i + 4096])).numpy() for i in range(0, len(z), 4096)]
        y = np.concatenate(out) if out else np.zeros((0, self.horizon, len(self.target_columns)), "float32")
        return self.scaling.inverse(y.astype("float64"), list(range(len(self.target_columns))))

    def frame_to_windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Rows of history -> one window per `window_id` (the whole frame is one history when the column is
        absent): the last L rows of each group, in row order. Returns (ids, (N, L, F))."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise DataValidationError(f"input lacks column(s) {missing}; the model needs {self.input_columns}")
        arr = np.empty((len(frame), len(self.input_columns)))
        for c, col in enumerate(self.input_columns):
            raw = frame[col]
            num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64")
            bad = ~np.isfinite(num)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise DataValidationError("not a finite number", column=col, row=r + 1, value=raw.iloc[r])
            arr[:, c] = num
        ids = frame[WINDOW_ID].to_numpy() if WINDOW_ID in frame.columns else np.zeros(len(frame), dtype="int64")
        groups = pd.Series(np.arange(len(ids))).groupby(ids, sort=False).indices  # id -> row positions, in order
        order = np.array(list(groups.keys()))
        out = np.empty((len(order), self.window, arr.shape[1]))
        for i, rows in enumerate(groups.values()):
            if len(rows) < self.window:
                wid = order[i].item() if isinstance(order[i], np.generic) else order[i]
                raise DataValidationError(f"window {wid!r} has {len(rows)} rows of history; the model needs "
                                          f"the last {self.window}", column=WINDOW_ID)
            out[i] = arr[rows[-self.window:]]
        return order, out

    def result_frame(self, ids, y: np.ndarray) -> pd.DataFrame:
        """(N, H, T) forecasts -> one row per window: its id and `<target>_h<k>` columns."""
        result = pd.DataFrame(y.reshape(len(ids), -1), columns=self.output_columns)
        result.insert(0, WINDOW_ID, ids)
        return result

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        ids, x = self.frame_to_windows(frame)
        return self.result_frame(ids, self.predict_windows(x))

    def windows_frame(self, x: np.ndarray) -> pd.DataFrame:
        """The inverse of frame_to_windows: (N, L, F) -> the long frame a client would send."""
        n = len(x)
        frame = pd.DataFrame(x.reshape(n * self.window, -1), columns=self.input_columns)
        frame.insert(0, WINDOW_ID, np.repeat(np.arange(n, dtype="int64"), self.window))
        return frame

    # ---- serving: the same methods on both bundles ----------------------------------------------------------
    def signature(self):
        """The pyfunc's MLflow signature: history rows in, one row of forecasts per window out."""
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec("long", WINDOW_ID, required=False)] + [ColSpec("double", c) for c in self.input_columns])
        outputs = Schema([ColSpec("long", WINDOW_ID)] + [ColSpec("double", c) for c in self.output_columns])
        return ModelSignature(inputs=inputs, outputs=outputs)

    def describe(self) -> dict:
        """What a client needs to know to call the model (GET /metadata)."""
        return {"task": self.task, "input_columns": self.input_columns, "target_columns": self.target_columns,
                "window": self.window, "horizon": self.horizon}

    def warm_up(self) -> None:
        """One prediction on a neutral input: a model that cannot answer is never swapped in."""
        self.predict_windows(np.zeros((1, self.window, len(self.input_columns))))

    def model_inputs(self, data: pd.DataFrame | list, source: str) -> tuple[np.ndarray, np.ndarray]:
        """A table in the training format -> (ids, (N, L, F) windows)."""
        if not isinstance(data, pd.DataFrame):
            raise DataValidationError("forecasting reads a table of history rows, not JSON")
        return self.frame_to_windows(data)

    def inputs_frame(self, x: np.ndarray) -> pd.DataFrame:
        """The inverse of model_inputs: the frame a client sends to the pyfunc."""
        return self.windows_frame(x)

    def request_inputs(self, req, limits) -> np.ndarray:
        """A PredictRequest's `series` (histories, oldest first) -> (N, L, F) windows, the last L steps of each.
        `limits`: the serving settings (max_steps)."""
        cols = self.input_columns
        if req.series is None:
            raise DataValidationError(f"this model forecasts series: send 'series' with histories of {cols}")
        x = np.empty((len(req.series), self.window, len(cols)))
        for i, s in enumerate(req.series):
            missing = [c for c in cols if c not in s.history]
            extra = [c for c in s.history if c not in cols]
            if missing or extra:
                raise DataValidationError(f"series[{i}].history: the model reads columns {cols}"
                                          + (f"; missing {missing}" if missing else "")
                                          + (f"; unknown {extra}" if extra else ""))
            lengths = {c: len(s.history[c]) for c in cols}
            n = lengths[cols[0]]
            if len(set(lengths.values())) != 1:
                raise DataValidationError(f"series[{i}].history: columns differ in length {lengths}")
            if n > limits.max_steps:
                raise DataValidationError(f"series[{i}].history has {n} steps; the limit is {limits.max_steps} "
                                          "(serving.max_steps)")
            if n < self.window:
                raise DataValidationError(f"series[{i}].history has {n} steps; the model needs the last "
                                          f"{self.window}")
            for j, c in enumerate(cols):
                x[i, :, j] = s.history[c][n - self.window:]
        return x

    def predict_inputs(self, x: np.ndarray, ids=None, source: str = "input") -> np.ndarray:
        """What model_inputs or request_inputs returned -> (N, H, T) forecasts in original units."""
        return self.predict_windows(x)

    def answers(self, y: np.ndarray) -> list[dict]:
        """(N, H, T) forecasts -> one JSON answer per window: per target, the next H values."""
        return [{"forecast": {c: y[i, :, j].tolist() for j, c in enumerate(self.target_columns)}}
                for i in range(len(y))]

    def log_records(self, x: np.ndarray, y: np.ndarray) -> list[tuple[dict, dict, str | None]]:
        """(inputs, output, label) per window, as the inference log keeps them: the window's rows and the forecast
        as plain lists (monitoring reads them back)."""
        return [({"columns": self.input_columns, "values": x[i].tolist()},
                 {c: y[i, :, j].tolist() for j, c in enumerate(self.target_columns)}, None) for i in range(len(y))]


def _save(folder: str | Path, meta: dict, model: torch.nn.Module) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PREPROCESS_FILE).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return {"preprocess": str(folder / PREPROCESS_FILE), "weights": str(folder / WEIGHTS_FILE)}


def _weights(model: torch.nn.Module, weights_path: str | Path) -> torch.nn.Module:
    model.load_state_dict(load_file(str(weights_path)))
    model.eval()
    return model


LABEL = "label"


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
        return _save(folder, self.preprocess_json(), self.model)

    @classmethod
    def from_meta(cls, meta: dict, weights_path: str | Path) -> ClassifierBundle:
        model = _weights(RNNClassifier(ClassifierSpec(**meta["model"])), weights_path)
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

    def describe(self) -> dict:
        """What a client needs to know to call the model (GET /metadata)."""
        return {"task": self.task, "input": self.kind, "input_columns": self.input_columns, "classes": self.classes,
                "max_length": self.encoder.max_length}

    def warm_up(self) -> None:
        """One prediction on a neutral input: a model that cannot answer is never swapped in."""
        self.predict_proba(["warm up"] if self.kind == "text" else [np.zeros((1, len(self.input_columns)))])

    def model_inputs(self, data: pd.DataFrame | list, source: str) -> tuple[np.ndarray, list]:
        """A table in the training format, or a parsed JSON list -> (ids, raw items). Encoding them once here makes
        a sequence that is too long (too_long: error) fail before anything is scored."""
        ids, items = self.items_from_list(data) if isinstance(data, list) else self.read_frame(data, source)
        self.encoder.encode(items, source, ids)
        return ids, items

    def inputs_frame(self, items: list) -> pd.DataFrame:
        """The inverse of model_inputs: the frame a client sends to the pyfunc."""
        return self.items_frame(items)

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

    def answers(self, proba: np.ndarray) -> list[dict]:
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


def load_bundle(preprocess_path: str | Path, weights_path: str | Path) -> ForecastBundle | ClassifierBundle:
    meta = json.loads(Path(preprocess_path).read_text())
    cls = ClassifierBundle if meta.get("task", "forecasting") == "classification" else ForecastBundle
    return cls.from_meta(meta, weights_path)
