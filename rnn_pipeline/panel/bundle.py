"""A global forecaster of many series as a self-contained model: the weights, and each series' scaling (fitted on
its own training rows) in the preprocessing JSON. A request names the series of every history (`id_column`); the
model scales each history with its series' numbers and answers in that series' units."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rnn_pipeline.bundle import WINDOW_ID, load_weights
from rnn_pipeline.data.scaling import Scaling
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.forecasting.ensemble import spec_from_json
from rnn_pipeline.models import build_forecaster

SEP = " / "  # between a series id and a window id in one key


@dataclass
class PanelInputs:
    """Windows with the series each belongs to: what a panel bundle's model_inputs and request_inputs give, and its
    predict_inputs and log_records take (sliced in chunks by batch scoring as an array would be)."""

    x: np.ndarray  # (N, L, F), original units
    keys: list  # the series id of each, or "<series> / <window id>"

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, rows: slice) -> PanelInputs:
        return PanelInputs(self.x[rows], self.keys[rows])


@dataclass
class PanelBundle(ForecastBundle):
    """ForecastBundle's model over many series: `series_ids` with one Scaling each (`scalings`). `scaling` is the
    first series' (what needs one set of numbers: the request example)."""

    id_column: str = "series"
    series_ids: list[str] = field(default_factory=list)
    scalings: list[Scaling] = field(default_factory=list)

    task = "panel"

    def __post_init__(self):
        self._index = {s: k for k, s in enumerate(self.series_ids)}
        # every series' scaling as two (S, F) arrays, stacked once: a request gathers its series' rows
        self._offsets = np.stack([s.offset for s in self.scalings]) if self.scalings else np.zeros((0, 0))
        self._scales = np.stack([s.scale for s in self.scalings]) if self.scalings else np.zeros((0, 0))

    def preprocess_json(self) -> dict:
        return {**super().preprocess_json(), "task": "panel", "id_column": self.id_column,
                "series": {"ids": self.series_ids, "scaling": [s.to_json() for s in self.scalings]}}

    @classmethod
    def from_meta(cls, meta: dict, weights_path) -> PanelBundle:
        model = load_weights(build_forecaster(spec_from_json(meta["model"])), weights_path)
        scalings = [Scaling.from_json(s) for s in meta["series"]["scaling"]]
        return cls(model, scalings[0], meta["target_columns"], meta["feature_columns"], meta["window"],
                   meta["horizon"], meta.get("intervals"), meta.get("calendar"), id_column=meta["id_column"],
                   series_ids=list(meta["series"]["ids"]), scalings=scalings)

    def series_index(self, ids) -> np.ndarray:
        """Series ids -> their positions; an id the model was not trained on is an error naming it."""
        out = np.empty(len(ids), dtype=np.int64)
        for i, s in enumerate(ids):
            k = self._index.get(str(s))
            if k is None:
                known = ", ".join(repr(x) for x in self.series_ids[:5]) + (" ..." if len(self.series_ids) > 5 else "")
                raise DataValidationError(f"unknown series {str(s)!r}: the model was trained on {len(self.series_ids)} "
                                          f"series ({known}) and scales each with its own training statistics",
                                          column=self.id_column, value=str(s))
            out[i] = k
        return out

    def target_scale(self, series=None) -> np.ndarray:
        """Each forecast's targets' scales, (N, 1, T) (the first series' when `series` is None)."""
        scale = self._scales[:, : len(self.target_columns)]
        return scale[np.zeros(1, dtype=np.int64) if series is None else np.asarray(series)][:, None, :]

    def _series_of(self, x):
        return None if not isinstance(x, PanelInputs) else self.series_index([p[0] for p in self._split(x.keys)])

    def predict_windows(self, x: np.ndarray, series: np.ndarray | None = None, quantiles: bool = False) -> np.ndarray:
        """x: (N, L, F) in original units, `series`: each window's series position (default: the first series)
        -> (N, H, T) forecasts in original units (with `quantiles`, a quantile model's (N, H, T, Q))."""
        series = np.zeros(len(x), dtype=np.int64) if series is None else np.asarray(series)
        off = self._offsets[series][:, None, :]  # (N, 1, F)
        scale = self._scales[series][:, None, :]
        z = ((x - off) / scale).astype("float32")
        if getattr(self.model, "reads_series", False):  # a series embedding: each window's series index, last
            z = np.concatenate([z, np.broadcast_to(series.astype("float32")[:, None, None], (len(z), z.shape[1], 1))],
                               axis=2)
        y = self.run_model(z, quantiles)
        T = len(self.target_columns)
        if quantiles:
            return y * scale[..., :T, None] + off[..., :T, None]
        return y * scale[..., :T] + off[..., :T]

    def quantile_inputs(self, x, ids=None) -> np.ndarray | None:
        if not self.quantile_levels:
            return None
        if isinstance(x, PanelInputs):
            x, ids = x.x, x.keys
        return self.predict_windows(x, self.series_index([p[0] for p in self._split(ids)]), quantiles=True)

    def frame_to_windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Rows of history of one or more series (`id_column` names each row's) -> one window per series: the last
        L rows of each, in row order. With a `window_id` column too, one window per (series, window id): several
        histories of one series in one call. Returns (keys, (N, L, F)): the series id, or "<series> / <window id>"."""
        if self.id_column not in frame.columns:
            raise DataValidationError(f"input lacks column '{self.id_column}': the model forecasts many series, "
                                      "and each row must name its series")
        ids = frame[self.id_column].astype(str).to_numpy(dtype=object)
        self.series_index(pd.unique(ids))
        keys = ids if WINDOW_ID not in frame.columns else ids + SEP + frame[WINDOW_ID].astype(str).to_numpy(dtype=object)
        return ForecastBundle.frame_to_windows(self, frame.drop(columns=[self.id_column]).assign(**{WINDOW_ID: keys}))

    def _split(self, keys) -> list[tuple[str, str | None]]:
        """Keys from frame_to_windows -> (series id, window id or None)."""
        out = []
        for k in keys:
            k = str(k)
            if k in self._index or SEP not in k:
                out.append((k, None))
            else:
                sid, wid = k.rsplit(SEP, 1)
                out.append((sid, wid))
        return out

    def result_frame(self, keys, y: np.ndarray, x=None) -> pd.DataFrame:
        parts = self._split(keys)
        series = self.series_index([p[0] for p in parts]) if self.levels else None
        q = self.quantile_inputs(x.x if isinstance(x, PanelInputs) else x, keys) if x is not None else None
        result = pd.concat([pd.DataFrame(y.reshape(len(parts), -1), columns=self.output_columns),
                            self.interval_frame(y, series, q), self.quantile_frame(q, len(parts))], axis=1)
        result.insert(0, self.id_column, [p[0] for p in parts])
        if any(p[1] is not None for p in parts):
            result.insert(1, WINDOW_ID, [p[1] for p in parts])
        return result

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        keys, x = self.frame_to_windows(frame)
        return self.result_frame(keys, self.predict_inputs(x, keys), PanelInputs(x, list(keys)))

    def windows_frame(self, x: np.ndarray, ids=None, window_ids: bool = False) -> pd.DataFrame:
        """(N, L, F) windows of the series `ids` (default: the first series) -> the long frame a client sends; with
        `window_ids`, numbered 0..N-1 in a `window_id` column (several windows of one series)."""
        n = len(x)
        ids = [self.series_ids[0]] * n if ids is None else [str(s) for s in ids]
        frame = pd.DataFrame(x.reshape(n * self.window, -1), columns=self.input_columns)
        frame.insert(0, self.id_column, np.repeat(np.asarray(ids, dtype=object), self.window))
        if window_ids:
            frame.insert(1, WINDOW_ID, np.repeat(np.arange(n, dtype="int64"), self.window))
        return frame

    def labelled(self, out: pd.DataFrame, ids) -> pd.DataFrame:
        """The pyfunc's answer to inputs_frame(x, ids) (in their order: windows are answered as they come) ->
        one row per key, as result_frame labels them."""
        y = out[self.output_columns].to_numpy().reshape(len(out), self.horizon, len(self.target_columns))
        result = self.result_frame(ids, y)
        quantiles = [c for c in self.quantile_columns if c in out.columns]
        if quantiles:  # as the pyfunc answered them
            result = pd.concat([result, out[quantiles].reset_index(drop=True)], axis=1)
        return result

    def signature(self):
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec("string", self.id_column), ColSpec("long", WINDOW_ID, required=False)]
                        + self.input_specs())
        outputs = Schema([ColSpec("string", self.id_column), ColSpec("string", WINDOW_ID, required=False)]
                         + [ColSpec("double", c) for c in [*self.output_columns, *self.interval_columns,
                                                            *self.quantile_columns]])
        return ModelSignature(inputs=inputs, outputs=outputs)

    def describe(self) -> dict:
        return {**super().describe(), "id_column": self.id_column, "n_series": len(self.series_ids)}

    def about(self) -> str:
        return (f"forecasting {', '.join(self.target_columns)} {self.horizon} step(s) ahead for any of "
                f"{len(self.series_ids)} series from histories of {', '.join(self.request_columns)}, at least "
                f"{self.window} steps, each row naming its series in '{self.id_column}'")

    def model_inputs(self, data, source: str) -> tuple[list, PanelInputs]:
        """A table of history rows naming their series -> (keys, the windows with their keys)."""
        keys, x = super().model_inputs(data, source)
        return list(keys), PanelInputs(x, list(keys))

    def predict_inputs(self, x, ids=None, source: str = "input") -> np.ndarray:
        """PanelInputs (or windows with their keys in `ids`) -> (N, H, T) forecasts, each in its series' units."""
        if isinstance(x, PanelInputs):
            x, ids = x.x, x.keys
        if ids is None:
            raise DataValidationError("a panel model needs each history's series id")
        return self.predict_windows(x, self.series_index([p[0] for p in self._split(ids)]))

    def inputs_frame(self, x, ids=None) -> pd.DataFrame:
        """The inverse of model_inputs: the frame a client sends to the pyfunc (numbered windows of their series)."""
        if isinstance(x, PanelInputs):
            x, ids = x.x, x.keys
        return self.windows_frame(x, None if ids is None else [p[0] for p in self._split(ids)], window_ids=True)

    def request_inputs(self, req, limits) -> PanelInputs:
        """A PredictRequest's `series`, each naming its series in `id` -> the last L steps of each, with the ids."""
        if req.series is None:
            raise DataValidationError(f"this model forecasts series: send 'series' with an 'id' and histories of "
                                      f"{self.request_columns}")
        missing = [i for i, s in enumerate(req.series) if s.id is None]
        if missing:
            raise DataValidationError(f"series[{missing[0]}] has no 'id': this model forecasts many series, and scales "
                                      f"each history with its own series' numbers (one of {len(self.series_ids)})")
        keys = [str(s.id) for s in req.series]
        self.series_index(keys)
        return PanelInputs(super().request_inputs(req, limits), keys)

    def request_example(self) -> tuple[str, dict]:
        text, body = super().request_example()
        body["series"][0] = {"id": self.series_ids[0], **body["series"][0]}
        return f"{text} (series {self.series_ids[0]!r})", body

    def log_records(self, x, y: np.ndarray) -> list[tuple[dict, dict, str | None]]:
        """As ForecastBundle's, each input also naming its series (and window id, if one was sent)."""
        keys = x.keys if isinstance(x, PanelInputs) else [None] * len(y)
        records = super().log_records(x.x if isinstance(x, PanelInputs) else x, y)
        out = []
        for (inp, forecast, label), key in zip(records, keys, strict=True):
            sid, wid = self._split([key])[0] if key is not None else (None, None)
            out.append(({"series": sid, **({"window_id": wid} if wid is not None else {}), **inp}, forecast, label))
        return out
