"""Classification: test metrics (sklearn), the majority and bag-of-features baselines on the same items, and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.forecasting.evaluation import _save_figure, _training_plots


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, precision/recall/F1 (macro and weighted), ROC-AUC (binary; one-vs-rest for several classes) and
    log loss, from sklearn. y_true: class indices; proba: (N, classes)."""
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support, roc_auc_score

    labels = list(range(n_classes))
    y_pred = proba.argmax(1)
    out = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)})
    present = np.unique(y_true)
    try:
        if n_classes == 2:
            out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1])) if len(present) == 2 else float("nan")
        else:  # one-vs-rest over the classes present in y_true (a missing class has no positive to rank)
            p = proba[:, present] / np.clip(proba[:, present].sum(1, keepdims=True), 1e-12, None)
            out["roc_auc"] = float(roc_auc_score(y_true, p, multi_class="ovr", labels=present)) \
                if len(present) > 2 else float("nan")
    except ValueError:
        out["roc_auc"] = float("nan")
    out["log_loss"] = float(log_loss(y_true, proba / proba.sum(1, keepdims=True), labels=labels))
    return out


def summary_features(items: list[np.ndarray]) -> np.ndarray:
    """Order-ignoring features of numeric sequences: length, and per channel mean, std, min, max."""
    return np.stack([np.concatenate([[len(x)], x.mean(0), x.std(0), x.min(0), x.max(0)]) for x in items])


def classification_baselines(data, seed: int) -> dict[str, np.ndarray]:
    """Non-sequential models fitted on train + validation, predicting test probabilities: the majority class,
    and a model that ignores order (text: TF-IDF + logistic regression; numeric: summary statistics + logistic
    regression)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_idx = np.concatenate([data.split["train"], data.split["val"]])
    test_idx = data.split["test"]
    items = data.raw.items
    k = len(data.classes)

    def full(model, x):  # probabilities over every class, also one the fitting data lacks
        p = np.zeros((len(x), k))
        p[:, model.classes_] = model.predict_proba(x)
        return p

    out = {}
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(fit_idx), 1)), data.y[fit_idx])
    out["majority"] = full(dummy, np.zeros((len(test_idx), 1)))
    if data.kind == "text":
        enc = data.encoder.text
        model = make_pipeline(TfidfVectorizer(lowercase=enc.lowercase, token_pattern=enc.pattern, min_df=1,
                                              sublinear_tf=True),
                              LogisticRegression(max_iter=2000, C=4.0, random_state=seed))
        model.fit([items[i] for i in fit_idx], data.y[fit_idx])
        out["tfidf_logreg"] = full(model, [items[i] for i in test_idx])
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
        model.fit(summary_features([items[i] for i in fit_idx]), data.y[fit_idx])
        out["summary_logreg"] = full(model, summary_features([items[i] for i in test_idx]))
    return out


def evaluate_classifier(data, predict_proba, seed: int) -> dict:
    """Score the model (`predict_proba`: raw items -> probabilities) and the baselines on the same test items."""
    from sklearn.metrics import classification_report, confusion_matrix

    idx = data.split["test"]
    y_true = data.y[idx]
    proba = predict_proba([data.raw.items[i] for i in idx])
    k = len(data.classes)
    result = {"metrics": classification_metrics(y_true, proba, k), "baselines": {}, "n_test": int(len(idx)),
              "y_true": y_true, "proba": proba, "test_index": idx}
    for name, p in classification_baselines(data, seed).items():
        result["baselines"][name] = classification_metrics(y_true, p, k)
    result["report"] = classification_report(y_true, proba.argmax(1), labels=list(range(k)),
                                             target_names=[str(c) for c in data.classes], output_dict=True,
                                             zero_division=0)
    result["confusion"] = confusion_matrix(y_true, proba.argmax(1), labels=list(range(k)))
    m = result["metrics"]["accuracy"]
    result["skill"] = {name: m - b["accuracy"] for name, b in result["baselines"].items()}  # accuracy gained
    return result


def classification_frame(ev: dict, data) -> pd.DataFrame:
    """The test predictions beside the true labels, one row per item."""
    classes = np.asarray(data.classes, dtype=object)
    frame = pd.DataFrame(ev["proba"], columns=[f"prob_{c}" for c in data.classes])
    frame.insert(0, "id", data.raw.ids[ev["test_index"]])
    frame.insert(1, "label", classes[ev["y_true"]])
    frame.insert(2, "predicted", classes[ev["proba"].argmax(1)])
    return frame


def save_classification_plots(folder: str | Path, ev: dict, classes: list[str], history: list[dict],
                              study=None) -> list[Path]:
    """The confusion matrix (counts), loss curves and the Optuna plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = min(4 + 0.5 * len(classes), 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(ev["confusion"], display_labels=[str(c) for c in classes]).plot(ax=ax, colorbar=False)
    ax.set_title(f"Test confusion matrix (accuracy {ev['metrics']['accuracy']:.3f})")
    return [_save_figure(fig, folder / "confusion_matrix.png"), *_training_plots(folder, history, study)]
