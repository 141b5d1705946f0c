"""The HTTP service around a registered model: FastAPI, served by uvicorn (`rnn-pipeline serve`).

- `POST /predict`: forecasting histories, texts or numeric sequences -> forecasts in original units, or the label
  and every class's probability; each answer carries a prediction id and the model version that made it.
- `POST /actuals`: actual values or labels for earlier prediction ids (all or none).
- `GET /health`, `GET /metadata`, `GET /stats`, OpenAPI at `/docs` and `/openapi.json`.

The OpenAPI document is the served model's: its description names the model, version and alias, and POST
/predict's example is a valid request for that model (the bundle's `request_example`), so /docs' "Try it out"
answers 200. Both follow a hot swap (the document is rebuilt when the served version changes).

With `serving.api_key_env`, POST /predict and POST /actuals (every request but a GET, HEAD or OPTIONS) need the API
key (auth.py); the GETs stay open.

The model is the registered pyfunc's bundle, the same object that answers `mlflow models serve`, the CLI and batch
scoring; the bundle parses a request and shapes the answer, so nothing here depends on the task. The holder
(holder.py) swaps in a new version of a followed alias without a restart; the bodies are in schemas.py, the body
limit and the counters in middleware.py. Limits answer 413 (body, items) or 422 (steps, text length, wrong shape),
never 500. Predictions and actuals go to the inference log.
"""

from __future__ import annotations

import inspect
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import SQLAlchemyError

from rnn_pipeline.config import ServingConfig
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.serving import inference_log as ilog
from rnn_pipeline.serving.auth import KeyCheck, KeyGuard, resolve_api_key
from rnn_pipeline.serving.holder import ModelHolder, Served, parse_uri, settle_gc
from rnn_pipeline.serving.middleware import Guard, Stats
from rnn_pipeline.serving.schemas import ActualsRequest, ActualsResponse, Invalid, PredictRequest, PredictResponse, Problem

__all__ = ["Limits", "ModelHolder", "Served", "create_app", "limits_json", "parse_uri", "settle_gc"]

# The service's limits are the config's serving settings (max_body_bytes, max_items, max_steps, max_text_chars):
# one schema, one set of defaults. `Limits(max_items=20)` is a ServingConfig with every other setting at its default.
Limits = ServingConfig

# the bodies the app really answers with: Problem ({"detail": "..."}) from HTTPException and the Guard middleware;
# Invalid for 422 (a list of issues from _invalid, or one message from a DataValidationError or _problem(422))
BAD = {400: {"model": Problem, "description": "Content-Length is not a number"},
       413: {"model": Problem, "description": "too large: the body (serving.max_body_bytes) or the number of items "
                                              "(serving.max_items)"},
       422: {"model": Invalid, "description": "invalid: the body's shape or types (a list of issues), or what the "
                                              "model cannot answer (one message)"},
       503: {"model": Problem, "description": "no model loaded"}}
UNAUTHORIZED = {401: {"model": Problem, "description": "API key missing or not valid (serving.api_key_env)"}}


def limits_json(serving: ServingConfig) -> dict:
    """The limits a client must keep to (GET /metadata): the `serving.max_*` settings."""
    return {k: v for k, v in serving.model_dump().items() if k.startswith("max_")}


def _problem(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite_or_422(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        raise _problem(422, f"the {what} is not a finite number: the input is far outside the range the model "
                            "was trained on")


@dataclass
class Service:
    """What the endpoints share: the holder, the serving settings, the inference log (None: off) and its background
    writer (started by the app's lifespan), and the counters."""

    holder: ModelHolder
    serving: ServingConfig
    store: ilog.InferenceLog | None
    stats: Stats = field(default_factory=Stats)
    writer: ilog.LogWriter | None = None

    def served(self) -> Served:
        s = self.holder.current
        if s is None:
            raise _problem(503, "no model is loaded")
        return s


# ---- the endpoints' work ------------------------------------------------------------------------------------------
def _predict(svc: Service, req: PredictRequest) -> dict:
    """Answer with the model loaded when the request started, whatever swaps meanwhile; log in the background."""
    t0 = time.perf_counter()
    s = svc.served()
    b = s.bundle
    n, limit = req.size, svc.serving.max_items
    if n > limit:
        raise _problem(413, f"{n} items in one request; the limit is {limit} (serving.max_items)")
    x = b.request_inputs(req, svc.serving)  # a DataValidationError answers 422
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below: 422
        y = b.predict_inputs(x, source="request")
    _finite_or_422(y, b.output_noun)
    ids = [ilog.new_id() for _ in range(n)]
    out = [{"prediction_id": pid, **answer} for pid, answer in zip(ids, _answers(b, y, x), strict=True)]
    svc.stats.predictions += n
    if svc.writer is not None:
        ms = (time.perf_counter() - t0) * 1000
        svc.writer.put(ilog.prediction_rows(b, x, y, ids, s.version or "", s.name or s.uri, "api", ms))
    return {"model": s.ref, "predictions": out}


def _answers(b, y, x) -> list[dict]:
    """The bundle's answers; a model registered by earlier code answers from the outputs alone."""
    if len(inspect.signature(b.answers).parameters) > 1:
        return b.answers(y, x)
    return b.answers(y)


def _record_actuals(svc: Service, req: ActualsRequest) -> dict:
    limit = svc.serving.max_items
    if len(req.actuals) > limit:
        raise _problem(413, f"{len(req.actuals)} actuals in one request; the limit is {limit}")
    svc.writer.flush()  # predictions made a moment ago are in the log before we look them up
    s = svc.served()
    try:
        k = svc.store.add_actuals(s.name or s.uri, [(a.prediction_id, a.model_dump(exclude={"prediction_id"}))
                                                    for a in req.actuals])
    except ilog.UnknownPredictions as e:
        raise _problem(404, str(e)) from None
    except ilog.DuplicateActuals as e:
        raise _problem(409, str(e)) from None
    except SQLAlchemyError as e:  # the database is away: nothing was recorded, the client may retry
        raise _problem(503, f"the inference log is unavailable: {type(e).__name__}") from None
    return {"recorded": k}


def _health(svc: Service) -> JSONResponse:
    s, holder, w = svc.holder.current, svc.holder, svc.writer
    body = {"status": "ok" if s is not None else "no model", "model": s.ref if s else None,
            "loaded_at": s.loaded_at if s else None, "swaps": holder.swaps, "last_poll": holder.last_poll,
            "last_poll_error": holder.last_error}
    if w is not None:
        body["inference_log"] = {"backlog": w.backlog, "written": w.written, "failed": w.failed,
                                 "last_error": w.last_error}
    return JSONResponse(body, status_code=200 if s is not None else 503)


def _metadata(svc: Service) -> dict:
    s = svc.served()
    return {"model": s.ref, "run_id": s.run_id, "loaded_at": s.loaded_at, "signature": s.signature,
            "follows_alias": svc.holder.alias is not None, "poll_seconds": svc.holder.poll_seconds,
            "limits": limits_json(svc.serving), "inference_log": svc.store is not None, **s.bundle.describe()}


# ---- the OpenAPI document: the served model's ---------------------------------------------------------------------
DESCRIPTION = ("Predictions from a registered RNN (forecasts in original units, or labels with class probabilities); "
               "actuals for earlier predictions feed monitoring.")


def describe_served(s: Served | None, holder: ModelHolder) -> str:
    """The OpenAPI description's paragraph on the model: name, version, alias (and that it is followed), task."""
    if s is None:
        return "**Model**: none loaded (503)."
    what = f"`{s.name}` version **{s.version}**" if s.name else f"`{s.uri}`"
    if s.alias:
        what += (f" (alias `{s.alias}`: the service follows the alias, checking every {holder.poll_seconds:g} s, and "
                 "swaps in the version it points at without a restart; this page follows it)")
    elif s.name:
        what += " (a fixed version)"
    return f"**Model**: {what}: {s.bundle.about()}. GET /metadata has the rest."


def _openapi(app: FastAPI, svc: Service):
    """app.openapi: FastAPI's document with the served model's description and POST /predict example, rebuilt when
    the holder swaps in another version (hot swap)."""
    lock = threading.Lock()
    built: dict = {"served": None, "schema": None}

    def openapi() -> dict:
        s = getattr(svc.holder, "current", None)  # a stand-in holder without a model: the model-free document
        with lock:
            if s is not built["served"]:
                app.description = f"{DESCRIPTION}\n\n{describe_served(s, svc.holder)}"
                app.openapi_schema = None
            schema = FastAPI.openapi(app)
            if schema is not built["schema"]:
                _put_example(schema, s)
                built.update(served=s, schema=schema)
            return schema

    return openapi


def _put_example(schema: dict, s: Served | None) -> None:
    """POST /predict's one example: a valid request for the served model (the default of /docs' "Try it out")."""
    if s is None:
        return
    body = schema.get("paths", {}).get("/predict", {}).get("post", {}).get("requestBody", {})
    media = body.get("content", {}).get("application/json")
    if media is None:
        return
    line, value = s.bundle.request_example()
    label = f"{s.name} v{s.version}" if s.name else "the served model"
    media["examples"] = {s.bundle.reads: {"summary": f"{label}: {line}", "value": value}}


# ---- the app ------------------------------------------------------------------------------------------------------
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's default echoes each offending input, which may be huge or a NaN that JSON cannot carry."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
               "input": _short(e.get("input"))} for e in exc.errors()[:20]]
    return JSONResponse({"detail": errors}, status_code=422)


async def _data_error(request: Request, exc: DataValidationError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _lifespan(svc: Service, flush_seconds: float, fallback: str | None):
    """Polling and the inference-log writer start with the app; at shutdown the writer drains (nothing is lost)."""

    @asynccontextmanager
    async def lifespan(app):
        if svc.store is not None:
            svc.writer = ilog.LogWriter(svc.store, flush_seconds, fallback)
        svc.holder.start_polling()
        try:
            yield
        finally:
            svc.holder.stop()
            if svc.writer is not None:
                svc.writer.close()

    return lifespan


def _routes(app: FastAPI, svc: Service, check: KeyCheck | None) -> None:
    """The endpoints; their names are the OpenAPI operation ids, their docstrings the descriptions. With a key
    (`check`), every POST declares and checks it (KeyGuard has refused a request without it already)."""
    guard = [Depends(check.dependency())] if check is not None else None
    bad = {**BAD, **UNAUTHORIZED} if check is not None else BAD

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=bad,
              dependencies=guard)
    def predict(req: PredictRequest) -> dict:
        return _predict(svc, req)

    if svc.store is not None:
        @app.post("/actuals", response_model=ActualsResponse, responses={**bad, 404: {"model": Problem},
                                                                          409: {"model": Problem}},
                  dependencies=guard)
        def post_actuals(req: ActualsRequest) -> dict:
            """Actual values (forecasting) or labels (classification) for earlier predictions: all or none."""
            return _record_actuals(svc, req)

    @app.get("/health", responses={503: {"description": "no model loaded: the same body, status 'no model'"}})
    def health():
        return _health(svc)

    @app.get("/metadata", responses={503: {"model": Problem, "description": "no model loaded"}})
    def metadata():
        return _metadata(svc)

    @app.get("/stats")
    def get_stats():
        return svc.stats.summary()


def create_app(holder: ModelHolder, serving: ServingConfig = ServingConfig(), store: ilog.InferenceLog | None = None,
               flush_seconds: float | None = None, fallback: str | None = None) -> FastAPI:
    """The FastAPI app. `holder` must have loaded its model; `serving` holds the limits and the log's flush interval
    (`flush_seconds` overrides it); `store` None switches the inference log (and POST /actuals) off. Polling and the
    log writer start and stop with the app. `serving.api_key_env` naming an unset or empty variable raises
    PipelineError."""
    key = resolve_api_key(serving)
    check = KeyCheck(key) if key is not None else None
    svc = Service(holder, serving, store)
    flush = serving.log_flush_seconds if flush_seconds is None else flush_seconds
    app = FastAPIOffline(title="rnn-pipeline model service", lifespan=_lifespan(svc, flush, fallback),
                         description=f"{DESCRIPTION}\n\n{describe_served(getattr(holder, 'current', None), holder)}")
    if check is not None:  # inside Guard (added last, outermost): the body limit first, and 401s are counted
        app.add_middleware(KeyGuard, check=check)
    app.add_middleware(Guard, max_body_bytes=serving.max_body_bytes, stats=svc.stats)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(DataValidationError, _data_error)
    _routes(app, svc, check)
    app.openapi = _openapi(app, svc)
    return app
