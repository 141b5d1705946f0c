"""The service's OpenAPI document is the served model's: POST /predict has one example, a valid request for that
model (so /docs' "Try it out" answers 200 with it); the description names the model, its version and the alias it
follows, and follows a hot swap; the error responses declare the bodies the app really answers with.

In-process (Starlette's TestClient) around the models in tests/fixtures/registered, plus a small text classifier
built here (no fixture holds one): no training, no server."""

import dataclasses
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from rnn_pipeline.config import ServingConfig
from rnn_pipeline.serving import app as srv

FIXTURES = Path(__file__).parents[1] / "fixtures" / "registered"


@pytest.fixture(scope="module", params=["forecaster", "direct_forecaster", "classifier"])
def holder(request):
    h = srv.ModelHolder(str(FIXTURES / request.param), poll_seconds=3600, client=object())  # a path: no registry
    h.load()
    return h


def _text_holder():
    """A served text classifier (untrained weights: the answers' shape is what counts)."""
    import torch

    from rnn_pipeline.classification.bundle import ClassifierBundle
    from rnn_pipeline.classification.sequences import Encoder
    from rnn_pipeline.classification.text import TextEncoder
    from rnn_pipeline.config_data import WORD_PATTERN
    from rnn_pipeline.models import ClassifierSpec, RNNClassifier

    torch.manual_seed(0)
    words = TextEncoder.fit(["a fine film", "a dull film", "fine acting"], "word", True, WORD_PATTERN, 1, 100)
    enc = Encoder("text", [], words, None, 50, "truncate", "post")
    spec = ClassifierSpec(cell="gru", hidden=8, layers=1, dropout=0.0, n_classes=2, input_kind="text",
                          n_inputs=enc.n_inputs)
    bundle = ClassifierBundle(RNNClassifier(spec).eval(), enc, ["fresh", "rotten"], "text", "id", None)
    h = srv.ModelHolder("models:/reviews@champion", poll_seconds=3600, client=object())
    h.current = srv.Served("models:/reviews@champion", "reviews", "7", "champion", None, bundle, None, "now")
    return h


def _spec(client) -> dict:
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()


def _example(spec: dict) -> dict:
    examples = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert len(examples) == 1, examples  # one task: the served model's
    (ex,) = examples.values()
    assert ex["summary"]
    return ex["value"]


def _check(spec: dict, name: str, body) -> None:
    """`body` is valid against the component schema `name` (its $refs resolved within the document)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_the_default_example_answers_200_for_each_fixture_model(holder):
    with TestClient(srv.create_app(holder)) as client:
        spec = _spec(client)
        body = _example(spec)
        assert list(body) == [holder.current.bundle.reads]
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        _check(spec, "PredictResponse", r.json())
        assert len(r.json()["predictions"]) == len(body[holder.current.bundle.reads])


@pytest.mark.parametrize("name", ["forecaster", "direct_forecaster"])
def test_a_forecasters_example_is_one_window_of_its_input_columns(name):
    h = srv.ModelHolder(str(FIXTURES / name), poll_seconds=3600, client=object())
    b = h.load().bundle
    (series,) = _example(srv.create_app(h).openapi())["series"]
    assert list(series["history"]) == b.input_columns
    assert {len(v) for v in series["history"].values()} == {b.window}


def test_a_text_classifiers_example_is_a_couple_of_texts_and_answers_200():
    h = _text_holder()
    with TestClient(srv.create_app(h)) as client:
        spec = _spec(client)
        body = _example(spec)
        assert list(body) == ["texts"] and len(body["texts"]) == 2
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        assert {p["label"] for p in r.json()["predictions"]} <= {"fresh", "rotten"}
        assert "`reviews` version **7**" in spec["info"]["description"]


def test_the_description_names_the_model_version_and_alias_and_follows_a_hot_swap():
    h = srv.ModelHolder(str(FIXTURES / "direct_forecaster"), poll_seconds=30, client=object())
    first = h.load()
    h.current = dataclasses.replace(first, name="sine", version="3", alias="champion",
                                    uri="models:/sine@champion")
    app = srv.create_app(h)
    with TestClient(app) as client:
        text = _spec(client)["info"]["description"]
        assert "`sine` version **3**" in text and "alias `champion`" in text and "follows the alias" in text
        assert "every 30 s" in text and "10 steps" in text
        h.current = dataclasses.replace(h.current, version="4")  # what ModelHolder.check does on a swap
        spec = _spec(client)
        assert "`sine` version **4**" in spec["info"]["description"]
        assert "version **3**" not in spec["info"]["description"]
        assert _example(spec)  # the example is put back into the rebuilt document
        assert app.description == spec["info"]["description"]
    h.current = dataclasses.replace(h.current, alias=None, uri="models:/sine/4")
    assert "(a fixed version)" in srv.create_app(h).openapi()["info"]["description"]


def test_error_responses_declare_the_bodies_the_app_answers_with(holder):
    b = holder.current.bundle
    with TestClient(srv.create_app(holder, ServingConfig(max_items=1))) as client:
        spec = _spec(client)
        responses = spec["paths"]["/predict"]["post"]["responses"]
        ref = {k: v["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1] for k, v in responses.items()
               if k != "200"}
        assert ref == {"400": "Problem", "413": "Problem", "422": "Invalid", "503": "Problem"}
        assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's default, never answered

        shape = client.post("/predict", json={"series": "not a list", "extra": 1})  # pydantic: a list of issues
        assert shape.status_code == 422 and isinstance(shape.json()["detail"], list), shape.text
        wrong = {"texts": ["hello"]} if b.task == "forecasting" else {"series": [{"history": {"v": [1.0]}}]}
        content = client.post("/predict", json=wrong)  # the bundle's DataValidationError: one message
        assert content.status_code == 422 and isinstance(content.json()["detail"], str), content.text
        for r in (shape, content):
            _check(spec, "Invalid", r.json())
        too_many = client.post("/predict", json={b.reads: _example(spec)[b.reads] * 2})
        assert too_many.status_code == 413
        _check(spec, "Problem", too_many.json())
        bad_length = client.post("/predict", content=b"{}", headers={"content-length": "x",
                                                                    "content-type": "application/json"})
        assert bad_length.status_code == 400
        _check(spec, "Problem", bad_length.json())
        with pytest.raises(jsonschema.ValidationError):  # the schema is not vacuous
            _check(spec, "Invalid", {"detail": [{"loc": "body"}]})


def test_metadata_and_health_declare_their_503(holder):
    spec = srv.create_app(holder).openapi()
    assert "503" in spec["paths"]["/metadata"]["get"]["responses"]
    assert "503" in spec["paths"]["/health"]["get"]["responses"]


# ---- MAPE is left out where it means nothing ----------------------------------------------------------------------
def test_no_mape_when_the_actuals_cross_zero_and_the_summary_table_prints_without_it():
    from rnn_pipeline import tasks
    from rnn_pipeline.forecasting import evaluation

    t = np.sin(np.linspace(0, 6, 60)).reshape(20, 3, 1)  # crosses zero
    m = evaluation.metrics(t, t + 0.1, mase_scale=0.5)
    assert "mape" not in m and {"mse", "rmse", "mae", "r2", "smape", "mase"} <= set(m)
    assert "mape" not in evaluation.metrics(np.r_[0.0, 1.0, 2.0], np.r_[0.1, 1.0, 2.0], 1.0)  # a zero actual
    positive = evaluation.metrics(t + 2, t + 2.1, mase_scale=0.5)
    assert positive["mape"] > 0 and evaluation.metrics(-t - 2, -t - 2.1, 0.5)["mape"] > 0  # one sign: kept
    twins = evaluation.all_metrics(t, t + 0.1, np.array([0.0]), np.array([1.0]), 0.5, 0.5)
    assert "mape" not in twins and None not in twins.values()  # nothing MLflow could not log

    base = dict(m)
    s = {"model_name": "sine", "model_version": "2", "promoted": True, "reason": "first model",
         "champion_version": "2", "best_params": {}, "n_trials": 1, "n_pruned": 0, "n_failed": 0,
         "resumed_trials": 0, "headline": "mse", "metrics": m, "baselines": {"persistence": base},
         "skill": {"persistence": 0.1}, "wall_seconds": 1.0,
         "timings": {"tune": 0.5, "final_fit": 0.2, "training_compute": 0.6}}
    table = tasks.for_name("forecasting", None).summary_table(s)
    assert "persistence" in table and "mape" not in table.lower()
