"""The monitoring flow on classifiers: descriptor and predicted-label drift, accuracy on labelled batches, retraining
on labelled batches only, and bad batches quarantined."""

import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import put_mlflow_store
from test_classify_flow import _registry, _text_file

from flows.monitoring import monitoring_flow
from flows.training import training_flow
from rnn_pipeline.data import datasets
from rnn_pipeline.monitoring.store import MonitoringStore

pytestmark = pytest.mark.slow


def _history(root, name):
    store = MonitoringStore(f"sqlite:///{root / 'monitoring.db'}")
    try:
        return store.history(name)
    finally:
        store.dispose()


def _config(folder, name, data, extra=""):
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        task: classification
        seed: 1
        stores: {{root: "{folder / 'state'}"}}
        monitoring: {{incoming: "{folder / 'incoming'}", min_windows: 10}}
        evaluation: {{plots: false}}
        """) + textwrap.dedent(data) + textwrap.dedent(extra))
    (folder / "incoming").mkdir(exist_ok=True)
    put_mlflow_store(folder / "state")
    return str(path)


def test_text_batches_ok_degraded_and_quarantined(tmp_path, prefect_harness):
    _text_file(tmp_path / "reviews.csv", n=300)
    cfg = _config(tmp_path, "rev", """\
        data: {path: reviews.csv, text_column: review, label_column: sentiment}
        features: {min_freq: 1}
        model: {cell: gru, hidden: 16, embedding_dim: 8, bidirectional: true}
        training: {max_epochs: 30, patience: 6, lr: 0.01, batch_size: 16}
        tuning: {n_trials: 0}
        """)
    assert training_flow(cfg)["promoted"]
    incoming = tmp_path / "incoming"
    fresh = pd.read_csv(_text_file(tmp_path / "fresh.csv", n=90, seed=5))
    fresh.drop(columns=["sentiment"]).iloc[:45].to_csv(incoming / "b1.csv", index=False)  # no labels
    fresh.iloc[45:].to_csv(incoming / "b2.csv", index=False)  # labelled
    # a new kind of review: unknown words, much longer, labelled 'positive' whatever the model thinks
    rng = np.random.default_rng(0)
    words = ["cinematography", "overlong", "wooden", "luminous", "score", "pacing", "ensemble", "third", "act"]
    shifted = [" ".join(rng.choice(words, 14)) for _ in range(60)]
    pd.DataFrame({"review": shifted, "sentiment": "positive"}).to_csv(incoming / "b3.csv", index=False)
    pd.DataFrame({"review": ["fine", "", "good"], "sentiment": "positive"}).to_csv(incoming / "b4.csv",
                                                                                    index=False)
    out = monitoring_flow(cfg)
    rows = {b["batch"]: b for b in out["batches"]}
    assert rows["b1.csv"]["verdict"] == "ok" and rows["b1.csv"]["champion_accuracy"] is None
    assert rows["b2.csv"]["verdict"] == "ok" and rows["b2.csv"]["champion_accuracy"] >= 0.9
    assert rows["b2.csv"]["n_labelled"] == 45
    b3 = rows["b3.csv"]
    assert b3["verdict"] == "degraded" and b3["champion_accuracy"] < rows["b2.csv"]["champion_accuracy"] - 0.1
    assert b3["action"].startswith("retrain")
    assert rows["b4.csv"]["verdict"] == "invalid" and "empty text" in rows["b4.csv"]["message"]
    assert (incoming / "quarantine" / "b4.csv.error.txt").exists()
    hist = _history(tmp_path / "state", "rev")
    scores = __import__("json").loads(hist.set_index("batch").loc["b3.csv", "feature_scores"])
    assert scores["oov_share"]["drifted"] and scores["predicted_label"]["score"] >= 0
    assert {"length", "words", "non_letter_share", "oov_share", "predicted_label"} <= set(scores)
    v = _registry(tmp_path / "state").get_model_version("rev", b3["new_version"])
    assert v.tags["trigger"].startswith("monitoring:degraded:b3.csv")


def test_sequence_drift_without_new_labels_does_not_retrain(tmp_path, prefect_harness):
    frame = datasets.japanese_vowels()
    cfg = _config(tmp_path, "jv", """\
        data: {builtin: japanese_vowels, split_column: split}
        model: {cell: gru, hidden: 16, bidirectional: true, pooling: mean}
        training: {max_epochs: 15, patience: 5, lr: 0.005}
        tuning: {n_trials: 0}
        """)
    assert training_flow(cfg)["promoted"]
    test = frame[frame.split == "test"].drop(columns=["split", "label"])
    # the test file is ordered by speaker: a random sample of it is the training mix, a slice is not
    ids = np.random.default_rng(0).permutation(test.sequence_id.unique())
    test[test.sequence_id.isin(ids[:80])].to_csv(tmp_path / "incoming" / "s1.csv", index=False)
    moved = test[test.sequence_id.isin(ids[80:160])].copy()
    channels = [c for c in moved.columns if c.startswith("dim_")]
    moved[channels] = moved[channels] * 1.5 + 0.4  # a new microphone
    moved.to_csv(tmp_path / "incoming" / "s2.csv", index=False)
    moved.drop(columns=["dim_3"]).to_csv(tmp_path / "incoming" / "s3.csv", index=False)
    out = monitoring_flow(cfg)
    rows = {b["batch"]: b for b in out["batches"]}
    assert rows["s1.csv"]["verdict"] == "ok"
    assert rows["s2.csv"]["verdict"] == "drift" and rows["s2.csv"]["drift_share"] > 0.5
    assert rows["s2.csv"]["action"] == "retrain skipped (no new labels)"
    assert rows["s2.csv"]["new_champion_version"] == "1"
    assert rows["s3.csv"]["verdict"] == "invalid" and "dim_3" in rows["s3.csv"]["message"]
    versions = _registry(tmp_path / "state").search_model_versions("name='jv'")
    assert len(versions) == 1
