"""The network: a recurrent cell (RNN tanh/relu, LSTM, GRU), stacked, then a linear head to H x T outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ModelSpec:
    cell: str
    hidden: int
    layers: int
    dropout: float
    n_features: int
    n_targets: int
    horizon: int

    def to_json(self) -> dict:
        return asdict(self)


class RNNForecaster(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        kw = dict(input_size=spec.n_features, hidden_size=spec.hidden, num_layers=spec.layers, batch_first=True,
                  dropout=spec.dropout if spec.layers > 1 else 0.0)
        if spec.cell in ("rnn_tanh", "rnn_relu"):
            self.rnn = nn.RNN(nonlinearity=spec.cell[4:], **kw)
        elif spec.cell == "lstm":
            self.rnn = nn.LSTM(**kw)
        elif spec.cell == "gru":
            self.rnn = nn.GRU(**kw)
        else:
            raise ValueError(f"unknown cell '{spec.cell}'")
        self.head = nn.Linear(spec.hidden, spec.horizon * spec.n_targets)

    def forward(self, x: torch.Tensor, all_steps: bool = False) -> torch.Tensor:
        """x: (B, L, F). Returns (B, H, T); with all_steps, (B, L, H, T): the forecast made at every step."""
        out, _ = self.rnn(x)
        h = out if all_steps else out[:, -1]
        y = self.head(h)
        return y.unflatten(-1, (self.spec.horizon, self.spec.n_targets))


@dataclass
class ClassifierSpec:
    """A sequence classifier: token ids (text) or channel values (numeric) -> RNN -> pooled state -> class logits."""

    cell: str
    hidden: int
    layers: int
    dropout: float
    n_classes: int
    input_kind: str  # "text" | "numeric"
    n_inputs: int  # vocabulary size (text) or channels (numeric)
    encoding: str = "embedding"  # text: embedding | onehot | integer
    embedding_dim: int = 64
    bidirectional: bool = False
    pooling: str = "last"  # last | mean
    padding: str = "post"  # where a batch's padding sits: pre | post

    def to_json(self) -> dict:
        return asdict(self)


def _cell(name: str, **kw) -> nn.Module:
    if name in ("rnn_tanh", "rnn_relu"):
        return nn.RNN(nonlinearity=name[4:], **kw)
    if name == "lstm":
        return nn.LSTM(**kw)
    if name == "gru":
        return nn.GRU(**kw)
    raise ValueError(f"unknown cell '{name}'")


class RNNClassifier(nn.Module):
    """Padding really is masked: the batch is packed (pack_padded_sequence), so the RNN never reads a pad step, and
    pooling takes the last valid state (for a bidirectional RNN, the backward direction's state after reading the
    whole sequence) or the mean over valid steps. A pre-padded batch is first shifted to post-padding."""

    def __init__(self, spec: ClassifierSpec):
        super().__init__()
        self.spec = spec
        if spec.input_kind == "text" and spec.encoding == "embedding":
            self.embed = nn.Embedding(spec.n_inputs, spec.embedding_dim, padding_idx=0)
            width = spec.embedding_dim
        else:
            self.embed = None
            width = 1 if (spec.input_kind == "text" and spec.encoding == "integer") else spec.n_inputs
        self.rnn = _cell(spec.cell, input_size=width, hidden_size=spec.hidden, num_layers=spec.layers,
                         batch_first=True, bidirectional=spec.bidirectional,
                         dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden * (2 if spec.bidirectional else 1), spec.n_classes)

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.input_kind != "text":
            return x
        if s.encoding == "embedding":
            return self.embed(x)
        if s.encoding == "onehot":
            return nn.functional.one_hot(x, s.n_inputs).float()
        return (x.float() / max(s.n_inputs - 1, 1)).unsqueeze(-1)  # integer: the id as one scaled number

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T) token ids or (B, T, C) values, padded on spec.padding's side; lengths: (B,). -> (B, classes)."""
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        lengths = lengths.to(x.device)
        if self.spec.padding == "pre":  # move each row's valid steps to the front
            t = x.shape[1]
            idx = (torch.arange(t, device=x.device)[None, :] + (t - lengths)[:, None]) % t
            x = torch.gather(x, 1, idx if x.dim() == 2 else idx[..., None].expand(-1, -1, x.shape[2]))
        h = self._inputs(x)
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.spec.pooling == "mean":
            seq, _ = pad_packed_sequence(out, batch_first=True)  # zeros after each row's length
            pooled = seq.sum(1) / lengths[:, None].to(seq.dtype)
        else:
            h_n = state[0] if isinstance(state, tuple) else state  # (layers * dirs, B, H)
            pooled = torch.cat(list(h_n[-2:]), dim=-1) if self.spec.bidirectional else h_n[-1]
        return self.head(self.drop(pooled))


def build_model(spec) -> nn.Module:
    return RNNClassifier(spec) if isinstance(spec, ClassifierSpec) else RNNForecaster(spec)
