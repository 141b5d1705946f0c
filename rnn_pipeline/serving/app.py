"""The HTTP service around a registered model: FastAPI, served by uvicorn (`rnn-pipeline serve`).

- `POST /predict`: forecasting histories, texts or numeric sequences -> forecasts in original units, or the label
  and every class's probability; each answer carries a prediction id and the model version that made it.
- `POST /actuals`: actual values or labels for earlier prediction ids (all or none).
- `GET /health`, `GET /metadata`, `GET /stats`, OpenAPI at `/docs` and `/openapi.json`.

The model is the registered pyfunc's bundle, the same object that answers `mlflow models serve`, the CLI and batch
scoring. When the service follows an alias (`models:/<name>@champion`), a thread checks it every `poll_seconds`;
a new version is loaded and warmed up completely before one assignment swaps it in, and each request uses the
model it started with, so no request ever sees a half-loaded model. Limits answer 413 (body, items) or 422
(steps, text length, wrong shape), never 500. Predictions and actuals go to the inference log.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from sqlalchemy.exc import SQLAlchemyError

from rnn_pipeline.bundle import ClassifierBundle, ForecastBundle
from rnn_pipeline.classification.sequences import sequences_from_arrays
from rnn_pipeline.errors import DataValidationError, RegistryError
from rnn_pipeline.serving import inference_log as ilog

log = logging.getLogger(__name__)


# ---- settings and the served model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_items: int = 1000
    max_steps: int = 10_000
    max_text_chars: int = 100_000


@dataclass(frozen=True)
class Served:
    """One fully loaded model version; replaced as a whole, never mutated."""

    uri: str
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    bundle: ForecastBundle | ClassifierBundle
    signature: dict | None
    loaded_at: str

    @property
    def ref(self) -> dict:
        return {"name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri}


_ALIAS = re.compile(r"^models:/([^/@]+)@([^/@]+)$")
_VERSION = re.compile(r"^models:/([^/@]+)/(\d+)$")


def parse_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """models:/name@alias -> (name, alias, None); models:/name/3 -> (name, None, '3'); anything else: no name."""
    if m := _ALIAS.match(uri):
        return m.group(1), m.group(2), None
    if m := _VERSION.match(uri):
        return m.group(1), None, m.group(2)
    return None, None, None


def warm_up(bundle) -> None:
    """One prediction on a neutral input: a model that cannot answer is never swapped in."""
    if isinstance(bundle, ForecastBundle):
        bundle.predict_windows(np.zeros((1, bundle.window, len(bundle.input_columns))))
    elif bundle.kind == "text":
        bundle.predict_proba(["warm up"])
    else:
        bundle.predict_proba([np.zeros((1, len(bundle.input_columns)))])


def settle_gc() -> None:
    """Collect once, then freeze what is left (torch, MLflow, pandas, the model: ~500k long-lived objects) out of
    the collector's sight: otherwise every full collection rescans them and stalls all requests ~200 ms."""
    gc.collect()
    gc.freeze()


class ModelHolder:
    """The model the service answers with. Follows an alias when the URI names one."""

    def __init__(self, uri: str, poll_seconds: float = 30.0, client=None):
        import mlflow

        self.uri, self.poll_seconds = uri, poll_seconds
        self.name, self.alias, self.version = parse_uri(uri)
        self.client = client or mlflow.MlflowClient()
        self.current: Served | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self.last_poll: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _resolve(self) -> str | None:
        if self.alias is None:
            return self.version
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as e:
            raise RegistryError(f"model '{self.name}' has no version with alias '{self.alias}': "
                                f"{e.message.splitlines()[0]}") from None

    def _load(self, version: str | None) -> Served:
        from rnn_pipeline import registry

        uri = f"models:/{self.name}/{version}" if self.name and version else self.uri
        model = registry.load(uri)
        bundle = registry.load_bundle(model)
        warm_up(bundle)
        sig = model.metadata.signature
        sig = {k: json.loads(v) for k, v in sig.to_dict().items() if v} if sig is not None else None
        return Served(self.uri, self.name, version, self.alias, model.metadata.run_id, bundle, sig,
                      datetime.now(UTC).isoformat(timespec="seconds"))

    def load(self) -> Served:
        """The first load: errors go to the caller (the service does not start without a model)."""
        self.current = self._load(self._resolve())
        return self.current

    def check(self) -> bool:
        """One poll: load and swap in the version the alias points at now, if it moved. True when swapped."""
        self.last_poll = datetime.now(UTC).isoformat(timespec="seconds")
        version = self._resolve()
        if self.current is not None and version == self.current.version:
            return False
        new = self._load(version)  # fully loaded and warmed up before anyone sees it
        old, self.current = self.current, new
        self.swaps += 1
        log.info("model %s: now serving version %s (was %s)", self.name, new.version, old and old.version)
        del old
        settle_gc()
        return True

    def start_polling(self) -> None:
        if self.alias is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="model-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
                self.last_error = None
            except Exception as e:  # keep serving the model we have; say why the new one is not served
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("model poll failed (still serving version %s): %s",
                          self.current and self.current.version, self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ---- request and response models --------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Number = Annotated[float, Strict()]  # a JSON number: true/false and "1.5" are refused, NaN/Infinity too


class SeriesInput(_Strict):
    history: dict[str, list[Number]] = Field(
        ..., description="the recent history, oldest first: one list per input column of the model (its targets "
                         "and features), all of the same length, at least the model's window",
        examples=[{"value": [0.1, 0.2, 0.3]}])


class PredictRequest(_Strict):
    """Exactly one of `series` (forecasting), `texts` (text classification) or `sequences` (numeric sequence
    classification: a list of steps per sequence, each step a list of the model's channel values)."""

    series: list[SeriesInput] | None = Field(None, min_length=1)
    texts: list[str] | None = Field(None, min_length=1)
    sequences: list[list[list[Number]]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("series", "texts", "sequences") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'series', 'texts' or 'sequences'"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class ModelRef(BaseModel):
    name: str | None
    version: str | None
    alias: str | None
    uri: str


class Prediction(BaseModel):
    prediction_id: str
    forecast: dict[str, list[float]] | None = Field(None, description="forecasting: per target, the next H values "
                                                                        "in original units")
    label: str | None = None
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class Actual(_Strict):
    prediction_id: str = Field(..., min_length=1, max_length=64)
    values: dict[str, list[Number]] | None = Field(None, description="forecasting: per target, the H actual values")
    label: str | None = Field(None, min_length=1, max_length=200, description="classification: the true label")

    @model_validator(mode="after")
    def _one(self):
        if (self.values is None) == (self.label is None):
            raise ValueError("give exactly one of 'values' (forecasting) or 'label' (classification)")
        return self


class ActualsRequest(_Strict):
    actuals: list[Actual] = Field(..., min_length=1)


class ActualsResponse(BaseModel):
    recorded: int


class Problem(BaseModel):
    detail: str


# ---- limits, counters ---------------------------------------------------------------------------------------------
class _TooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes an HTTPException from body reading on as the response."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes (serving.max_body_bytes)")


class Guard:
    """Pure ASGI middleware: refuses bodies over the limit with 413 (declared or streamed), counts responses by
    status and keeps the latency of the last /predict calls (GET /stats)."""

    def __init__(self, app, max_body_bytes: int, stats: Stats):
        self.app, self.max, self.stats = app, max_body_bytes, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_problem(send, 400, "Content-Length is not a number", self.stats)
            if size > self.max:
                return await _send_problem(send, 413, f"request body of {size} bytes exceeds the limit of "
                                                      f"{self.max} bytes (serving.max_body_bytes)", self.stats)
        seen, started, status = 0, False, 500

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    raise _TooLarge(self.max)
            return message

        async def watched_send(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _TooLarge as e:  # raised outside FastAPI's body parsing
            if not started:
                return await _send_problem(send, 413, e.detail, self.stats)
            raise
        self.stats.count(status, scope["path"], time.perf_counter() - t0)


async def _send_problem(send, status: int, detail: str, stats: Stats) -> None:
    body = JSONResponse({"detail": detail}, status_code=status).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
    stats.count(status, "", 0.0)


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    requests: int = 0
    by_status: dict = field(default_factory=dict)
    predictions: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=5000))

    def count(self, status: int, path: str, seconds: float) -> None:
        self.requests += 1
        key = f"{status // 100}xx"
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if path == "/predict" and status == 200:
            self.latencies.append(seconds * 1000)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies)
        pct = ({f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)} if len(lat) else {})
        up = time.time() - self.started
        return {"uptime_s": round(up, 1), "requests": self.requests, "responses": dict(self.by_status),
                "predictions": self.predictions, "requests_per_s": round(self.requests / up, 2) if up > 0 else None,
                "predict_latency_ms": {"last_n": len(lat), **pct}}


# ---- turning a request into model inputs --------------------------------------------------------------------------
def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def forecast_inputs(bundle: ForecastBundle, series: list[SeriesInput], limits: Limits) -> np.ndarray:
    """Histories -> (N, L, F) windows (the last L steps of each), in original units."""
    cols = bundle.input_columns
    x = np.empty((len(series), bundle.window, len(cols)))
    for i, s in enumerate(series):
        missing = [c for c in cols if c not in s.history]
        extra = [c for c in s.history if c not in cols]
        if missing or extra:
            raise _problem(422, f"series[{i}].history: the model reads columns {cols}"
                                + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        lengths = {c: len(s.history[c]) for c in cols}
        n = lengths[cols[0]]
        if len(set(lengths.values())) != 1:
            raise _problem(422, f"series[{i}].history: columns differ in length {lengths}")
        if n > limits.max_steps:
            raise _problem(422, f"series[{i}].history has {n} steps; the limit is {limits.max_steps} "
                                "(serving.max_steps)")
        if n < bundle.window:
            raise _problem(422, f"series[{i}].history has {n} steps; the model needs the last {bundle.window}")
        for j, c in enumerate(cols):
            x[i, :, j] = s.history[c][n - bundle.window:]
    return x


def classification_inputs(bundle: ClassifierBundle, req: PredictRequest, limits: Limits) -> list:
    if bundle.kind == "text":
        if req.texts is None:
            raise _problem(422, "this model classifies texts: send 'texts'")
        for i, t in enumerate(req.texts):
            if not t.strip():
                raise _problem(422, f"texts[{i}] is empty")
            if len(t) > limits.max_text_chars:
                raise _problem(422, f"texts[{i}] has {len(t)} characters; the limit is {limits.max_text_chars} "
                                    "(serving.max_text_chars)")
        return list(req.texts)
    if req.sequences is None:
        raise _problem(422, f"this model classifies numeric sequences of channels {bundle.input_columns}: send "
                            "'sequences'")
    for i, s in enumerate(req.sequences):
        if len(s) > limits.max_steps:
            raise _problem(422, f"sequences[{i}] has {len(s)} steps; the limit is {limits.max_steps} "
                                "(serving.max_steps)")
    try:
        return sequences_from_arrays(req.sequences, bundle.input_columns)
    except DataValidationError as e:
        raise _problem(422, str(e)) from None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite_or_422(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        raise _problem(422, f"the {what} is not a finite number: the input is far outside the range the model "
                            "was trained on")


# ---- the app ------------------------------------------------------------------------------------------------------
def create_app(holder: ModelHolder, limits: Limits = Limits(), store: ilog.InferenceLog | None = None,
               flush_seconds: float = 0.2, fallback: str | None = None) -> FastAPI:
    """The FastAPI app. `holder` must have loaded its model; `store` None switches the inference log (and
    POST /actuals) off. Polling and the log writer start and stop with the app."""
    from contextlib import asynccontextmanager

    stats = Stats()
    state: dict = {"writer": None}

    @asynccontextmanager
    async def lifespan(app):
        if store is not None:
            state["writer"] = ilog.LogWriter(store, flush_seconds, fallback)
        holder.start_polling()
        try:
            yield
        finally:
            holder.stop()
            if state["writer"] is not None:
                state["writer"].close()

    app = FastAPIOffline(title="rnn-pipeline model service", lifespan=lifespan,
                         description="Predictions from a registered RNN (forecasts in original units, or labels with "
                                     "class probabilities); actuals for earlier predictions feed monitoring.")
    app.add_middleware(Guard, max_body_bytes=limits.max_body_bytes, stats=stats)
    bad = {413: {"model": Problem, "description": "too large"}, 422: {"model": Problem, "description": "invalid"},
           503: {"model": Problem, "description": "no model loaded"}}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes each offending input, which may be huge or a NaN that JSON cannot carry
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
                   "input": _short(e.get("input"))} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(DataValidationError)
    async def _data_error(request: Request, exc: DataValidationError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    def served() -> Served:
        s = holder.current
        if s is None:
            raise _problem(503, "no model is loaded")
        return s

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=bad)
    def predict(req: PredictRequest) -> dict:
        t0 = time.perf_counter()
        s = served()  # this request answers with this model, whatever swaps meanwhile
        b = s.bundle
        n = len(req.series or req.texts or req.sequences)
        if n > limits.max_items:
            raise _problem(413, f"{n} items in one request; the limit is {limits.max_items} (serving.max_items)")
        ids = [ilog.new_id() for _ in range(n)]
        if isinstance(b, ForecastBundle):
            if req.series is None:
                raise _problem(422, f"this model forecasts series: send 'series' with histories of "
                                    f"{b.input_columns}")
            x = forecast_inputs(b, req.series, limits)
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below: 422
                y = b.predict_windows(x)
            _finite_or_422(y, "forecast")
            out = [{"prediction_id": pid, "forecast": {c: y[i, :, j].tolist()
                                                       for j, c in enumerate(b.target_columns)}}
                   for i, pid in enumerate(ids)]
            rows = (lambda ms: ilog.forecast_rows(b, x, y, ids, s.version or "", s.name or s.uri, "api", ms))
        else:
            items = classification_inputs(b, req, limits)
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    proba = b.predict_proba(items, source="request")
            except DataValidationError as e:
                raise _problem(422, str(e)) from None
            _finite_or_422(proba, "class probability")
            labels = np.asarray(b.classes, dtype=object)[proba.argmax(1)]
            out = [{"prediction_id": pid, "label": labels[i], "probabilities": dict(zip(b.classes, proba[i].tolist()))}
                   for i, pid in enumerate(ids)]
            rows = (lambda ms: ilog.classification_rows(b, items, proba, ids, s.version or "", s.name or s.uri,
                                                        "api", ms))
        stats.predictions += n
        if state["writer"] is not None:
            state["writer"].put(rows((time.perf_counter() - t0) * 1000))
        return {"model": s.ref, "predictions": out}

    if store is not None:
        @app.post("/actuals", response_model=ActualsResponse, responses={**bad, 404: {"model": Problem},
                                                                          409: {"model": Problem}})
        def post_actuals(req: ActualsRequest) -> dict:
            """Actual values (forecasting) or labels (classification) for earlier predictions: all or none."""
            if len(req.actuals) > limits.max_items:
                raise _problem(413, f"{len(req.actuals)} actuals in one request; the limit is {limits.max_items}")
            state["writer"].flush()  # predictions made a moment ago are in the log before we look them up
            s = served()
            name = s.name or s.uri
            try:
                k = store.add_actuals(name, [(a.prediction_id, a.model_dump(exclude={"prediction_id"}))
                                             for a in req.actuals])
            except ilog.UnknownPredictions as e:
                raise _problem(404, str(e)) from None
            except ilog.DuplicateActuals as e:
                raise _problem(409, str(e)) from None
            except SQLAlchemyError as e:  # the database is away: nothing was recorded, the client may retry
                raise _problem(503, f"the inference log is unavailable: {type(e).__name__}") from None
            return {"recorded": k}

    @app.get("/health")
    def health():
        s = holder.current
        body = {"status": "ok" if s is not None else "no model", "model": s.ref if s else None,
                "loaded_at": s.loaded_at if s else None, "swaps": holder.swaps, "last_poll": holder.last_poll,
                "last_poll_error": holder.last_error}
        w = state["writer"]
        if w is not None:
            body["inference_log"] = {"backlog": w.backlog, "written": w.written, "failed": w.failed,
                                     "last_error": w.last_error}
        return JSONResponse(body, status_code=200 if s is not None else 503)

    @app.get("/metadata")
    def metadata():
        s = served()
        b = s.bundle
        info = {"model": s.ref, "run_id": s.run_id, "loaded_at": s.loaded_at, "signature": s.signature,
                "follows_alias": holder.alias is not None, "poll_seconds": holder.poll_seconds,
                "limits": limits.__dict__, "inference_log": store is not None}
        if isinstance(b, ForecastBundle):
            info.update(task="forecasting", input_columns=b.input_columns, target_columns=b.target_columns,
                        window=b.window, horizon=b.horizon)
        else:
            info.update(task="classification", input=b.kind, input_columns=b.input_columns, classes=b.classes,
                        max_length=b.encoder.max_length)
        return info

    @app.get("/stats")
    def get_stats():
        return stats.summary()

    return app
