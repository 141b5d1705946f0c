"""Sequence classification without Prefect: masking, tokenizers, vocabularies, readers and their errors, splits,
class imbalance, metrics and baselines."""

import numpy as np
import pandas as pd
import pytest
import torch

from rnn_pipeline.classification import evaluation as cls_evaluation
from rnn_pipeline.classification.reading import read_sequences, read_texts, sequences_from_arrays
from rnn_pipeline.classification.sequences import TextEncoder, pad, prepare_sequences
from rnn_pipeline.config import PipelineConfig
from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.models import ClassifierSpec, RNNClassifier


def _model(padding, kind="numeric", cell="gru", bidirectional=True, pooling="last", encoding="embedding", layers=2):
    torch.manual_seed(0)
    spec = ClassifierSpec(cell=cell, hidden=8, layers=layers, dropout=0.0, n_classes=3, input_kind=kind,
                          n_inputs=3 if kind == "numeric" else 20, encoding=encoding, embedding_dim=5,
                          bidirectional=bidirectional, pooling=pooling, padding=padding)
    return RNNClassifier(spec).eval()


def _seqs(kind):
    g = torch.Generator().manual_seed(1)
    lengths = [4, 11, 1, 7]
    if kind == "numeric":
        return [torch.randn(n, 3, generator=g) for n in lengths]
    return [torch.randint(2, 20, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("kind,cell,bidirectional,pooling,encoding", [
    ("numeric", "gru", True, "last", "embedding"), ("numeric", "lstm", False, "mean", "embedding"),
    ("numeric", "rnn_tanh", True, "mean", "embedding"), ("text", "lstm", True, "last", "embedding"),
    ("text", "gru", False, "mean", "onehot"), ("text", "gru", True, "last", "integer")])
def test_a_prediction_does_not_depend_on_the_padding_of_its_batch(padding, kind, cell, bidirectional, pooling,
                                                                  encoding):
    model = _model(padding, kind, cell, bidirectional, pooling, encoding)
    seqs = _seqs(kind)
    with torch.no_grad():
        alone = torch.cat([model(*pad([s], padding)) for s in seqs])
        together = model(*pad(seqs, padding))
        # the short sequences next to a much longer one (more padding)
        longer = seqs + [torch.zeros(40, 3) if kind == "numeric" else torch.full((40,), 5)]
        padded_more = model(*pad(longer, padding))[:-1]
        # the same weights reading the other side's padding
        other = RNNClassifier(model.spec.__class__(**{**model.spec.to_json(),
                                                      "padding": "post" if padding == "pre" else "pre"}))
        other.load_state_dict(model.state_dict())
        other.eval()
        flipped = other(*pad(seqs, other.spec.padding))
    for got in (together, padded_more, flipped):
        np.testing.assert_allclose(got.numpy(), alone.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_without_packing_padding_would_change_the_prediction(padding):
    """The control: the same RNN run over the padded batch as it is reads the pad steps, and its outputs move."""
    model = _model(padding, bidirectional=False, layers=1)
    seqs = _seqs("numeric")
    with torch.no_grad():
        x, lengths = pad(seqs, padding)
        out, h = model.rnn(x)
        alone = [model.rnn(s[None])[1][-1, 0] for s in seqs]
        last = h[-1]  # what an unmasked model would pool
    diffs = [float((last[i] - alone[i]).abs().max()) for i in range(len(seqs)) if len(seqs[i]) < x.shape[1]]
    assert max(diffs) > 1e-3


def test_word_tokenizer_vocabulary_and_unknown_tokens():
    train = ["The film is GOOD.", "the film isn't good", "a good, good film", "rare words once"]
    enc = TextEncoder.fit(train, "word", lowercase=True, pattern=PipelineConfig.model_fields["features"]
                          .default_factory().token_pattern, min_freq=2, max_vocab=6)
    assert enc.words("The film isn't GOOD!") == ["the", "film", "isn't", "good", "!"]
    # <pad>, <unk>, then the tokens seen at least twice by frequency (good 4, film 3, the 2)
    assert enc.vocab == ["<pad>", "<unk>", "good", "film", "the"]
    capped = TextEncoder.fit(train, "word", True, enc.pattern, min_freq=1, max_vocab=4)
    assert capped.vocab == ["<pad>", "<unk>", "good", "film"]
    ids = enc.encode(["the good zebra"])[0]
    assert ids.tolist() == [enc.index["the"], enc.index["good"], 1]
    assert enc.oov_share([ids])[0] == pytest.approx(1 / 3)
    again = TextEncoder.from_json(enc.to_json())
    assert again.encode(["the good zebra"])[0].tolist() == ids.tolist()


def test_bpe_splits_unseen_words_into_learned_pieces_and_round_trips():
    train = ["the running runner runs", "a runner was running", "the runs were run", "running and running"] * 5
    enc = TextEncoder.fit(train, "bpe", lowercase=True, pattern=r"\w+|[^\w\s]", min_freq=2, max_vocab=60)
    ids = enc.encode(["runners"])[0]
    assert len(ids) >= 2 and 1 not in ids.tolist()  # an unseen word made of known pieces: no <unk>
    assert enc.vocab_size <= 60
    again = TextEncoder.from_json(enc.to_json())
    assert again.encode(["the runners run"])[0].tolist() == enc.encode(["the runners run"])[0].tolist()


def _long(n_seq=12, classes=("a", "b", "c"), length=(3, 9), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_seq):
        n = int(rng.integers(*length))
        for t in range(n):
            rows.append({"sequence_id": f"s{i}", "step": t, "x": float(rng.normal()), "y": float(rng.normal()),
                         "label": classes[i % len(classes)]})
    return pd.DataFrame(rows)


def test_long_table_reader_groups_orders_and_keeps_labels():
    frame = _long().sample(frac=1, random_state=3)  # rows shuffled: the step column restores the order
    raw = read_sequences(frame, "f.csv", "sequence_id", "step", ["x", "y"], "label")
    assert len(raw) == 12 and raw.channels == ["x", "y"]
    first = frame[frame.sequence_id == raw.ids[0]].sort_values("step")
    np.testing.assert_array_equal(raw.items[0], first[["x", "y"]].to_numpy())
    assert raw.labels[0] == first.label.iloc[0]


@pytest.mark.parametrize("change,message", [
    (lambda f: f.drop(columns=["label"]), "missing label column 'label'"),
    (lambda f: f.assign(x=f.x.astype(object).where(f.index != 5, "abc")), "non-numeric value"),
    (lambda f: f.assign(y=f.y.where(f.index != 4)), "missing value"),
    (lambda f: f.assign(step=f.step.where(f.index != 1, 0)), "has step 0 twice"),
    (lambda f: f.assign(label=f.label.where(f.index != 2, "zz")), "has two labels"),
])
def test_bad_long_tables_are_refused_with_file_column_row(change, message):
    with pytest.raises(DataValidationError, match=message) as e:
        read_sequences(change(_long()), "f.csv", "sequence_id", "step", ["x", "y"], "label")
    assert "f.csv" in str(e.value)


def test_raw_sequence_lists_refuse_empty_ragged_and_non_numeric():
    ok = sequences_from_arrays([[[1, 2], [3, 4]]], ["x", "y"])
    assert ok[0].shape == (2, 2)
    with pytest.raises(DataValidationError, match="sequence 1 is empty"):
        sequences_from_arrays([[[1, 2]], []], ["x", "y"])
    with pytest.raises(DataValidationError, match="ragged"):
        sequences_from_arrays([[[1, 2], [3]]], ["x", "y"])
    with pytest.raises(DataValidationError, match="not a number"):
        sequences_from_arrays([[[1, "a"]]], ["x", "y"])
    with pytest.raises(DataValidationError, match="sequence 0 is not a list of steps"):
        sequences_from_arrays([3.0], ["x", "y"])


def test_empty_and_whitespace_texts_are_refused_with_their_row():
    frame = pd.DataFrame({"text": ["fine", "  ", "ok"], "label": ["p", "n", "p"]})
    with pytest.raises(DataValidationError, match="empty text") as e:
        read_texts(frame, "t.csv", "text", "label")
    assert e.value.row == 2 and e.value.column == "text"
    with pytest.raises(DataValidationError, match="missing label column 'sentiment'"):
        read_texts(frame, "t.csv", "text", "sentiment")


def _features(**kw):
    return PipelineConfig.model_validate({"name": "x", "task": "classification", "data": {"builtin": "x"},
                                          "features": kw}).features


def _texts(n=60, seed=0):
    rng = np.random.default_rng(seed)
    pos, neg = ["good", "great", "fine"], ["bad", "awful", "poor"]
    texts, labels = [], []
    for i in range(n):
        lab = "pos" if i % 3 else "neg"  # 2:1 imbalance
        words = list(rng.choice(pos if lab == "pos" else neg, 3)) + list(rng.choice(["the", "a", "film"], 2))
        texts.append(" ".join(words))
        labels.append(lab)
    return read_texts(pd.DataFrame({"text": texts, "label": labels}), "t.csv", "text", "label")


def test_split_is_stratified_and_the_vocabulary_sees_only_training_texts():
    raw = _texts()
    raw.items[-1] = raw.items[-1] + " zebra"  # a word in one text only
    data = prepare_sequences(raw, "t.csv", _features(min_freq=1), val=0.2, test=0.2, seed=0,
                             imbalance="class_weights")
    assert sum(len(v) for v in data.split.values()) == 60
    assert set(np.concatenate(list(data.split.values()))) == set(range(60))
    for part in data.split.values():  # 1/3 negative in every split
        assert abs(np.mean(data.y[part] == data.classes.index("neg")) - 1 / 3) < 0.1
    in_train = len(raw) - 1 in data.split["train"]
    assert ("zebra" in data.encoder.text.index) == in_train


def test_class_weights_and_the_weighted_sampler_balance_the_classes():
    data = prepare_sequences(_texts(), "t.csv", _features(), val=0.2, test=0.2, seed=0, imbalance="class_weights")
    w = data.batches("train").class_weights.numpy()
    counts = np.bincount(data.y[data.split["train"]])
    np.testing.assert_allclose(w * counts, (w * counts)[0])  # weight x count equal across classes
    assert data.batches("val").class_weights is None  # validation loss stays unweighted
    data.imbalance = "weighted_sampler"
    s = data.batches("train")
    draws = torch.cat([s.order(torch.Generator().manual_seed(i)) for i in range(200)])
    share = np.mean(data.y[data.split["train"]][draws.numpy()] == 0)
    assert abs(share - 0.5) < 0.05 and s.class_weights is None


def test_single_class_unseen_label_and_too_long_are_clear_errors():
    raw = _texts()
    one = raw.subset(np.flatnonzero(raw.labels == "pos"))
    with pytest.raises(DataValidationError, match="single class"):
        prepare_sequences(one, "t.csv", _features(), val=0.2, test=0.2, seed=0, imbalance="none")
    fixed = _texts()
    fixed.split = np.where(np.arange(60) < 45, "train", "test").astype(object)
    fixed.labels = fixed.labels.copy()
    fixed.labels[50] = "neutral"
    with pytest.raises(DataValidationError, match="label 'neutral' appears in the test split but never in training"):
        prepare_sequences(fixed, "t.csv", _features(), val=0.2, test=0.2, seed=0, imbalance="none")
    with pytest.raises(DataValidationError, match="more than features.max_length 3"):
        prepare_sequences(_texts(), "t.csv", _features(max_length=3, too_long="error"), val=0.2, test=0.2, seed=0,
                          imbalance="none")


def test_truncation_keeps_the_configured_end_and_is_counted():
    raw = read_sequences(_long(length=(6, 9)), "f.csv", "sequence_id", "step", ["x", "y"], "label")
    for side in ("pre", "post"):
        data = prepare_sequences(raw, "f.csv", _features(max_length=4, truncate_side=side, scaler="none"),
                                 val=0.25, test=0.25, seed=0, imbalance="none")
        assert data.n_truncated == 12 and all(len(x) == 4 for x in data.x)
        want = raw.items[0][-4:] if side == "pre" else raw.items[0][:4]
        np.testing.assert_allclose(data.x[0], want.astype("float32"))


def test_classification_metrics_and_baselines_on_known_cases():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.eye(3)[[0, 0, 1, 2, 2, 2]] * 0.8 + 0.2 / 3
    m = cls_evaluation.classification_metrics(y, proba, 3)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["f1_macro"] == pytest.approx(np.mean([1.0, 2 / 3, 0.8]))
    assert 0.5 < m["roc_auc"] <= 1 and m["log_loss"] > 0
    data = prepare_sequences(_texts(90), "t.csv", _features(), val=0.2, test=0.3, seed=0, imbalance="none")
    base = cls_evaluation.classification_baselines(data, seed=0)
    y_test = data.y[data.split["test"]]
    majority = cls_evaluation.classification_metrics(y_test, base["majority"], 2)["accuracy"]
    assert majority == pytest.approx(np.mean(y_test == data.classes.index("pos")))
    # the words alone decide the class here: the order-free TF-IDF model is perfect
    assert cls_evaluation.classification_metrics(y_test, base["tfidf_logreg"], 2)["accuracy"] == 1.0


def test_jitter_applies_to_numeric_training_batches_only():
    raw = read_sequences(_long(), "f.csv", "sequence_id", "step", ["x", "y"], "label")
    data = prepare_sequences(raw, "f.csv", _features(), val=0.25, test=0.25, seed=0, imbalance="none",
                             noise_std=0.5)
    model = RNNClassifier(ClassifierSpec(
        cell="gru", hidden=4, layers=1, dropout=0.0, n_classes=3, input_kind="numeric", n_inputs=2))
    train, val = data.batches("train"), data.batches("val")
    assert train.noise_std == 0.5 and val.noise_std == 0.0
    idx = torch.arange(len(train))
    assert train.loss(model, idx).item() != train.loss(model, idx).item()  # fresh noise every batch
    assert val.eval_loss(model) == val.eval_loss(model)
    text = prepare_sequences(_texts(), "t.csv", _features(), val=0.2, test=0.2, seed=0, imbalance="none",
                             noise_std=0.5)
    assert text.batches("train").noise_std == 0.0  # token ids are not jittered


@pytest.mark.parametrize("step_column", ["step", None])
def test_items_written_for_a_retrain_read_back_the_same(step_column):
    from rnn_pipeline.classification.reading import items_frame, read_items

    d = PipelineConfig.model_validate({"name": "x", "task": "classification", "data": {
        "builtin": "x", "step_column": step_column, "split_column": "split"}}).data
    frame = _long().assign(split="train")
    if step_column is None:
        frame = frame.drop(columns=["step"])
    raw = read_items(frame, "f.csv", d, labels=True, split=True)
    assert raw.channels == ["x", "y"] and set(raw.split) == {"train"}
    with pytest.raises(DataValidationError, match="missing split column 'split'"):
        read_items(frame.drop(columns=["split"]), "f.csv", d, labels=True, split=True)
    again = read_items(items_frame(raw, d), "ref.parquet", d, labels=True)  # no split column: not required
    assert again.channels == ["x", "y"] and again.split is None
    assert list(again.labels) == list(raw.labels)
    for a, b in zip(again.items, raw.items):
        np.testing.assert_array_equal(a, b)
