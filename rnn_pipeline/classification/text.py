"""Text to token ids: a word tokenizer with a vocabulary fitted on the training texts, or a BPE sub-word tokenizer
(the `tokenizers` library), saved as JSON in the model. Ids 0 and 1 are <pad> and <unk>."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

PAD, UNK = "<pad>", "<unk>"


# ---- text encoding -----------------------------------------------------------------------------------------------
class TextEncoder:
    """Text -> token ids. 'word': the regex `pattern` (after optional lower-casing) and a vocabulary of tokens seen at
    least `min_freq` times in training, at most `max_vocab` (ties broken alphabetically). 'bpe': a byte-pair
    encoding trained by the `tokenizers` library on the training texts. Ids 0 and 1 are <pad> and <unk>."""

    def __init__(self, kind: str, lowercase: bool, pattern: str, vocab: list[str] | None = None,
                 bpe_json: str | None = None):
        self.kind, self.lowercase, self.pattern = kind, lowercase, pattern
        self._re = re.compile(pattern)
        self.vocab = vocab or [PAD, UNK]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.bpe_json = bpe_json
        self._bpe = None
        if bpe_json is not None:
            from tokenizers import Tokenizer

            self._bpe = Tokenizer.from_str(bpe_json)

    @property
    def vocab_size(self) -> int:
        return self._bpe.get_vocab_size() if self._bpe is not None else len(self.vocab)

    def words(self, text: str) -> list[str]:
        return self._re.findall(text.lower() if self.lowercase else text)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        if self._bpe is not None:
            return [np.asarray(e.ids, dtype="int64") for e in self._bpe.encode_batch(
                [t.lower() if self.lowercase else t for t in texts])]
        return [np.asarray([self.index.get(w, 1) for w in self.words(t)], dtype="int64") for t in texts]

    def oov_share(self, encoded: list[np.ndarray]) -> np.ndarray:
        """Per text: the share of its tokens that are <unk>."""
        return np.asarray([float(np.mean(e == 1)) if len(e) else 0.0 for e in encoded])

    def to_json(self) -> dict:
        return {"kind": self.kind, "lowercase": self.lowercase, "pattern": self.pattern,
                "vocab": self.vocab if self._bpe is None else None, "bpe": self.bpe_json}

    @classmethod
    def from_json(cls, d: dict) -> TextEncoder:
        return cls(d["kind"], d["lowercase"], d["pattern"], d.get("vocab"), d.get("bpe"))

    @classmethod
    def fit(cls, texts: list[str], kind: str, lowercase: bool, pattern: str, min_freq: int,
            max_vocab: int) -> TextEncoder:
        if kind == "bpe":
            from tokenizers import Tokenizer, models, pre_tokenizers, trainers

            tok = Tokenizer(models.BPE(unk_token=UNK))
            tok.pre_tokenizer = pre_tokenizers.Split(pattern=_tokenizers_regex(pattern), behavior="isolated")
            trainer = trainers.BpeTrainer(vocab_size=max_vocab, min_frequency=min_freq, special_tokens=[PAD, UNK],
                                          show_progress=False)
            tok.train_from_iterator([t.lower() if lowercase else t for t in texts], trainer=trainer)
            return cls(kind, lowercase, pattern, None, tok.to_str())
        enc = cls(kind, lowercase, pattern)
        counts = Counter(w for t in texts for w in enc.words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(kind, lowercase, pattern, [PAD, UNK, *kept[: max_vocab - 2]])


def _tokenizers_regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


# ---- prepared data -----------------------------------------------------------------------------------------------
