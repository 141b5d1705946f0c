"""Classification as a Task: texts or numeric sequences with their labels, split (stratified, or by a split column),
encoded, a recurrent classifier over the padded and packed batch, and an evaluation beside the majority class and
bag-of-features models on the same items (see rnn_pipeline.tasks for the interface)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np

from rnn_pipeline.classification import evaluation
from rnn_pipeline.classification import monitoring as monitor_classify
from rnn_pipeline.classification.bundle import ClassifierBundle
from rnn_pipeline.classification.reading import read_items
from rnn_pipeline.classification.sequences import PreparedSequences, prepare_sequences
from rnn_pipeline.errors import PipelineError
from rnn_pipeline.models import ClassifierSpec
from rnn_pipeline.tasks import Artifacts, Task, log_common_metrics, summary_head


class ClassificationTask(Task):
    name = "classification"
    monitor = monitor_classify.ClassificationMonitor

    # ---- data -------------------------------------------------------------------------------------------------
    def read(self, frame, source):
        return read_items(frame, source, self.cfg.data, labels=True, split=True)

    def prepare(self, checked, source) -> PreparedSequences:
        cfg = self.cfg
        return prepare_sequences(checked, source, cfg.features, val=cfg.split.val, test=cfg.split.test, seed=cfg.seed,
                                 imbalance=cfg.training.imbalance, noise_std=cfg.training.noise_std)

    def about(self, data: PreparedSequences) -> str:
        classes = ", ".join(f"`{c}`" for c in data.classes[:30]) + (" …" if len(data.classes) > 30 else "")
        return f"Classifies {data.kind} items into {len(data.classes)} classes: {classes}."

    def describe(self, data: PreparedSequences, source: str) -> str:
        return (f"data {source}: {len(data.raw)} {data.kind} items, {len(data.classes)} classes; split "
                f"{ {k: len(v) for k, v in data.split.items()} }; max length {data.encoder.max_length} "
                f"({data.n_truncated} truncated)")

    def digest(self, data: PreparedSequences) -> str:
        h = hashlib.sha256()
        raw = data.raw
        h.update(json.dumps([raw.kind, raw.channels, [str(v) for v in raw.ids], list(map(str, raw.labels))]).encode())
        for item in raw.items:
            h.update(item.encode() if isinstance(item, str) else np.ascontiguousarray(item).tobytes())
        return h.hexdigest()

    # ---- judging ----------------------------------------------------------------------------------------------
    def floor(self, season):
        floor = self.cfg.registry.floor
        return ["majority"] if floor is None else list(floor)

    # ---- the model --------------------------------------------------------------------------------------------
    def default_params(self):
        m, cfg = self.cfg.model, self.cfg
        rest = {"bidirectional": m.bidirectional, "pooling": m.pooling}
        if cfg.data.text_column and cfg.features.encoding == "embedding":
            rest["embedding_dim"] = m.embedding_dim
        return {}, rest

    def spec(self, params, data: PreparedSequences) -> ClassifierSpec:
        return ClassifierSpec(cell=params["cell"], hidden=int(params["hidden"]), layers=int(params["layers"]),
                              dropout=float(params["dropout"]), n_classes=len(data.classes), input_kind=data.kind,
                              n_inputs=data.encoder.n_inputs, encoding=data.encoding,
                              embedding_dim=int(params.get("embedding_dim", 64)),
                              bidirectional=bool(params["bidirectional"]), pooling=params["pooling"],
                              padding=data.padding)

    def train_sets(self, params, data: PreparedSequences):
        return data.batches("train"), data.batches("val")

    def bundle(self, model, data: PreparedSequences, params) -> ClassifierBundle:
        d = self.cfg.data
        return ClassifierBundle(model, data.encoder, data.classes, d.text_column, d.sequence_column, d.step_column)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, data, bundle: ClassifierBundle, season):
        return evaluation.evaluate_classifier(data, bundle.predict_proba, self.cfg.seed)

    def log_evaluation(self, ev, data: PreparedSequences) -> None:
        log_common_metrics(ev)
        for c, r in ev["report"].items():
            if isinstance(r, dict) and c in data.classes:
                mlflow.log_metrics({f"test_class_{c}_{k}": r[k] for k in ("precision", "recall", "f1-score")})

    def summary(self, ev, data: PreparedSequences):
        return {"n_test": ev["n_test"], "classes": data.classes, "per_class": {c: ev["report"][c] for c in data.classes},
                "n_truncated": data.n_truncated, "max_length": data.encoder.max_length,
                "split_sizes": {k: len(v) for k, v in data.split.items()}}

    def tag_scores(self, gate_key):
        return ("accuracy", "f1_macro")

    def artifacts(self, folder: Path, ev, data: PreparedSequences, bundle: ClassifierBundle, history, study, digest):
        plots = (evaluation.save_classification_plots(folder, ev, data.classes, history, study)
                 if self.cfg.evaluation.plots else [])
        index = ev["test_index"]
        reference = monitor_classify.write_reference(folder / "reference", data, bundle, ev["metrics"], self.cfg.data,
                                                     digest)
        return Artifacts(plots, bundle.items_frame([data.raw.items[i] for i in index[:2]]), index, ev["proba"],
                         evaluation.classification_frame(ev, data), reference,
                         {"report/classification_report.json": ev["report"]})

    def summary_table(self, s: dict) -> str:
        lines = summary_head(s) + [f"{'model':<16}{'accuracy':>10}{'f1_macro':>10}{'f1_wtd':>8}{'roc_auc':>9}"
                                   f"{'log_loss':>10}"]
        for name, m in [("rnn", s["metrics"]), *s["baselines"].items()]:
            lines.append(f"{name:<16}{m['accuracy']:>10.4f}{m['f1_macro']:>10.4f}{m['f1_weighted']:>8.4f}"
                         f"{m['roc_auc']:>9.4f}{m['log_loss']:>10.4f}")
        lines.append(f"{s['n_test']} test items; wall time {s['wall_seconds']:.1f}s (tuning "
                     f"{s['timings']['tune']:.1f}s, final fit {s['timings']['final_fit']:.1f}s)")
        return "\n".join(lines)

    # ---- scoring a logged model -------------------------------------------------------------------------------
    def score(self, model, data: PreparedSequences, metric):
        from rnn_pipeline.registry import bundle_of

        b = bundle_of(model)
        if not isinstance(b, ClassifierBundle) or b.kind != data.kind:
            raise PipelineError(f"model is not a {data.kind} classifier")
        if b.kind == "numeric" and b.input_columns != data.encoder.channels:
            raise PipelineError(f"model reads channels {b.input_columns}; this data has {data.encoder.channels}")
        idx = data.split["test"]
        proba = predict_items(model, b, [data.raw.items[i] for i in idx])
        # the model's classes may differ from this data's: score on this data's class order
        lookup = {c: j for j, c in enumerate(b.classes)}
        aligned = np.zeros((len(idx), len(data.classes)))
        for j, c in enumerate(data.classes):
            if c in lookup:
                aligned[:, j] = proba[:, lookup[c]]
        return evaluation.classification_metrics(data.y[idx], aligned, len(data.classes))[metric]

    def predict_logged(self, model, bundle: ClassifierBundle, data: PreparedSequences, index):
        return predict_items(model, bundle, [data.raw.items[i] for i in index])


def predict_items(model, bundle: ClassifierBundle, items: list) -> np.ndarray:
    """Class probabilities for raw items through a loaded classifier pyfunc's own predict."""
    out = model.predict(bundle.items_frame(items))
    return out.sort_values(bundle.sequence_column)[bundle.output_columns[1:]].to_numpy(dtype="float64")
