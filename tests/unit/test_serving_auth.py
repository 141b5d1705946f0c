"""The service's optional API key (`serving.api_key_env`): without one, the service answers as before; with one,
POST /predict and POST /actuals need it (`Authorization: Bearer <key>` or `X-API-Key: <key>`) and answer 401
otherwise, before the body is read, without ever echoing it; the GETs (health, metadata, stats, docs) stay open and
OpenAPI declares both schemes. A variable that is named but unset or empty stops the service at startup; binding a
non-loopback interface without a key is warned about.

In-process (Starlette's TestClient, lifespan included) around a small registered forecaster from
tests/fixtures/registered: no training, no server."""

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flows import cli
from rnn_pipeline.config import ServingConfig
from rnn_pipeline.errors import PipelineError
from rnn_pipeline.serving import app as srv
from rnn_pipeline.serving.auth import MISSING, WRONG, exposure_warning, is_loopback, resolve_api_key
from rnn_pipeline.serving.inference_log import InferenceLog

MODEL = Path(__file__).parents[1] / "fixtures" / "registered" / "forecaster"  # inputs load, temp, hour; window 12
VAR = "RNN_PIPELINE_TEST_API_KEY"
KEY = "s3cret-Key_0123456789abcdef"
BODY = {"series": [{"history": {c: [0.1 * i for i in range(12)] for c in ("load", "temp", "hour")}}]}


@pytest.fixture(scope="module")
def holder():
    h = srv.ModelHolder(str(MODEL), poll_seconds=3600, client=object())  # a path: no registry, no polling
    h.load()
    return h


def _client(holder, tmp_path, serving: ServingConfig):
    store = InferenceLog(f"sqlite:///{tmp_path / 'monitoring.db'}")
    app = srv.create_app(holder, serving, store, flush_seconds=0.05, fallback=str(tmp_path / "failed.jsonl"))
    return TestClient(app), store


@pytest.fixture
def open_client(holder, tmp_path, monkeypatch):
    monkeypatch.delenv(VAR, raising=False)
    client, store = _client(holder, tmp_path, ServingConfig())
    with client:
        yield client
    store.dispose()


@pytest.fixture
def keyed(holder, tmp_path, monkeypatch):
    monkeypatch.setenv(VAR, KEY)
    client, store = _client(holder, tmp_path, ServingConfig(api_key_env=VAR))
    monkeypatch.delenv(VAR)  # read once, when the app is made
    with client:
        yield client
    store.dispose()


def _predict_and_record(client, headers: dict | None = None) -> None:
    r = client.post("/predict", json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    actual = {"prediction_id": p["prediction_id"], "values": {t: [0.0] * len(v) for t, v in p["forecast"].items()}}
    r = client.post("/actuals", json={"actuals": [actual]}, headers=headers)
    assert r.status_code == 200 and r.json() == {"recorded": 1}, r.text


def test_without_a_key_everything_answers_as_before(open_client):
    _predict_and_record(open_client)
    _predict_and_record(open_client, {"Authorization": "Bearer whatever"})  # a header is ignored when no key is set
    spec = open_client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert not any("security" in op or "401" in op["responses"] for ops in spec["paths"].values()
                   for op in ops.values())


@pytest.mark.parametrize("headers, detail", [
    ({}, MISSING),
    ({"Authorization": f"Bearer {KEY}x"}, WRONG),
    ({"X-API-Key": KEY[:-1]}, WRONG),
    ({"Authorization": "Bearer "}, MISSING),
    ({"Authorization": f"Basic {KEY}"}, MISSING),  # the key, but not as a bearer token
    ({"Authorization": KEY}, MISSING),
    ({"X-API-Key": ""}, MISSING),
    ({"Authorization": "Bearer wrong", "X-API-Key": "also-wrong"}, WRONG),
])
@pytest.mark.parametrize("path", ["/predict", "/actuals"])
def test_with_a_key_a_missing_or_wrong_one_answers_401(keyed, headers, detail, path):
    r = keyed.post(path, json=BODY if path == "/predict" else {"actuals": []}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"detail": detail}
    assert r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text and KEY[:-1] not in r.text and VAR not in r.text


def test_the_401_comes_before_the_body_is_parsed(keyed):
    """Unauthenticated clients learn nothing from their body: malformed JSON, a wrong shape, or a path that does not
    exist all answer 401, never 422 or 404."""
    for path, content in [("/predict", b"{not json"), ("/actuals", b'{"actuals": "x"}'), ("/nowhere", b"{}")]:
        r = keyed.post(path, content=content, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()) == (401, {"detail": MISSING}), path


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                                     {"X-API-Key": KEY}, {"x-api-key": KEY},
                                     {"Authorization": "Bearer wrong", "X-API-Key": KEY},
                                     {"Authorization": f"Bearer {KEY}", "X-API-Key": "wrong"}])
def test_with_a_key_either_header_is_served(keyed, headers):
    _predict_and_record(keyed, headers)
    r = keyed.post("/predict", content=b"{not json", headers={**headers, "content-type": "application/json"})
    assert r.status_code == 422  # past the key, the usual answers


def test_with_a_key_the_reading_endpoints_stay_open(keyed):
    for path in ("/health", "/metadata", "/stats", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/predict").status_code == 405  # a GET on a POST endpoint: no key asked, nothing done
    keyed.post("/predict", json=BODY)
    assert keyed.get("/stats").json()["responses"].get("4xx", 0) >= 1  # 401s are counted like any answer


def test_with_a_key_openapi_declares_it_on_every_post(keyed):
    spec = keyed.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer", "description": schemes["HTTPBearer"]
                                     ["description"]}
    assert schemes["APIKeyHeader"]["type"] == "apiKey" and schemes["APIKeyHeader"]["name"] == "X-API-Key"
    assert schemes["APIKeyHeader"]["in"] == "header"
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "post":  # either scheme will do
                assert {next(iter(s)) for s in op["security"]} == {"HTTPBearer", "APIKeyHeader"}, path
                assert "401" in op["responses"], path
            else:
                assert "security" not in op, (method, path)
    assert {"/predict", "/actuals"} <= {p for p, ops in spec["paths"].items() if "post" in ops}


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_named_variable_that_is_unset_or_empty_stops_the_service(holder, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    serving = ServingConfig(api_key_env=VAR)
    with pytest.raises(PipelineError, match=f"environment variable {VAR}, which is unset or empty"):
        resolve_api_key(serving)
    with pytest.raises(PipelineError, match=VAR):
        srv.create_app(holder, serving)


def test_the_key_is_read_from_the_variable_and_trimmed():
    assert resolve_api_key(ServingConfig()) is None
    assert resolve_api_key(ServingConfig(api_key_env="K"), {"K": f" {KEY}\n"}) == KEY


@pytest.mark.parametrize("name", ["my key", "1ABC", "RNN-KEY", ""])
def test_api_key_env_must_be_a_variable_name(name):
    with pytest.raises(ValueError):
        ServingConfig(api_key_env=name)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
                                            ("LocalHost", True), ("127.0.1.1", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.20", False), ("example.org", False)])
def test_only_a_non_loopback_host_without_a_key_is_warned_about(host, loopback):
    assert is_loopback(host) is loopback
    warning = exposure_warning(host, 8000, has_key=False)
    assert (warning is None) is loopback
    if warning:
        assert "anyone who can reach the port can post predictions and actuals" in warning
        assert "api_key_env" in warning
    assert exposure_warning(host, 8000, has_key=True) is None


# ---- rnn-pipeline serve -------------------------------------------------------------------------------------------
class _Stop(PipelineError):
    """Raised where `serve` would start loading the model: the startup checks have run by then."""


def _serve(tmp_path, monkeypatch, capsys, extra: str = "", args=()):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: auth\ndata: {{builtin: seed_sine}}\nstores: {{root: '{tmp_path / 'state'}'}}\n{extra}")

    def stop():
        raise _Stop("stopped before the model loads")

    monkeypatch.setattr(cli, "quiet_libraries", stop)
    monkeypatch.setattr(sys, "argv", ["rnn-pipeline", "serve", "--config", str(cfg), *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr()


def test_serve_with_an_unset_variable_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(VAR, raising=False)
    code, out = _serve(tmp_path, monkeypatch, capsys, f"serving: {{api_key_env: {VAR}}}\n")
    assert code == 2
    (line,) = out.err.strip().splitlines()
    assert line.startswith(f"error: serving.api_key_env names the environment variable {VAR}, which is unset or "
                           "empty")
    assert "stopped before" not in out.err  # it stops before anything heavy happens


def test_serve_on_all_interfaces_without_a_key_warns(tmp_path, monkeypatch, capsys):
    code, out = _serve(tmp_path, monkeypatch, capsys, args=["--host", "0.0.0.0", "--port", "8123"])
    assert code == 2 and "stopped before the model loads" in out.err
    assert ("warning: serving on 0.0.0.0:8123 without an API key: anyone who can reach the port can post "
            "predictions and actuals") in out.err


@pytest.mark.parametrize("extra, args", [(f"serving: {{api_key_env: {VAR}}}\n", ["--host", "0.0.0.0"]),
                                         ("", []), ("serving: {host: '::1'}\n", [])])
def test_serve_with_a_key_or_on_loopback_does_not_warn(tmp_path, monkeypatch, capsys, extra, args):
    monkeypatch.setenv(VAR, KEY)
    code, out = _serve(tmp_path, monkeypatch, capsys, extra, args)
    assert code == 2 and "stopped before the model loads" in out.err
    assert "warning" not in out.err and KEY not in out.err + out.out


def test_the_routes_check_the_key_themselves_too(holder, monkeypatch):
    """The security dependency that declares the schemes in OpenAPI also enforces them: without the middleware, a
    missing or wrong key still answers 401."""

    class NoGuard:
        def __init__(self, app, check):
            self.app = app

        async def __call__(self, scope, receive, send):
            await self.app(scope, receive, send)

    monkeypatch.setattr(srv, "KeyGuard", NoGuard)
    monkeypatch.setenv(VAR, KEY)
    client = TestClient(srv.create_app(holder, ServingConfig(api_key_env=VAR)))
    for headers, status in [({}, 401), ({"X-API-Key": "wrong"}, 401), ({"Authorization": f"Bearer {KEY}"}, 200),
                            ({"X-API-Key": KEY}, 200)]:
        r = client.post("/predict", json=BODY, headers=headers)
        assert r.status_code == status, (headers, r.text)
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer" and KEY not in r.text
