"""The model service: `rnn-pipeline serve` on a random free port answers predictions, records actuals in the inference
log, follows the champion alias without a restart, and answers bad payloads with 4xx (never 5xx)."""

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from conftest import REPO, write_config

from rnn_pipeline.serving.inference_log import InferenceLog
from rnn_pipeline.tracking import mlflow_stores

pytestmark = pytest.mark.slow
HISTORY = [math.sin(0.1 * t) + 0.5 * math.cos(0.05 * t) for t in range(60)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("serve")
    cfg = write_config(folder, name="srv", n_trials=0, epochs=3, extra="""\
        features: {window: 20, horizon: 2}
        serving: {poll_seconds: 0.3, max_items: 50, max_body_bytes: 20000, max_steps: 200}
        """)
    assert training_flow(str(cfg))["promoted"]
    return folder, cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(trained):
    folder, cfg = trained
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", str(cfg), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the service did not become healthy in 90 s")
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client, proc, folder
    proc.terminate()
    proc.wait(timeout=30)


def _log(folder) -> InferenceLog:
    return InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")


def _registry(folder):
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def test_predict_post_actuals_and_both_land_in_the_inference_log(service):
    client, _, folder = service
    r = client.post("/predict", json={"series": [{"history": {"value": HISTORY}},
                                                 {"history": {"value": HISTORY[:20]}}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "srv", "version": "1", "alias": "champion", "uri": "models:/srv@champion"}
    first, second = body["predictions"]
    assert len(first["forecast"]["value"]) == 2 and first["prediction_id"] != second["prediction_id"]
    # the service answers like the registered pyfunc on the same window (the last 20 steps), in original units
    pyfunc = mlflow.pyfunc.load_model(_registry(folder).get_model_version_download_uri("srv", "1"))
    frame = pyfunc.unwrap_python_model().bundle.windows_frame(np.asarray(HISTORY[-20:]).reshape(1, 20, 1))
    want = pyfunc.predict(frame)[["value_h1", "value_h2"]].to_numpy()[0]
    np.testing.assert_allclose(first["forecast"]["value"], want, rtol=1e-6)
    assert abs(np.mean(first["forecast"]["value"])) < 5  # the seed series' units, not scaled ones

    a = client.post("/actuals", json={"actuals": [{"prediction_id": first["prediction_id"],
                                                   "values": {"value": [0.1, 0.2]}}]})
    assert a.status_code == 200 and a.json() == {"recorded": 1}
    store = _log(folder)
    try:
        rows = store.predictions("srv").set_index("prediction_id")
        assert {first["prediction_id"], second["prediction_id"]} <= set(rows.index)
        row = rows.loc[first["prediction_id"]]
        assert row.model_version == "1" and row.task == "forecasting" and row.source == "api"
        assert json.loads(row.inputs)["values"] == [[v] for v in HISTORY[-20:]]
        assert json.loads(row.output) == first["forecast"] and len(row.input_digest) == 64
        assert json.loads(row.actual) == {"values": {"value": [0.1, 0.2]}}
        assert rows.loc[second["prediction_id"]].actual is None
    finally:
        store.dispose()
    # a second actual for the same prediction, and one for an unknown id, record nothing
    assert client.post("/actuals", json={"actuals": [{"prediction_id": second["prediction_id"],
                                                      "values": {"value": [1.0, 2.0]}},
                                                     {"prediction_id": first["prediction_id"],
                                                      "values": {"value": [9.0, 9.0]}}]}).status_code == 409
    assert client.post("/actuals", json={"actuals": [{"prediction_id": second["prediction_id"],
                                                      "values": {"value": [1.0, 2.0]}},
                                                     {"prediction_id": "no-such-id",
                                                      "values": {"value": [1.0, 2.0]}}]}).status_code == 404
    store = _log(folder)
    try:
        assert store.predictions("srv").set_index("prediction_id").loc[second["prediction_id"]].actual is None
    finally:
        store.dispose()


def test_metadata_health_and_docs(service):
    client, _, _ = service
    meta = client.get("/metadata").json()
    assert meta["task"] == "forecasting" and meta["window"] == 20 and meta["horizon"] == 2
    assert meta["model"]["version"] == "1" and meta["run_id"] and meta["follows_alias"]
    assert [c["name"] for c in meta["signature"]["inputs"]] == ["window_id", "value"]
    assert meta["limits"]["max_items"] == 50
    assert client.get("/health").json()["status"] == "ok"
    docs = client.get("/docs")  # Swagger UI from the package, not a CDN: the page works offline
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/actuals", "/health", "/metadata", "/stats"} <= set(paths)


def _long_body(n):
    return json.dumps({"series": [{"history": {"value": [0.5] * 20}}] * n})


@pytest.mark.parametrize("payload,status,message", [
    (b"{not json", 422, "JSON"),
    ({"series": [{"history": {"value": HISTORY[:5]}}]}, 422, "needs the last 20"),
    ({"series": [{"history": {"values": HISTORY}}]}, 422, "missing ['value']"),
    ({"series": [{"history": {"value": [0.1] * 300}}]}, 422, "serving.max_steps"),
    ({"series": [{"history": {"value": ["a"] * 20}}]}, 422, "valid number"),
    ({"series": [{"history": {"value": [True] * 20}}]}, 422, "valid number"),
    ({"texts": ["a review"]}, 422, "send 'series'"),
    ({"series": [{"history": {"value": HISTORY}}], "texts": ["x"]}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"series": []}, 422, "at least 1"),
    ({"series": [{"history": {"value": [0.1] * 20}}] * 60}, 413, "serving.max_items"),
    (_long_body(300).encode(), 413, "serving.max_body_bytes"),
])
def test_bad_payloads_get_a_clear_4xx(service, payload, status, message):
    client, _, _ = service
    if isinstance(payload, bytes):
        r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/predict", json=payload)
    assert r.status_code == status, r.text
    assert message in r.text


def test_non_finite_values_and_streamed_oversized_bodies_are_refused(service):
    client, _, _ = service
    r = client.post("/predict", content=b'{"series": [{"history": {"value": [NaN' + b", 1.0" * 19 + b"]}}]}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text
    chunks = (b'{"series": [' + b'{"history": {"value": [0.5]}},' * i for i in range(1, 200))  # no Content-Length
    r = client.post("/predict", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "serving.max_body_bytes" in r.text
    bad = client.post("/actuals", json={"actuals": [{"prediction_id": "x", "values": {"value": [1]},
                                                     "label": "y"}]})
    assert bad.status_code == 422 and "exactly one" in bad.text
    stats = client.get("/stats").json()
    assert stats["responses"].get("5xx", 0) == 0 and stats["responses"]["4xx"] >= 2


def test_the_registered_model_also_serves_with_mlflow_models_serve(service):
    """The same registered pyfunc behind MLflow's own scoring server answers like our service."""
    client, _, folder = service
    ours = client.post("/predict", json={"series": [{"history": {"value": HISTORY}}]}).json()
    port = _free_port()
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts `uvicorn` by name: the venv's bin must be on PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    exe = str(Path(bin_dir) / "mlflow")
    proc = subprocess.Popen([exe, "models", "serve", "-m", "models:/srv@champion", "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "mlflow models serve did not answer /ping in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        window = HISTORY[-20:]
        body = {"dataframe_split": {"columns": ["window_id", "value"], "data": [[0, v] for v in window]}}
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert r.status_code == 200, r.text
        [row] = r.json()["predictions"]
        np.testing.assert_allclose([row["value_h1"], row["value_h2"]], ours["predictions"][0]["forecast"]["value"],
                                   rtol=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_new_champion_is_served_without_a_restart(service):
    client, proc, folder = service
    reg = _registry(folder)
    v1 = reg.get_model_version("srv", "1")
    with mlflow_stores(reg.tracking_uri):  # a logged model's source resolves through the tracking store
        v2 = reg.create_model_version("srv", v1.source, run_id=v1.run_id).version
    # requests keep flowing while the alias moves: every one is answered, by v1 or by v2, never by a half-loaded model
    answers, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=str(client.base_url), timeout=10) as c:
            while not stop.is_set():
                r = c.post("/predict", json={"series": [{"history": {"value": HISTORY}}]})
                answers.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        reg.set_registered_model_alias("srv", "champion", v2)
        deadline = time.time() + 30
        while client.get("/health").json()["model"]["version"] != str(v2):
            assert time.time() < deadline, "the service did not pick up the new champion in 30 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    versions = [v for _, v in answers]
    assert versions[0] == "1" and versions[-1] == str(v2) and set(versions) == {"1", str(v2)}
    assert versions == sorted(versions, key=lambda v: v != "1")  # once v2 answers, v1 never does again
    r = client.post("/predict", json={"series": [{"history": {"value": HISTORY}}]})
    assert r.status_code == 200 and r.json()["model"]["version"] == str(v2)
    assert proc.poll() is None  # the same process
    health = client.get("/health").json()
    assert health["swaps"] >= 1 and health["last_poll_error"] is None
    # an alias pointing at a version that cannot be loaded: the service keeps answering with the one it has
    broken = reg.create_model_version("srv", str(folder / "no-such-model"), run_id=v1.run_id).version
    reg.set_registered_model_alias("srv", "champion", broken)
    deadline = time.time() + 30
    while client.get("/health").json()["last_poll_error"] is None:
        assert time.time() < deadline, "the failed load was not reported in 30 s"
        time.sleep(0.2)
    r = client.post("/predict", json={"series": [{"history": {"value": HISTORY}}]})
    assert r.status_code == 200 and r.json()["model"]["version"] == str(v2)
    reg.set_registered_model_alias("srv", "champion", v2)


def test_a_stopped_service_has_logged_every_prediction(service):
    """SIGTERM (a service manager, Ctrl-C) drains the background log writer before the process exits."""
    client, proc, folder = service
    ids = []
    for _ in range(20):
        r = client.post("/predict", json={"series": [{"history": {"value": HISTORY}}] * 10})
        ids += [p["prediction_id"] for p in r.json()["predictions"]]
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -15)  # uvicorn shuts down gracefully, then re-raises the signal
    store = _log(folder)
    try:
        assert set(ids) <= set(store.predictions("srv")["prediction_id"])
    finally:
        store.dispose()
