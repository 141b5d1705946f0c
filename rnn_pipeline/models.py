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
