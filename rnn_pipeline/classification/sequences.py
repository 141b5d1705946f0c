"""Sequence classification data, once read (reading.py): tokenizers and vocabularies, per-channel scaling, the
stratified split, truncation and padding. Everything is fitted on the training split only and saved as JSON in the
model.

Two input kinds:
- text: tokens become integer ids (0 = <pad>, 1 = <unk>).
- numeric: each sequence is a (steps, channels) float array, scaled per channel.

Padding happens per batch (`pad`), on the configured side; the model packs the batch (pack_padded_sequence), so
a sequence's prediction does not depend on its batch's padding.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from rnn_pipeline.classification.reading import RawSequences
from rnn_pipeline.classification.text import PAD, UNK, TextEncoder  # noqa: F401 (PAD, UNK: importable here too)
from rnn_pipeline.data.scaling import Scaling, fit_scaler
from rnn_pipeline.errors import DataValidationError

log = logging.getLogger(__name__)


@dataclass
class Encoder:
    """Raw items -> model inputs: the text encoder or the per-channel scaling, then truncation."""

    kind: str
    channels: list[str]
    text: TextEncoder | None
    scaling: Scaling | None
    max_length: int
    too_long: str  # truncate | error
    truncate_side: str  # pre | post

    def encode(self, items: list, source: str = "input", ids=None) -> tuple[list[np.ndarray], int]:
        """Returns the encoded items and how many were truncated. An item that encodes to nothing (a text of no
        tokens) becomes a single <unk>, so that it still gets a prediction."""
        if self.kind == "text":
            seqs = self.text.encode(items)
            seqs = [s if len(s) else np.ones(1, dtype="int64") for s in seqs]
        else:
            seqs = [self.scaling.transform(x).astype("float32") for x in items]
        n_cut = 0
        out = []
        for i, s in enumerate(seqs):
            if len(s) > self.max_length:
                if self.too_long == "error":
                    sid = ids[i] if ids is not None else i
                    what = "tokens" if self.kind == "text" else "steps"
                    raise DataValidationError(f"sequence {sid!r} has {len(s)} {what}, more than features.max_length "
                                              f"{self.max_length} (set features.too_long: truncate to cut it)",
                                              source=source)
                s = s[-self.max_length:] if self.truncate_side == "pre" else s[: self.max_length]
                n_cut += 1
            out.append(s)
        return out, n_cut

    def to_json(self) -> dict:
        return {"kind": self.kind, "channels": self.channels, "text": self.text and self.text.to_json(),
                "scaling": self.scaling and self.scaling.to_json(), "max_length": self.max_length,
                "too_long": self.too_long, "truncate_side": self.truncate_side}

    @classmethod
    def from_json(cls, d: dict) -> Encoder:
        return cls(d["kind"], d["channels"], d["text"] and TextEncoder.from_json(d["text"]),
                   d["scaling"] and Scaling.from_json(d["scaling"]), d["max_length"], d["too_long"],
                   d["truncate_side"])

    @property
    def n_inputs(self) -> int:
        return self.text.vocab_size if self.kind == "text" else len(self.channels)


@dataclass
class PreparedSequences:
    """Labelled items, split (stratified) and encoded with an encoder fitted on the training split only."""

    source: str
    raw: RawSequences
    encoder: Encoder
    classes: list[str]
    x: list[np.ndarray]
    y: np.ndarray  # class index per item
    split: dict[str, np.ndarray]  # split name -> item indices
    n_truncated: int
    padding: str
    imbalance: str
    encoding: str = "embedding"  # text: how tokens enter the model
    noise_std: float = 0.0  # numeric: jitter on training batches

    @property
    def kind(self) -> str:
        return self.encoder.kind

    def batches(self, split: str, params: dict | None = None, loss_weights: bool = True) -> SequenceSet:
        idx = self.split[split]
        counts = np.bincount(self.y[self.split["train"]], minlength=len(self.classes)).astype("float64")
        inv = np.where(counts > 0, counts.sum() / (len(self.classes) * np.maximum(counts, 1)), 0.0)
        weights = torch.tensor(inv, dtype=torch.float32) if (
            loss_weights and split == "train" and self.imbalance == "class_weights") else None
        sampler = torch.tensor(inv[self.y[idx]], dtype=torch.float64) if (
            split == "train" and self.imbalance == "weighted_sampler") else None
        noise = self.noise_std if (split == "train" and self.kind == "numeric") else 0.0
        return SequenceSet([torch.from_numpy(self.x[i]) for i in idx], torch.from_numpy(self.y[idx]),
                           self.padding, weights, sampler, noise)


def stratified_split(labels: np.ndarray, fixed: np.ndarray | None, val: float, test: float, seed: int,
                     source: str) -> dict[str, np.ndarray]:
    """Split item indices. With a split column: its test rows are the test set; validation comes from its val rows,
    or when there are none, a stratified `val` share of its train rows. Otherwise stratified shares of everything."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))

    def carve(pool: np.ndarray, share: float, what: str):
        counts = Counter(labels[pool])
        strat = labels[pool] if min(counts.values()) >= 2 else None
        if strat is None:
            rare = [k for k, c in counts.items() if c < 2]
            log.warning("%s: class(es) %s have a single item: the %s split is not stratified", source, rare, what)
        try:
            return train_test_split(pool, test_size=share, random_state=seed, stratify=strat)
        except ValueError as e:
            raise DataValidationError(f"cannot carve a {what} split from {len(pool)} items: {e}", source=source) \
                from None

    if fixed is not None:
        test_idx = idx[fixed == "test"]
        train_pool = idx[fixed == "train"]
        val_idx = idx[fixed == "val"]
        if len(val_idx) == 0:
            train_pool, val_idx = carve(train_pool, val, "validation")
    else:
        rest, test_idx = carve(idx, test, "test")
        train_pool, val_idx = carve(rest, val / (1 - test), "validation")
    for name, part in (("train", train_pool), ("validation", val_idx), ("test", test_idx)):
        if len(part) == 0:
            raise DataValidationError(f"the {name} split is empty", source=source)
    return {"train": np.sort(train_pool), "val": np.sort(val_idx), "test": np.sort(test_idx)}


def prepare_sequences(raw: RawSequences, source: str, features, *, val: float, test: float, seed: int,
                      imbalance: str, noise_std: float = 0.0) -> PreparedSequences:
    """Split, check the labels, fit the encoder on the training split, encode and truncate everything."""
    if raw.labels is None:
        raise DataValidationError("no labels: training needs a label column", source=source)
    if len(raw) < 6:
        raise DataValidationError(f"only {len(raw)} labelled items: too few to train, validate and test",
                                  source=source)
    split = stratified_split(raw.labels, raw.split, val, test, seed, source)
    train_labels = raw.labels[split["train"]]
    classes = sorted(set(train_labels))
    if len(classes) < 2:
        raise DataValidationError(f"the training data holds a single class ({classes[0]!r}): nothing to tell apart",
                                  source=source)
    for name in ("val", "test"):
        unseen = sorted(set(raw.labels[split[name]]) - set(classes))
        if unseen:
            pos = int(split[name][np.flatnonzero(np.isin(raw.labels[split[name]], unseen))[0]])
            raise DataValidationError(f"label {unseen[0]!r} appears in the {name} split but never in training",
                                      source=source, row=None if raw.kind == "numeric" else int(raw.ids[pos]),
                                      value=unseen[0])
    train_items = [raw.items[i] for i in split["train"]]
    if raw.kind == "text":
        text = TextEncoder.fit(train_items, features.tokenizer, features.lowercase, features.token_pattern,
                               features.min_freq, features.max_vocab)
        lengths = [len(e) for e in text.encode(train_items)]
        enc = Encoder("text", [], text, None, 0, features.too_long, features.truncate_side)
    else:
        scaling = fit_scaler(features.scaler, np.concatenate(train_items))
        lengths = [len(x) for x in train_items]
        enc = Encoder("numeric", raw.channels, None, scaling, 0, features.too_long, features.truncate_side)
    enc.max_length = int(features.max_length or max(lengths))
    x, n_cut = enc.encode(raw.items, source, raw.ids)
    if n_cut:
        log.warning("%s: %d of %d sequences are longer than max_length %d and were truncated (%s)", source, n_cut,
                    len(x), enc.max_length, "keeping the end" if enc.truncate_side == "pre" else "keeping the start")
    lookup = {c: i for i, c in enumerate(classes)}
    y = np.asarray([lookup[v] for v in raw.labels], dtype="int64")
    return PreparedSequences(source, raw, enc, classes, x, y, split, n_cut, features.padding, imbalance,
                             features.encoding, noise_std)


# ---- batches -----------------------------------------------------------------------------------------------------
def pad(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest in the batch with zeros (<pad> for tokens), on the left ('pre') or right ('post')."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return pad_sequence(seqs, batch_first=True, padding_side="left" if side == "pre" else "right"), lengths


class SequenceSet:
    """Items of one split for train.fit: padded batches, cross-entropy with optional class weights, an optional
    weighted sampler for the training order, and optional Gaussian jitter on numeric training inputs."""

    def __init__(self, seqs: list[torch.Tensor], y: torch.Tensor, padding: str, class_weights=None, sampler=None,
                 noise_std: float = 0.0):
        self.seqs, self.y, self.padding = seqs, y, padding
        self.class_weights, self.sampler, self.noise_std = class_weights, sampler, noise_std

    def __len__(self) -> int:
        return len(self.seqs)

    def to(self, device) -> SequenceSet:
        if torch.device(device).type == "cpu":
            return self
        cw = None if self.class_weights is None else self.class_weights.to(device)
        return SequenceSet([s.to(device) for s in self.seqs], self.y.to(device), self.padding, cw, self.sampler,
                           self.noise_std)

    def order(self, generator: torch.Generator) -> torch.Tensor:
        if self.sampler is not None:  # inverse-frequency sampling with replacement, one epoch's worth
            return torch.multinomial(self.sampler, len(self), replacement=True, generator=generator)
        return torch.randperm(len(self), generator=generator)

    def batch(self, idx: torch.Tensor):
        x, lengths = pad([self.seqs[i] for i in idx.tolist()], self.padding)
        return x, lengths, self.y[idx.to(self.y.device)]

    def loss(self, model, idx: torch.Tensor, **_) -> torch.Tensor:
        x, lengths, y = self.batch(idx)
        if self.noise_std > 0:  # pad steps get noise too, but packing never reads them
            x = x + self.noise_std * torch.randn_like(x)
        return torch.nn.functional.cross_entropy(model(x, lengths), y, weight=self.class_weights)

    @torch.no_grad()
    def eval_loss(self, model, chunk: int = 512) -> float:
        """Mean (unweighted) cross-entropy over the split."""
        model.eval()
        total = 0.0
        for i in range(0, len(self), chunk):
            x, lengths, y = self.batch(torch.arange(i, min(i + chunk, len(self))))
            total += torch.nn.functional.cross_entropy(model(x, lengths), y, reduction="sum").item()
        return total / max(len(self), 1)
