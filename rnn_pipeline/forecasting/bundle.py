"""The forecaster as a self-contained model (weights + preprocessing JSON), answering in original units: windows of
history in, H-step forecasts out (see rnn_pipeline.bundle)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rnn_pipeline.bundle import WINDOW_ID, labelled, load_weights, save_files
from rnn_pipeline.data.scaling import Scaling
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting import calendar, intervals
from rnn_pipeline.forecasting.ensemble import spec_from_json
from rnn_pipeline.models import Forecaster, build_forecaster


@dataclass
class ForecastBundle:
    """The last L steps of a history (targets and features) -> the next H steps of every target."""

    model: Forecaster
    scaling: Scaling
    target_columns: list[str]
    feature_columns: list[str]
    window: int
    horizon: int
    # prediction intervals: {"levels": [0.8, ...], "halfwidth": (levels, H, T) in scaled units} (see intervals.py);
    # None: none (models trained with evaluation.intervals: [], or by earlier code)
    intervals: dict | None = None
    # calendar features (features.calendar): {"cycles": [...], "time_column": ..., "timezone": ..., "example_time":
    # the training data's last `window` times}; their columns end feature_columns and are computed from a request's
    # times. None: none
    calendar: dict | None = None

    task = "forecasting"
    reads = "series"         # what a request sends (the PredictRequest field)
    unit = "windows"         # what one prediction is made from
    output_noun = "forecast"
    id_column = WINDOW_ID

    @property
    def input_columns(self) -> list[str]:
        return [*self.target_columns, *self.feature_columns]

    @property
    def calendar_columns(self) -> list[str]:
        return calendar.columns(self.calendar["cycles"]) if self.calendar else []

    @property
    def request_columns(self) -> list[str]:
        """The input columns a client sends (the calendar's come from the rows' times)."""
        cal = set(self.calendar_columns)
        return [c for c in self.input_columns if c not in cal]

    def with_calendar(self, frame: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
        """A history table with the calendar columns computed from its time column (kept where it already has them
        all, as the frames built from windows do)."""
        cols = self.calendar_columns
        if not cols or all(c in frame.columns for c in cols):
            return frame
        tcol = self.calendar["time_column"]
        if tcol not in frame.columns:
            raise DataValidationError(f"input lacks column '{tcol}': the model reads calendar features "
                                      f"({', '.join(self.calendar['cycles'])}) computed from each row's time",
                                      source=source)
        cal = calendar.frame(frame[tcol], self.calendar["cycles"], source, tcol, self.calendar.get("timezone"))
        cal.index = frame.index
        return pd.concat([frame.drop(columns=[c for c in cols if c in frame.columns]), cal], axis=1)

    @property
    def output_columns(self) -> list[str]:
        return [f"{t}_h{h + 1}" for h in range(self.horizon) for t in self.target_columns]

    @property
    def quantile_levels(self) -> tuple:
        """The quantile levels the network outputs (model.quantiles; () for a point model, or one from older code)."""
        return tuple(getattr(self.model, "quantile_levels", ()) or ())

    @property
    def quantile_columns(self) -> list[str]:
        """`<target>_h<k>_q<level>` ('q10' for 0.1), level by level, in the order of the point forecasts' columns."""
        return [f"{t}_h{h + 1}_q{intervals.label(q)}" for q in self.quantile_levels for h in range(self.horizon)
                for t in self.target_columns]

    def quantile_frame(self, q: np.ndarray | None, n: int) -> pd.DataFrame:
        """Quantile forecasts (N, H, T, Q) -> their columns (none for a point model)."""
        if q is None or not self.quantile_levels:
            return pd.DataFrame(index=range(n))
        return pd.DataFrame(np.moveaxis(q, -1, 1).reshape(n, -1), columns=self.quantile_columns)

    def quantile_inputs(self, x, ids=None) -> np.ndarray | None:
        """What model_inputs or request_inputs returned -> (N, H, T, Q) quantile forecasts (None: a point model)."""
        return self.predict_windows(x, quantiles=True) if self.quantile_levels else None

    def run_model(self, z: np.ndarray, quantiles: bool = False) -> np.ndarray:
        """The network on scaled windows (N, L, F), in chunks: (N, H, T), or with `quantiles` (N, H, T, Q)."""
        self.model.eval()
        with torch.inference_mode():
            out = [self.model(torch.from_numpy(z[i:i + 4096]), quantiles=True).numpy() if quantiles
                   else self.model(torch.from_numpy(z[i:i + 4096])).numpy() for i in range(0, len(z), 4096)]
        shape = (0, self.horizon, len(self.target_columns)) + ((len(self.quantile_levels),) if quantiles else ())
        return (np.concatenate(out) if out else np.zeros(shape, "float32")).astype("float64")

    @property
    def levels(self) -> list[float]:
        return list(self.intervals["levels"]) if self.intervals else []

    @property
    def interval_columns(self) -> list[str]:
        return intervals.interval_columns(self.target_columns, self.horizon, self.levels)

    def target_scale(self, series=None) -> np.ndarray:
        """Each target's scale (original units per scaled unit), shaped (1, 1, T) to broadcast over forecasts."""
        return self.scaling.scale[: len(self.target_columns)][None, None, :]

    def halfwidths(self, series=None) -> np.ndarray:
        """The intervals' half-widths in original units, (levels, N or 1, H, T) (`series`: panels, each forecast's)."""
        hw = np.asarray(self.intervals["halfwidth"], dtype="float64")  # (levels, H, T)
        return hw[:, None] * self.target_scale(series)[None]

    @property
    def interval_method(self) -> str:
        """'conformal' (the point forecast +- a calibrated half-width) or 'quantiles' (a quantile model's own
        quantiles at (1 - level) / 2 and (1 + level) / 2)."""
        return (self.intervals or {}).get("method", "conformal")

    def interval_bounds(self, y: np.ndarray, series=None, q: np.ndarray | None = None,
                        x=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(lo, hi) per level, each (N, H, T) in original units, for forecasts `y` (N, H, T): conformal around y, or
        from the quantiles `q` (N, H, T, Q) (computed from the inputs `x` when not given)."""
        if self.interval_method != "quantiles":
            return intervals.bounds(y, self.halfwidths(series))
        if q is None:
            q = self.predict_windows(x, quantiles=True) if series is None else \
                self.predict_windows(x, series, quantiles=True)
        return [(q[..., i], q[..., j]) for i, j in self.intervals["pairs"]]

    def interval_frame(self, y: np.ndarray, series=None, q: np.ndarray | None = None) -> pd.DataFrame:
        """The intervals' columns for forecasts `y` (N, H, T) (none without intervals; `q`: a quantile model's
        quantiles, for intervals from them)."""
        if not self.levels:
            return pd.DataFrame(index=range(len(y)))
        parts = [b.reshape(len(y), -1) for pair in self.interval_bounds(y, series, q) for b in pair]
        return pd.DataFrame(np.concatenate(parts, axis=1), columns=self.interval_columns)

    def preprocess_json(self) -> dict:
        return {"format": 1, "task": "forecasting", "model": self.model.spec.to_json(),
                "scaling": self.scaling.to_json(), "target_columns": self.target_columns,
                "feature_columns": self.feature_columns, "window": self.window, "horizon": self.horizon,
                **({"intervals": self.intervals} if self.intervals else {}),
                **({"calendar": self.calendar} if self.calendar else {})}

    def save(self, folder: str | Path) -> dict[str, str]:
        return save_files(folder, self.preprocess_json(), self.model)

    @classmethod
    def load(cls, preprocess_path: str | Path, weights_path: str | Path) -> ForecastBundle:
        return cls.from_meta(json.loads(Path(preprocess_path).read_text()), weights_path)

    @classmethod
    def from_meta(cls, meta: dict, weights_path: str | Path) -> ForecastBundle:
        model = load_weights(build_forecaster(spec_from_json(meta["model"])), weights_path)
        return cls(model, Scaling.from_json(meta["scaling"]), meta["target_columns"], meta["feature_columns"],
                   meta["window"], meta["horizon"], meta.get("intervals"), meta.get("calendar"))

    def predict_windows(self, x: np.ndarray, quantiles: bool = False) -> np.ndarray:
        """x: (N, L, F) in original units -> (N, H, T) forecasts in original units; with `quantiles` (a quantile
        model), (N, H, T, Q): every quantile."""
        y = self.run_model(self.scaling.transform(x).astype("float32"), quantiles)
        cols = list(range(len(self.target_columns)))
        if quantiles:
            return np.moveaxis(self.scaling.inverse(np.moveaxis(y, -1, 1), cols), 1, -1)
        return self.scaling.inverse(y, cols)

    def frame_to_windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Rows of history -> one window per `window_id` (the whole frame is one history when the column is
        absent): the last L rows of each group, in row order. Returns (ids, (N, L, F))."""
        frame = self.with_calendar(frame)
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise DataValidationError(f"input lacks column(s) {missing}; the model needs {self.request_columns}"
                                      + (f" and '{self.calendar['time_column']}'" if self.calendar else ""))
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

    def result_frame(self, ids, y: np.ndarray, x=None) -> pd.DataFrame:
        """(N, H, T) forecasts -> one row per window: its id and `<target>_h<k>` columns, the intervals' and, for a
        quantile model given the inputs `x`, the quantiles'."""
        q = self.quantile_inputs(x, ids) if x is not None else None
        result = pd.concat([pd.DataFrame(y.reshape(len(ids), -1), columns=self.output_columns),
                            self.interval_frame(y, None, q), self.quantile_frame(q, len(ids))], axis=1)
        result.insert(0, WINDOW_ID, ids)
        return result

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        ids, x = self.frame_to_windows(frame)
        return self.result_frame(ids, self.predict_windows(x), x)

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

        inputs = Schema([ColSpec("long", WINDOW_ID, required=False)] + self.input_specs())
        outputs = Schema([ColSpec("long", WINDOW_ID)] + [ColSpec("double", c) for c in self.output_columns]
                         + [ColSpec("double", c) for c in [*self.interval_columns, *self.quantile_columns]])
        return ModelSignature(inputs=inputs, outputs=outputs)

    def input_specs(self) -> list:
        """The signature's input columns: every input column, the calendar's optional beside the time column they
        are computed from (a string: MLflow's check refuses datetimes for it)."""
        from mlflow.types.schema import ColSpec

        cal = set(self.calendar_columns)
        time = [ColSpec("string", self.calendar["time_column"], required=False)] if self.calendar else []
        return [ColSpec("double", c, required=c not in cal) for c in self.input_columns] + time

    def describe(self) -> dict:
        """What a client needs to know to call the model (GET /metadata)."""
        return {"task": self.task, "input_columns": self.request_columns, "target_columns": self.target_columns,
                "window": self.window, "horizon": self.horizon, "interval_levels": self.levels,
                **({"calendar": self.calendar["cycles"], "time_column": self.calendar["time_column"]}
                   if self.calendar else {})}

    def about(self) -> str:
        """What the model does and what a request sends, in one phrase (the service's /docs description)."""
        return (f"forecasting {', '.join(self.target_columns)} {self.horizon} step(s) ahead from histories of "
                f"{', '.join(self.request_columns)}, at least {self.window} steps (send `series`"
                + (", each with the 'time' of its steps" if self.calendar else "") + ")")

    def warm_up(self) -> None:
        """One prediction on a neutral input: a model that cannot answer is never swapped in."""
        self.predict_windows(np.zeros((1, self.window, len(self.input_columns))))

    def request_example(self) -> tuple[str, dict]:
        """A valid POST /predict body for this model (the OpenAPI example: /docs' "Try it out" answers 200 with it)
        and a line saying what it is: one history of exactly `window` steps of every input column, a gentle wave
        inside the range the model was scaled on."""
        wave = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(self.window) / max(self.window, 2))
        history = {c: [float(f"{v:.4g}") for v in self.scaling.offset[j] + self.scaling.scale[j] * wave]
                   for j, c in enumerate(self.input_columns) if c in self.request_columns}
        series = {"history": history}
        if self.calendar:
            series["time"] = list(self.calendar["example_time"])[-self.window:]
        return (f"one history of {self.window} steps (the model's window) of {', '.join(self.request_columns)}"
                + (" with the times of its steps" if self.calendar else "")
                + f", oldest first -> the next {self.horizon} step(s) of {', '.join(self.target_columns)}",
                {"series": [series]})

    def model_inputs(self, data: pd.DataFrame | list, source: str) -> tuple[np.ndarray, np.ndarray]:
        """A table in the training format -> (ids, (N, L, F) windows)."""
        if not isinstance(data, pd.DataFrame):
            raise DataValidationError("forecasting reads a table of history rows, not JSON")
        return self.frame_to_windows(data)

    def inputs_frame(self, x: np.ndarray, ids=None) -> pd.DataFrame:
        """The inverse of model_inputs (`ids`: what it returned beside `x`): the frame a client sends to the pyfunc."""
        return self.windows_frame(x)

    def labelled(self, out: pd.DataFrame, ids) -> pd.DataFrame:
        """The pyfunc's answer to inputs_frame(x, ids): one row per window, in their order, with their ids."""
        return labelled(out, self.id_column, ids)

    def request_inputs(self, req, limits) -> np.ndarray:
        """A PredictRequest's `series` (histories, oldest first) -> (N, L, F) windows, the last L steps of each.
        `limits`: the serving settings (max_steps)."""
        cols = self.request_columns
        if req.series is None:
            raise DataValidationError(f"this model forecasts series: send 'series' with histories of {cols}")
        x = np.empty((len(req.series), self.window, len(self.input_columns)))
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
            for c in cols:
                x[i, :, self.input_columns.index(c)] = s.history[c][n - self.window:]
            if self.calendar:
                if s.time is None or len(s.time) != n:
                    got = "none" if s.time is None else f"{len(s.time)}"
                    raise DataValidationError(f"series[{i}].time: the model reads calendar features "
                                              f"({', '.join(self.calendar['cycles'])}) of each step: send 'time', one "
                                              f"timestamp per history step ({n}; got {got})")
                cal = calendar.frame(s.time[n - self.window:], self.calendar["cycles"], f"series[{i}].time", "time",
                                     self.calendar.get("timezone"))
                for c in cal.columns:
                    x[i, :, self.input_columns.index(c)] = cal[c].to_numpy()
        return x

    def predict_inputs(self, x: np.ndarray, ids=None, source: str = "input") -> np.ndarray:
        """What model_inputs or request_inputs returned -> (N, H, T) forecasts in original units."""
        return self.predict_windows(x)

    def answers(self, y: np.ndarray, x=None) -> list[dict]:
        """(N, H, T) forecasts -> one JSON answer per window: per target, the next H values; with intervals, per
        level ("80"), the lower and upper bounds the same way; a quantile model's quantiles per level ("10"). `x`:
        what request_inputs gave (the quantiles and panels read it)."""
        out = [{"forecast": {c: y[i, :, j].tolist() for j, c in enumerate(self.target_columns)}}
               for i in range(len(y))]
        q = self.quantile_inputs(x) if x is not None else None
        if self.levels:
            pairs = self.interval_bounds(y, self._series_of(x), q)
            for i, o in enumerate(out):
                o["intervals"] = {intervals.label(a): {side: {c: b[i, :, j].tolist()
                                                             for j, c in enumerate(self.target_columns)}
                                                       for side, b in zip(("lo", "hi"), pair)}
                                  for a, pair in zip(self.levels, pairs)}
        if q is not None:  # a quantile model: per level ("10"), each target's H values
            for i, o in enumerate(out):
                o["quantiles"] = {intervals.label(a): {c: q[i, :, j, k].tolist() for j, c in enumerate(self.target_columns)}
                                  for k, a in enumerate(self.quantile_levels)}
        return out

    def _series_of(self, x):
        return None

    def log_records(self, x: np.ndarray, y: np.ndarray) -> list[tuple[dict, dict, str | None]]:
        """(inputs, output, label) per window, as the inference log keeps them: the window's rows and the forecast
        as plain lists (monitoring reads them back)."""
        return [({"columns": self.input_columns, "values": x[i].tolist()},
                 {c: y[i, :, j].tolist() for j, c in enumerate(self.target_columns)}, None) for i in range(len(y))]
