"""The model service's OpenAPI schema fuzzed with schemathesis: whatever schemathesis sends to POST /predict,
POST /actuals, GET /health, /metadata and /stats (valid and invalid bodies, wrong types, unsupported methods), the
answer is never a server error (5xx).

The app (`rnn_pipeline.serving.app.create_app` around a freshly trained tiny forecaster, with its inference log) runs in
uvicorn on a free port in a thread, so its lifespan (log writer, alias polling) runs as in `rnn-pipeline serve`.
Three passes: the schema as published (every operation); POST /predict with the schema narrowed to the served
model's shape (its input columns, at least its window of steps), so that generated histories reach the model instead
of stopping at the length check; POST /actuals narrowed likewise, with the generated ids swapped for ids of real
predictions, so that actuals reach the inference log's checks. Derandomized and bounded (EXAMPLES per operation,
plus schemathesis' coverage cases): the same requests every run.
"""

import json
import socket
import threading
import time
from collections import Counter

import httpx
import hypothesis
import mlflow
import pytest
import schemathesis
import torch
from conftest import write_config
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.slow
NAME = "fuzz"
EXAMPLES = 25
COLUMNS, WINDOW, HORIZON = ["value"], 20, 2  # the tiny forecaster's shape (asserted against /metadata)
SEEN: list[tuple[str, str, int]] = []  # (pass, operation, status) of every request sent
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                               suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                               print_blob=True)


@pytest.fixture(scope="module")
def state(tmp_path_factory, prefect_harness):
    """A champion trained in seconds; its stores under a temp folder."""
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("fuzz")
    cfg = write_config(folder, name=NAME, n_trials=0, epochs=3,
                       extra=f"features: {{window: {WINDOW}, horizon: {HORIZON}}}\n")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the stores under `folder`, whatever an earlier test set
        summary = training_flow(str(cfg))
    assert summary["promoted"], {k: summary.get(k) for k in ("model_name", "model_version", "reason")}
    # training flushes denormals to zero on this thread (a CPU flag); Hypothesis refuses to generate floats then
    torch.set_flush_denormal(False)
    return folder / "state"


@pytest.fixture(scope="module")
def base_url(state):
    """The app around that champion, with its inference log, served by uvicorn in a thread of this process."""
    import uvicorn

    from rnn_pipeline.serving import app as srv
    from rnn_pipeline.serving.inference_log import InferenceLog
    from rnn_pipeline.tracking import mlflow_stores

    uri = f"sqlite:///{state / 'mlflow.db'}"
    with mlflow_stores(uri):
        holder = srv.ModelHolder(f"models:/{NAME}@champion", poll_seconds=3600,
                                 client=mlflow.MlflowClient(uri, registry_uri=uri))
        holder.load()
    store = InferenceLog(f"sqlite:///{state / 'monitoring.db'}")
    app = srv.create_app(holder, srv.Limits(max_body_bytes=200_000, max_items=20, max_steps=500), store,
                         flush_seconds=0.05, fallback=str(state / "inference_log.failed.jsonl"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-fuzz", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        deadline = time.time() + 30
        while not server.started:
            assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        store.dispose()


def app_schema() -> dict:
    """The service's OpenAPI document, built at import (schemathesis parametrizes tests at collection): it does not
    depend on the model, only on whether the inference log is on (POST /actuals). The live one is compared with it."""
    from rnn_pipeline.serving import app as srv

    class NoModel:  # create_app touches the holder only in its lifespan and its endpoints
        alias = None

    return srv.create_app(NoModel(), store=object()).openapi()


def model_shaped(raw: dict, columns: list[str], window: int, horizon: int) -> dict:
    """The published schema narrowed to what the served model reads and answers: histories of every input column,
    window to window + 5 steps, 1 to 4 series per request; actuals as H values of each target."""
    raw = json.loads(json.dumps(raw))
    schemas = raw["components"]["schemas"]
    schemas["Actual"] = {
        "type": "object", "additionalProperties": False, "required": ["prediction_id", "values"],
        "properties": {"prediction_id": {"type": "string", "minLength": 1, "maxLength": 64},
                       "values": {"type": "object", "additionalProperties": False, "required": columns,
                                  "properties": {c: {"type": "array", "items": {"type": "number"},
                                                     "minItems": horizon, "maxItems": horizon} for c in columns}}}}
    schemas["SeriesInput"]["properties"]["history"] = {
        "type": "object", "additionalProperties": False, "required": columns,
        "properties": {c: {"type": "array", "items": {"type": "number"}, "minItems": window,
                           "maxItems": window + 5} for c in columns}}
    schemas["PredictRequest"] = {
        "type": "object", "additionalProperties": False, "required": ["series"],
        "properties": {"series": {"type": "array", "minItems": 1, "maxItems": 4,
                                  "items": {"$ref": "#/components/schemas/SeriesInput"}}}}
    return raw


RAW = app_schema()
published = schemathesis.openapi.from_dict(RAW)
SHAPED = model_shaped(RAW, COLUMNS, WINDOW, HORIZON)
shaped_predict = schemathesis.openapi.from_dict(SHAPED).include(path="/predict")
shaped_actuals = schemathesis.openapi.from_dict(SHAPED).include(path="/actuals")


@pytest.fixture(scope="module")
def live(base_url):
    """The service answers the schema the tests were generated from, with the model shape they assume."""
    # the same document, but for what only a served model gives: its description and the /predict example
    def model_free(doc):
        doc = json.loads(json.dumps(doc))
        doc["info"].pop("description", None)
        doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"].pop("examples", None)
        return doc

    assert model_free(httpx.get(base_url + "/openapi.json", timeout=10).json()) == model_free(RAW)
    meta = httpx.get(base_url + "/metadata", timeout=10).json()
    assert (meta["input_columns"], meta["window"], meta["horizon"]) == (COLUMNS, WINDOW, HORIZON)
    return base_url


def _call(case, base_url: str, label: str):
    response = case.call(base_url=base_url, timeout=30)
    SEEN.append((label, f"{case.method.upper()} {case.path}", response.status_code))
    assert response.status_code < 500, (f"{response.status_code} from {case.method.upper()} {case.path}: "
                                        f"{response.text[:500]}\nreproduce: {case.as_curl_command()}")
    case.validate_response(response, checks=[not_a_server_error])


# One test per operation: schemathesis gives every operation of one parametrized test the same node id, and
# pytest-xdist (make test) runs only one item of a repeated id.
@published.include(path="/predict", method="POST").parametrize()
@SETTINGS
def test_published_predict_never_answers_5xx(case, live):
    _call(case, live, "published")


@published.include(path="/actuals", method="POST").parametrize()
@SETTINGS
def test_published_actuals_never_answers_5xx(case, live):
    _call(case, live, "published")


@published.include(path="/health", method="GET").parametrize()
@SETTINGS
def test_published_health_never_answers_5xx(case, live):
    _call(case, live, "published")


@published.include(path="/metadata", method="GET").parametrize()
@SETTINGS
def test_published_metadata_never_answers_5xx(case, live):
    _call(case, live, "published")


@published.include(path="/stats", method="GET").parametrize()
@SETTINGS
def test_published_stats_never_answer_5xx(case, live):
    _call(case, live, "published")


@shaped_predict.parametrize()
@SETTINGS
def test_model_shaped_histories_never_answer_5xx(case, live):
    _call(case, live, "model-shaped")


@pytest.fixture(scope="module")
def prediction_ids(live):
    """Ids of real predictions, for actuals that reach the inference log's checks (not just 'unknown id')."""
    history = {c: [0.1 * i for i in range(WINDOW)] for c in COLUMNS}
    ids = []
    for _ in range(3):
        r = httpx.post(live + "/predict", json={"series": [{"history": history}] * 20}, timeout=30)
        assert r.status_code == 200, r.text
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
    return ids


@shaped_actuals.parametrize()
@SETTINGS
def test_actuals_for_real_predictions_never_answer_5xx(case, live, prediction_ids):
    """Generated actuals with their ids swapped for real ones: recorded (200), already recorded (409), wrong shape
    (422), never 5xx."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("actuals"), list):
        for k, a in enumerate(body["actuals"]):
            if isinstance(a, dict) and isinstance(a.get("prediction_id"), str):
                a["prediction_id"] = prediction_ids[(len(SEEN) + k) % len(prediction_ids)]
    _call(case, live, "actuals")


def test_the_fuzzing_reached_every_operation_and_the_model():
    """Runs after the fuzz tests (file order): what they sent covered every operation, generated histories got
    forecasts (200), not only validation errors, and generated actuals were recorded, refused as duplicates and
    refused as malformed."""
    if not SEEN:
        pytest.skip("runs after the fuzz tests of this module")
    operations = {op for _, op, _ in SEEN}
    assert {"POST /predict", "POST /actuals", "GET /health", "GET /metadata", "GET /stats"} <= operations
    assert not [s for s in SEEN if s[2] >= 500]
    forecasts = sum(1 for label, op, status in SEEN if label == "model-shaped" and op == "POST /predict"
                    and status == 200)
    assert forecasts >= 5, f"only {forecasts} generated histories reached the model"
    recorded = {status for label, op, status in SEEN if label == "actuals"}
    assert {200, 409, 422} <= recorded, f"actuals answered only {sorted(recorded)}"
    counts = Counter((label, op, status) for label, op, status in SEEN)
    print(f"\n{len(SEEN)} requests: " + ", ".join(f"{label} {op} {status}: {n}"
                                                 for (label, op, status), n in sorted(counts.items())))
