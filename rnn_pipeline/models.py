"""The networks. Forecasters share one base (as neuralforecast's models do): per-window instance normalisation and
channel handling wrap a recurrent core, so each is a setting, not a branch in the core.

- `architecture`: `direct` runs the cell over all L steps and maps the last state to H x T outputs (a linear head);
  `segment` cuts the window into segments of W steps, projects each to the hidden width and runs the cell over L/W
  segments; the final state, with learned position (and channel) embeddings, emits every output segment at once in
  one more cell step (parallel multi-step decoding, as SegRNN does).
- `norm`: `none`; `revin` (each window's mean and std per channel removed before the network and restored after it,
  with an optional learnable affine); `last` (each channel's last input value subtracted and added back). Both read
  only the window's inputs: no leakage. Covariates whose absolute value matters (calendar phases, static values:
  `n_exempt` columns at the end) pass unnormalised.
- `channels`: `mixed` (every column into one network: (B, L, F) -> (B, H, T)); `independent` (one shared network over
  each target channel, folded into the batch, seeing its own history plus the feature columns, with an optional
  learned channel embedding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURES = ("direct", "segment")
NORMS = ("none", "revin", "last")
CHANNEL_MODES = ("mixed", "independent")


@dataclass
class ForecasterSpec:
    """A forecaster's shape. The fields after `horizon` have the defaults of models registered before they existed
    (a direct head on raw scaled inputs), so those still load."""

    cell: str
    hidden: int
    layers: int
    dropout: float
    n_features: int  # input columns, targets first
    n_targets: int
    horizon: int
    architecture: str = "direct"
    norm: str = "none"
    channels: str = "mixed"
    segment: int = 24  # W, steps per segment (architecture 'segment')
    affine: bool = False  # norm 'revin': a learnable per-channel scale and shift
    channel_embedding: bool = True  # channels 'independent' with several targets: a learned vector per channel
    highway: bool = False  # add a linear map of the (normalised) window to the output, as LSTNet does
    window: int = 0  # L; needed by the highway only
    members: int = 1  # a seed ensemble: the mean of this many forecasters of this shape (training.ensemble)
    quantiles: tuple = ()  # quantile levels the network outputs beside its point forecast, trained with the
    # pinball loss (the point forecast with the training loss). (): point forecasts only
    n_series: int = 0  # panels with a series embedding: how many series; the input's last column is then each
    series_dim: int = 0  # window's series index, replaced by that series' learned vector of series_dim values
    n_exempt: int = 0  # the last input columns left out of the per-window norm: covariates whose absolute value
    # matters (calendar phases, static per-series values), which a window's own mean or last value would erase

    def __post_init__(self):
        self.quantiles = tuple(float(q) for q in self.quantiles)
        if self.quantiles and (list(self.quantiles) != sorted(set(self.quantiles))
                               or not all(0 < q < 1 for q in self.quantiles)):
            raise ValueError(f"quantiles {list(self.quantiles)}: increasing levels in (0, 1)")
        for name, value, allowed in (("architecture", self.architecture, ARCHITECTURES), ("norm", self.norm, NORMS),
                                     ("channels", self.channels, CHANNEL_MODES)):
            if value not in allowed:
                raise ValueError(f"unknown {name} '{value}' (one of {', '.join(allowed)})")

    def to_json(self) -> dict:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        return d


def _cell(name: str, **kw) -> nn.Module:
    if name in ("rnn_tanh", "rnn_relu"):
        return nn.RNN(nonlinearity=name[4:], **kw)
    if name == "lstm":
        return nn.LSTM(**kw)
    if name == "gru":
        return nn.GRU(**kw)
    raise ValueError(f"unknown cell '{name}'")


class InstanceNorm(nn.Module):
    """Per-window, per-channel normalisation over the time axis of (B, L, F) inputs, undone on (B, ..., T) outputs
    (the targets are the first T channels)."""

    eps = 1e-5

    def __init__(self, kind: str, n_channels: int, affine: bool = False, n_exempt: int = 0):
        super().__init__()
        self.kind, self.n_exempt = kind, n_exempt
        if kind == "revin" and affine:
            self.weight = nn.Parameter(torch.ones(n_channels))
            self.bias = nn.Parameter(torch.zeros(n_channels))
        else:
            self.weight = self.bias = None

    def normalise(self, x: torch.Tensor):
        if self.kind == "none":
            return x, None
        if self.n_exempt:  # the covariates at the end pass as they are
            z, stats = self._normalise(x[..., :-self.n_exempt])
            return torch.cat([z, x[..., -self.n_exempt:]], dim=-1), stats
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor):
        if self.kind == "last":
            loc = x[:, -1:, :].detach()
            return x - loc, (loc, None)
        loc = x.mean(1, keepdim=True).detach()
        scale = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        z = (x - loc) / scale
        if self.weight is not None:
            z = z * self.weight + self.bias
        return z, (loc, scale)

    def to_network(self, y: torch.Tensor, stats, n_targets: int) -> torch.Tensor:
        """restore's inverse: y (B, ..., T) in the input's space -> the normalised space."""
        if stats is None:
            return y
        loc, scale = stats
        shape = (loc.shape[0],) + (1,) * (y.dim() - 2) + (n_targets,)
        y = y - loc[..., :n_targets].reshape(shape)
        if scale is not None:
            y = y / scale[..., :n_targets].reshape(shape)
        if self.weight is not None:
            y = y * (self.weight[:n_targets] + self.eps ** 2) + self.bias[:n_targets]
        return y

    def restore(self, y: torch.Tensor, stats, n_targets: int) -> torch.Tensor:
        """y: (B, ..., T) in the normalised space -> the input's space. stats: what normalise returned."""
        if stats is None:
            return y
        loc, scale = stats
        shape = (loc.shape[0],) + (1,) * (y.dim() - 2) + (n_targets,)
        if self.weight is not None:
            y = (y - self.bias[:n_targets]) / (self.weight[:n_targets] + self.eps ** 2)
        if scale is not None:
            y = y * scale[..., :n_targets].reshape(shape)
        return y + loc[..., :n_targets].reshape(shape)


class Forecaster(nn.Module):
    """The shared base: normalise -> fold channels (independent mode) -> core -> unfold -> restore.

    A core maps (B', L, C_in) -> (B', H, C_out), or with all_steps (B', L, H, C_out). In mixed mode B' = B,
    C_in = F, C_out = T; in independent mode B' = B * T, C_in = 1 + (F - T) (the channel's own history, then the
    features), C_out = 1, and `channel` (B',) says which target each row is."""

    def __init__(self, spec: ForecasterSpec):
        super().__init__()
        self.spec = spec
        s = spec
        self.independent = s.channels == "independent"
        # a series embedding: the index column becomes the series' learned vector (exempt from the norm, like the
        # other covariates at the end)
        self.series_embed = nn.Embedding(s.n_series, s.series_dim) if s.n_series and s.series_dim else None
        self.n_in = s.n_features - 1 + s.series_dim if self.series_embed is not None else s.n_features
        exempt = s.n_exempt + (s.series_dim if self.series_embed is not None else 0)
        self.c_in = 1 + self.n_in - s.n_targets if self.independent else self.n_in
        self.c_base = 1 if self.independent else s.n_targets
        self.n_q = len(s.quantiles)
        # with quantiles, every output channel's point forecast and then its quantiles
        self.c_out = self.c_base * (1 + self.n_q)
        self.n_channel_ids = s.n_targets if (self.independent and s.channel_embedding and s.n_targets > 1) else 0
        self.norm = InstanceNorm(s.norm, self.n_in - exempt, s.affine, exempt)
        if s.highway and s.window < 1:
            raise ValueError("a highway needs the window length")
        # LSTNet's autoregressive 'highway': a linear map of the normalised window (all of its columns in mixed mode,
        # the channel's own history in independent mode) added to the core's output, so the network models what a
        # linear forecast leaves
        self.highway = nn.Linear(s.window * self.c_in, s.horizon * self.c_out) if s.highway else None

    @property
    def quantile_levels(self) -> tuple:
        return self.spec.quantiles

    @property
    def reads_series(self) -> bool:
        """Whether the input's last column is each window's series index (a series embedding)."""
        return self.series_embed is not None

    @property
    def supports_all_steps(self) -> bool:
        """Whether every step's forecast can be trained (loss_steps='all'): only a direct core on unnormalised
        inputs without a highway, since window statistics would leak the later steps into the earlier steps'
        forecasts (and the highway reads whole windows)."""
        return False

    def core(self, z: torch.Tensor, channel: torch.Tensor | None, all_steps: bool) -> torch.Tensor:
        raise NotImplementedError

    def network_inputs(self, x: torch.Tensor):
        """x: (B, L, F) -> what the core and the highway read: the normalised window, with channels folded into the
        batch in independent mode (B', L, C_in); the normalisation's statistics; the channel id of each row."""
        s = self.spec
        b, length, _ = x.shape
        if self.series_embed is not None:  # the series index (constant over the window) -> its vector at every step
            sid = x[:, 0, -1].round().long().clamp(0, s.n_series - 1)
            x = torch.cat([x[..., :-1], self.series_embed(sid).unsqueeze(1).expand(-1, length, -1)], dim=-1)
        z, stats = self.norm.normalise(x)
        channel = None
        if self.independent:
            t = s.n_targets
            own = z[..., :t].transpose(1, 2).reshape(b * t, length, 1)  # row b * T + j is target j of window b
            parts = [own]
            if self.n_in > t:
                parts.append(z[..., t:].repeat_interleave(t, dim=0))
            z = torch.cat(parts, dim=-1)
            if self.n_channel_ids:
                channel = torch.arange(t, device=x.device).repeat(b)
        return z, stats, channel

    def network_targets(self, y: torch.Tensor, stats) -> torch.Tensor:
        """y: (B, H, T) in the input's space -> what the network must output for the forecast to be y (B', H, C_out):
        restore's inverse, folded like the inputs (with quantiles, the point and every quantile at y)."""
        y = self.norm.to_network(y, stats, self.spec.n_targets)
        if self.independent:
            y = y.transpose(1, 2).reshape(-1, y.shape[1], 1)
        if self.n_q:
            y = y.repeat_interleave(1 + self.n_q, dim=-1)
        return y

    def forward(self, x: torch.Tensor, all_steps: bool = False, quantiles: bool | str = False):
        """x: (B, L', F), targets first; of a longer history (L' > L) only the last L steps are read. Returns
        (B, H, T); with all_steps, (B, L', H, T): the forecast made at every step (direct core on unnormalised
        inputs only). A model with quantiles answers its point forecast; with `quantiles`, its quantiles in a last
        axis (B, [L',] H, T, Q), in increasing order (sorted: quantiles never cross); with quantiles='both', the
        pair (point, quantiles)."""
        if all_steps and not self.supports_all_steps:
            raise ValueError("all_steps needs architecture 'direct' with norm 'none' and no highway")
        s = self.spec
        if s.window and x.shape[1] > s.window and not all_steps:
            x = x[:, -s.window:]  # a longer history (an ensemble's, a client's): the model reads its own look-back
        b = x.shape[0]
        z, stats, channel = self.network_inputs(x)
        y = self.core(z, channel, all_steps)
        if self.highway is not None:
            y = y + self.highway(z.reshape(z.shape[0], -1)).unflatten(-1, (s.horizon, self.c_out))
        if self.n_q:
            return self._quantiles(y, b, stats, quantiles)
        if self.independent:  # (B*T, [L,] H, 1) -> (B, [L,] H, T)
            y = y.reshape(b, s.n_targets, *y.shape[1:-1]).movedim(1, -1)
        return self.norm.restore(y, stats, s.n_targets)

    def _quantiles(self, y: torch.Tensor, b: int, stats, which):
        """The core's (B', [L,] H, C_base * (1 + Q)) -> the point forecast (B, [L,] H, T), the quantiles restored and
        sorted (B, [L,] H, T, Q), or both (`which`: False, True or 'both')."""
        s = self.spec
        y = y.unflatten(-1, (self.c_base, 1 + self.n_q))  # (B', [L,] H, C_base, 1 + Q)
        if self.independent:  # (B*T, [L,] H, 1, 1 + Q) -> (B, [L,] H, T, 1 + Q)
            y = y.reshape(b, s.n_targets, *y.shape[1:-2], 1 + self.n_q).movedim(1, -2)
        y = self.norm.restore(y.movedim(-1, 1), stats, s.n_targets).movedim(1, -1)  # each output as a forecast
        point, q = y[..., 0], torch.sort(y[..., 1:], dim=-1).values
        return (point, q) if which == "both" else q if which else point

    def output_layer(self) -> nn.Linear:
        """The core's last linear layer (zeroed when the model starts from its highway's linear fit)."""
        return self.head if isinstance(self.head, nn.Linear) else self.head[-1]

    @torch.no_grad()
    def start_from_linear(self, x: torch.Tensor, y: torch.Tensor, alphas=(0.1, 1.0, 10.0, 100.0),
                          max_values: int = 20_000_000) -> float:
        """Start as a linear forecaster: the highway set to the Ridge fit (alpha by RidgeCV's leave-one-out) of the
        network's targets on its inputs over the training windows x (B, L, F) -> y (B, H, T), in the network's
        own space (normalised, channels folded), and the core's output layer zeroed, so the recurrent part learns
        what the linear forecast leaves (LSTNet's design, started where a linear model ends). Rows beyond
        `max_values` input values are left out (evenly spaced) to bound memory. Returns the chosen alpha."""
        from sklearn.linear_model import RidgeCV

        if self.highway is None:
            raise ValueError("the model has no highway")
        z, stats, _ = self.network_inputs(x)
        t = self.network_targets(y, stats)
        z, t = z.reshape(len(z), -1), t.reshape(len(t), -1)
        if z.numel() > max_values:
            keep = torch.linspace(0, len(z) - 1, max(2, max_values // z.shape[1])).long()
            z, t = z[keep], t[keep]
        ridge = RidgeCV(alphas=list(alphas)).fit(z.double().cpu().numpy(), t.double().cpu().numpy())
        self.highway.weight.copy_(torch.from_numpy(ridge.coef_))
        self.highway.bias.copy_(torch.from_numpy(ridge.intercept_))
        self.highway.requires_grad_(False)
        out = self.output_layer()
        out.weight.zero_()
        out.bias.zero_()
        return float(ridge.alpha_)


class DirectForecaster(Forecaster):
    """The cell over every input step; a linear head from the last state to H x C_out values. In independent mode
    with several targets, a learned per-channel vector is the cell's initial state."""

    def __init__(self, spec: ForecasterSpec):
        super().__init__(spec)
        s = spec
        self.rnn = _cell(s.cell, input_size=self.c_in, hidden_size=s.hidden, num_layers=s.layers, batch_first=True,
                         dropout=s.dropout if s.layers > 1 else 0.0)
        self.head = nn.Linear(s.hidden, s.horizon * self.c_out)
        self.channel_state = nn.Parameter(0.1 * torch.randn(self.n_channel_ids, s.hidden)) \
            if self.n_channel_ids else None

    @property
    def supports_all_steps(self) -> bool:
        return self.spec.norm == "none" and self.highway is None  # the highway maps a whole window only

    def core(self, z, channel, all_steps):
        h0 = None
        if channel is not None:
            h = self.channel_state[channel].unsqueeze(0).expand(self.spec.layers, -1, -1).contiguous()
            h0 = (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h
        out, _ = self.rnn(z, h0)
        y = self.head(out if all_steps else out[:, -1])
        return y.unflatten(-1, (self.spec.horizon, self.c_out))


class SegmentForecaster(Forecaster):
    """Segment-recurrent encoder with parallel multi-step decoding (SegRNN, Lin et al. 2023).

    The window is left-padded (with its first value) to a multiple of W and cut into segments of W steps; each is
    projected to the hidden width (linear + ReLU) and the cell runs over the segments. Decoding: the final state,
    copied once per output segment, reads a learned position embedding (half position, half channel in independent
    mode) in one cell step; a linear head turns each output into W steps. H is rounded up to whole segments and cut."""

    def __init__(self, spec: ForecasterSpec):
        super().__init__(spec)
        s = spec
        self.w = max(1, int(s.segment))
        self.n_out = math.ceil(s.horizon / self.w)
        d = s.hidden
        self.embed = nn.Sequential(nn.Linear(self.w * self.c_in, d), nn.ReLU())
        self.rnn = _cell(s.cell, input_size=d, hidden_size=d, num_layers=s.layers, batch_first=True,
                         dropout=s.dropout if s.layers > 1 else 0.0)
        d_channel = d // 2 if self.n_channel_ids else 0
        self.position = nn.Parameter(torch.randn(self.n_out, d - d_channel))
        self.channel = nn.Parameter(torch.randn(self.n_channel_ids, d_channel)) if self.n_channel_ids else None
        self.head = nn.Sequential(nn.Dropout(s.dropout), nn.Linear(d, self.w * self.c_out))

    def core(self, z, channel, all_steps):
        b, length, c = z.shape
        n_seg = math.ceil(length / self.w)
        pad = n_seg * self.w - length
        if pad:
            z = torch.cat([z[:, :1].expand(-1, pad, -1), z], dim=1)
        _, state = self.rnn(self.embed(z.reshape(b, n_seg, self.w * c)))  # (layers, B', d), for LSTM (h, c)
        m = self.n_out
        query = self.position.unsqueeze(0).expand(b, -1, -1)  # (B', M, d)
        if channel is not None:
            query = torch.cat([query, self.channel[channel].unsqueeze(1).expand(-1, m, -1)], dim=-1)
        query = query.reshape(b * m, 1, -1)  # row b' * M + j: output segment j of row b'
        state = tuple(t.repeat_interleave(m, dim=1) for t in state) if isinstance(state, tuple) \
            else state.repeat_interleave(m, dim=1)
        out, _ = self.rnn(query, state)
        y = self.head(out[:, 0]).reshape(b, m * self.w, self.c_out)
        return y[:, : self.spec.horizon]


FORECASTERS = {"direct": DirectForecaster, "segment": SegmentForecaster}


def build_forecaster(spec):
    """A forecaster of `spec`: one network, or (a seed ensemble's `members` > 1, an EnsembleSpec) an ensemble."""
    if isinstance(spec, ForecasterSpec) and spec.members == 1:
        return FORECASTERS[spec.architecture](spec)
    from rnn_pipeline.forecasting.ensemble import build

    return build(spec)


# The name registered models and older code know: a direct forecaster (state-dict keys rnn.*, head.*).
RNNForecaster = DirectForecaster


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
    return RNNClassifier(spec) if isinstance(spec, ClassifierSpec) else build_forecaster(spec)
