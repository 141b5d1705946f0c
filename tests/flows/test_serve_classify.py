"""Serving a text classifier: labels with probabilities, actual labels posted back, text limits; the monitoring flow
judges the logged texts, flags degradation when the posted labels disagree, and retrains on the logged labels."""

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_classify_flow import _text_config

from rnn_pipeline.monitoring.store import MonitoringStore
from rnn_pipeline.serving.app import Limits, ModelHolder, create_app
from rnn_pipeline.serving.inference_log import InferenceLog
from rnn_pipeline.tracking import mlflow_stores

pytestmark = pytest.mark.slow
TEXTS = ["The film was good.", "Not good at all, the plot.", "A boring story.", "Acting good, the story good."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("servecls")
    cfg = _text_config(folder, extra="""\
        monitoring: {source: inference_log, min_windows: 10, drift_threshold: null, drift_method: psi,
                     retrain: {tuning: reuse}}
        evaluation: {plots: false}
        """)
    assert training_flow(str(cfg))["promoted"]
    return folder, cfg


def _client(folder, max_text_chars=2000):
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    with mlflow_stores(uri):
        holder = ModelHolder("models:/reviews@champion")
        holder.load()
    store = InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    return TestClient(create_app(holder, Limits(max_text_chars=max_text_chars), store=store)), store


def test_texts_get_labels_probabilities_and_actual_labels(trained):
    folder, _ = trained
    client, store = _client(folder)
    with client:
        r = client.post("/predict", json={"texts": TEXTS})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["label"] for p in preds] == ["positive", "negative", "mixed", "positive"]
        for p in preds:
            assert set(p["probabilities"]) == {"mixed", "negative", "positive"}
            assert sum(p["probabilities"].values()) == pytest.approx(1.0)
            assert p["probabilities"][p["label"]] == max(p["probabilities"].values()) and "forecast" not in p
        a = client.post("/actuals", json={"actuals": [{"prediction_id": preds[0]["prediction_id"], "label": "positive"}]})
        assert a.status_code == 200
        wrong = client.post("/actuals", json={"actuals": [{"prediction_id": preds[1]["prediction_id"],
                                                           "values": {"value": [1.0]}}]})
        assert wrong.status_code == 422 and "needs a non-empty 'label'" in wrong.text
        for payload, message in [({"texts": ["   "]}, "texts[0] is empty"),
                                 ({"texts": ["good " * 500]}, "serving.max_text_chars"),
                                 ({"series": [{"history": {"value": [1.0]}}]}, "send 'texts'"),
                                 ({"texts": [3]}, "valid string")]:
            bad = client.post("/predict", json=payload)
            assert bad.status_code == 422 and message in bad.text, bad.text
        meta = client.get("/metadata").json()
        assert meta["task"] == "classification" and meta["classes"] == ["mixed", "negative", "positive"]
    rows = store.predictions("reviews").set_index("prediction_id")
    store.dispose()
    first = rows.loc[preds[0]["prediction_id"]]
    assert first.label == "positive" and first.task == "classification" and '"text":"The film was good."' in first.inputs
    assert first.actual == '{"label": "positive"}'


def test_log_monitoring_flags_wrong_labels_and_retrains_on_the_logged_labels(trained):
    from flows.monitoring import monitoring_flow

    folder, cfg = trained
    rng = np.random.default_rng(0)
    texts = [f"{' '.join(rng.choice(['the', 'film', 'plot'], 3))} {cue}." for cue in ("good", "boring") * 20]
    client, store = _client(folder)
    with client:
        preds = client.post("/predict", json={"texts": texts}).json()["predictions"]
        # the world changed: what the model calls positive is now 'negative', 'mixed' now 'positive'
        flip = {"positive": "negative", "mixed": "positive", "negative": "mixed"}
        r = client.post("/actuals", json={"actuals": [{"prediction_id": p["prediction_id"], "label": flip[p["label"]]}
                                                      for p in preds]})
        assert r.status_code == 200
    store.dispose()
    [b] = monitoring_flow(str(cfg))["batches"]
    # 40 flipped labels, plus the correct one posted by the test above
    assert b["verdict"] == "degraded" and b["n_labelled"] == 41 and b["champion_accuracy"] == pytest.approx(1 / 41)
    assert b["action"].startswith("retrain"), b  # the logged texts with their posted labels were learned from
    store = MonitoringStore(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    row = store.history("reviews").iloc[-1]
    store.dispose()
    assert row.batch.startswith("inference-log") and Path(row.data_path).exists()
    assert b["new_version"] == "2"
