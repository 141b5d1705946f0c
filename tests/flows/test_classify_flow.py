"""Sequence classification through the training flow: built-in JapaneseVowels, a user's text file, the CLI, the
gate, and bad input that changes nothing in the registry."""

import io
import json
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest

from flows.training import training_flow
from rnn_pipeline.data import datasets
from rnn_pipeline.errors import DataValidationError

pytestmark = pytest.mark.slow


def _registry(root):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                               registry_uri=f"sqlite:///{root / 'mlflow.db'}")


def _versions(root, name):
    if not (root / "mlflow.db").exists():
        return []
    client = _registry(root)
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    return versions, {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_japanese_vowels_builtin_trains_registers_and_predicts_json_sequences(tmp_path, prefect_harness, cli):
    """The built-in config on the fixed 370-utterance test set, shortened (a few epochs of a small model): the
    accuracy of the config as shipped (>= 0.97 over several seeds) is measured by benchmarks/classification.py."""
    s = training_flow("japanese_vowels", {"stores": {"root": str(tmp_path / "state")}, "model": {"hidden": 32},
                                          "training": {"max_epochs": 4}, "evaluation": {"plots": False}})
    assert s["n_test"] == 370 and s["task"] == "classification"
    assert s["metrics"]["accuracy"] > s["baselines"]["majority"]["accuracy"] + 0.3, s["metrics"]  # it learned
    assert "summary_logreg" in s["baselines"]
    saved = json.loads((tmp_path / "state" / "last_run.json").read_text())
    assert saved["metrics"]["accuracy"] == s["metrics"]["accuracy"] and "f1_macro" in saved["metrics"]
    assert saved["save_load_max_abs_diff"] < 1e-6

    # raw sequences as JSON through the CLI: the test predictions as logged, then a ragged one refused
    frame = datasets.japanese_vowels()
    test = frame[frame.split == "test"]
    ids = test.sequence_id.unique()[[0, 150, 369]]
    seqs = [test[test.sequence_id == i].filter(like="dim_").to_numpy().tolist() for i in ids]
    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    cfg = tmp_path / "jv.yaml"
    cfg.write_text(f"name: japanese_vowels\ntask: classification\ndata: {{builtin: japanese_vowels}}\n"
                   f"stores: {{root: '{tmp_path / 'state'}'}}\n")
    code, stdout, stderr = cli("predict", "--config", cfg, "--input", tmp_path / "seqs.json")  # in-process
    assert code == 0, stderr[-2000:]
    got = pd.read_csv(io.StringIO(stdout))
    logged = pd.read_csv(_registry(tmp_path / "state").download_artifacts(
        s["mlflow_run_id"], "predictions/test_predictions.csv", str(tmp_path))).set_index("id").loc[ids]
    assert got.label.astype(str).tolist() == logged.predicted.astype(str).tolist()
    np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), logged.filter(like="prob_").to_numpy(),
                               atol=1e-6)
    seqs[1][3] = seqs[1][3][:5]
    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    code, _, stderr = cli("predict", "--config", cfg, "--input", tmp_path / "seqs.json")
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'seqs.json'}: sequence 1, step 3: "
                                                          "ragged: 5 values, the model reads 12 channels")


def _text_file(path, n=240, seed=0):
    """Three balanced classes told apart by cue words placed anywhere in filler text."""
    rng = np.random.default_rng(seed)
    filler = ["the", "film", "was", "a", "story", "plot", "acting"]
    rows = []
    for i in range(n):
        kind = i % 3
        words = list(rng.choice(filler, int(rng.integers(2, 6))))
        if kind == 0:
            cue, label = ["good"], "positive"
        elif kind == 1:
            cue, label = ["not", "good"], "negative"
        else:
            cue, label = ["boring"], "mixed"
        pos = int(rng.integers(0, len(words) + 1))
        rows.append({"review": " ".join(words[:pos] + cue + words[pos:]).capitalize() + ".", "sentiment": label})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _text_config(folder, extra=""):
    _text_file(folder / "reviews.csv")
    path = folder / "reviews.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: reviews
        task: classification
        seed: 3
        data: {{path: reviews.csv, text_column: review, label_column: sentiment}}
        features: {{tokenizer: word, min_freq: 1, padding: pre}}
        model: {{cell: gru, hidden: 16, embedding_dim: 8, bidirectional: true, pooling: last}}
        training: {{max_epochs: 40, patience: 8, lr: 0.01, batch_size: 16}}
        tuning:
          n_trials: 2
          max_epochs: 3
          space: {{cell: [gru, lstm], pooling: [last, mean]}}
        stores: {{root: "{folder / 'state'}"}}
        """) + textwrap.dedent(extra))
    return path


def test_text_config_registers_a_champion_that_predicts_raw_text(tmp_path, prefect_harness, cli):
    cfg = _text_config(tmp_path)
    s = training_flow(str(cfg))
    root = tmp_path / "state"
    assert s["promoted"] and s["model_version"] == "1" and s["task"] == "classification"
    assert s["n_trials"] == 2 and s["classes"] == ["mixed", "negative", "positive"]
    assert {"majority", "tfidf_logreg"} == set(s["baselines"])
    for k in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc", "log_loss"):
        assert k in s["metrics"]
    assert s["metrics"]["accuracy"] >= 0.9 and s["baselines"]["majority"]["accuracy"] < 0.4
    client = _registry(root)
    files = {a.path for a in client.list_artifacts(s["mlflow_run_id"], "plots")}
    assert "plots/confusion_matrix.png" in files
    report = json.loads(open(client.download_artifacts(s["mlflow_run_id"], "report/classification_report.json",
                                                       str(tmp_path))).read())
    assert set(s["classes"]) <= set(report)
    mv = client.get_model_version("reviews", "1")
    assert mv.tags["task"] == "classification" and float(mv.tags["test_accuracy"]) == s["metrics"]["accuracy"]

    code, stdout, stderr = cli("predict", "--config", cfg, "--text", "The plot was not good", "--text", "A good film",
                               cwd=tmp_path)  # in-process
    assert code == 0, stderr[-2000:]
    lines = [ln for ln in stdout.strip().splitlines()]
    assert lines[0] == "sequence_id,label,prob_mixed,prob_negative,prob_positive"
    rows = [ln.split(",") for ln in lines[1:]]
    assert [r[1] for r in rows] == ["negative", "positive"]
    assert all(abs(sum(map(float, r[2:])) - 1) < 1e-5 for r in rows)

    code, _, stderr = cli("predict", "--config", cfg, "--text", "   ", cwd=tmp_path)
    assert code != 0 and "empty text" in stderr.strip().splitlines()[-1]

    # a weaker challenger (one epoch, two units) loses the gate on macro F1: the champion stays
    s2 = training_flow(str(cfg), {"model": {"hidden": 2}, "training": {"max_epochs": 1}, "tuning": {"n_trials": 0},
                                 "evaluation": {"plots": False}})
    assert not s2["promoted"] and s2["champion_version"] == "1"
    assert "f1_macro" in s2["reason"] and "does not beat champion v1" in s2["reason"]


BAD_TRAINING_INPUTS = [
    (lambda f: f.drop(columns=["sentiment"]), "missing label column 'sentiment'"),
    (lambda f: f.assign(sentiment="positive"), "single class"),
    (lambda f: f.assign(review=f.review.where(f.index != 7, " ")), "empty text"),
    (lambda f: f.assign(split=np.where(np.arange(len(f)) < 200, "train", "test"),
                        sentiment=f.sentiment.where(f.index != 230, "sarcastic")),
     "label 'sarcastic' appears in the test split but never in training"),
]


def test_bad_training_input_is_refused_and_changes_nothing(tmp_path, prefect_harness):
    """One champion, then each bad file in turn through the flow: refused with its message, registry untouched."""
    cfg = _text_config(tmp_path, "")
    s = training_flow(str(cfg), {"tuning": {"n_trials": 0}, "training": {"max_epochs": 2},
                                  "evaluation": {"plots": False}})
    before = _versions(tmp_path / "state", "reviews")
    assert before == (["1"], {"challenger": "1", "champion": "1"}) and s["promoted"]
    good = pd.read_csv(tmp_path / "reviews.csv")
    for change, message in BAD_TRAINING_INPUTS:
        bad = change(good.copy())
        bad.to_csv(tmp_path / "reviews.csv", index=False)
        overrides = {"data": {"split_column": "split"}} if "split" in bad.columns else None
        with pytest.raises(DataValidationError, match=message):
            training_flow(str(cfg), overrides)
        assert _versions(tmp_path / "state", "reviews") == before, message
