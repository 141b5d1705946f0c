"""Ensembles of forecasters: the weighted mean of members that may differ in shape and look-back, and the choice of
members and weights by greedy forward selection on validation (Caruana et al., "Ensemble selection from libraries
of models", 2004).

A study's best trials are often near-equals on validation that err differently: on the hourly weather benchmark a
channel-independent, last-value-normalised model and the recurrent model started from the mixed Ridge each won some
seeds and lost others, while their mean beat both. Selection starts from the best member alone and adds, with
replacement, whichever member lowers the validation loss of the mean the most, until none does; a member's weight is
how often it was picked. One model alone is the result when no mix beats it on validation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from rnn_pipeline.models import FORECASTERS, ForecasterSpec


@dataclass
class EnsembleSpec:
    """The members' own specs (windows may differ) and their weights (summing to 1)."""

    members: list[ForecasterSpec]
    weights: list[float]

    @property
    def window(self) -> int:
        return max(m.window for m in self.members)

    def to_json(self) -> dict:
        return {"ensemble": [m.to_json() for m in self.members], "weights": list(self.weights)}


class ForecastEnsemble(nn.Module):
    """The weighted mean forecast of its members, each reading the last `window` steps of the input (its own L)."""

    supports_all_steps = False  # trained member by member, never as a whole
    highway = None

    def __init__(self, spec: EnsembleSpec):
        super().__init__()
        if len(spec.members) != len(spec.weights) or not spec.members:
            raise ValueError("an ensemble needs one weight per member")
        self.spec = spec
        self.members = nn.ModuleList(FORECASTERS[s.architecture](replace(s, members=1)) for s in spec.members)
        w = torch.tensor(spec.weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum(), persistent=False)  # the JSON spec keeps them, not the weights file

    @property
    def reads_series(self) -> bool:
        return any(getattr(m, "reads_series", False) for m in self.members)

    @property
    def quantile_levels(self) -> tuple:
        """The members' quantile levels (every member is trained with the same ones)."""
        return self.members[0].spec.quantiles

    def forward(self, x: torch.Tensor, all_steps: bool = False, quantiles: bool | str = False):
        if quantiles == "both":
            return self(x, all_steps), self(x, all_steps, quantiles=True)
        out = 0
        for w, m in zip(self.weights, self.members):
            # each member reads its own last L steps; with `quantiles`, the weighted mean of sorted quantiles (still
            # sorted)
            out = out + w * (m(x, all_steps, quantiles=True) if quantiles else m(x, all_steps))
        return out


def spec_from_json(d: dict) -> ForecasterSpec | EnsembleSpec:
    """A saved forecaster's spec: one network, a seed ensemble of one shape (`members` > 1, as saved before ensembles
    of several shapes existed) or an ensemble of members of their own."""
    if "ensemble" in d:
        return EnsembleSpec([ForecasterSpec(**m) for m in d["ensemble"]], [float(w) for w in d["weights"]])
    spec = ForecasterSpec(**d)
    if spec.members > 1:
        one = replace(spec, members=1)
        return EnsembleSpec([one] * spec.members, [1.0 / spec.members] * spec.members)
    return spec


def build(spec: ForecasterSpec | EnsembleSpec) -> nn.Module:
    if isinstance(spec, ForecasterSpec) and spec.members > 1:  # a seed ensemble as saved before mixes existed
        spec = spec_from_json(spec.to_json())
    return ForecastEnsemble(spec) if isinstance(spec, EnsembleSpec) else FORECASTERS[spec.architecture](spec)


def ensemble_of(models: list[nn.Module], weights: list[float] | None = None) -> nn.Module:
    """Trained forecasters (or ensembles, flattened) -> their weighted mean (equal weights by default); one model
    alone with weight 1 is returned as it is."""
    weights = [1.0] * len(models) if weights is None else list(weights)
    specs, ws, nets = [], [], []
    for model, w in zip(models, weights):
        if w <= 0:
            continue
        parts = list(zip(model.members, model.weights.tolist())) if isinstance(model, ForecastEnsemble) \
            else [(model, 1.0)]
        for net, share in parts:
            specs.append(net.spec)
            ws.append(w * share)
            nets.append(net)
    if len(nets) == 1:
        return nets[0]
    total = sum(ws)
    ens = ForecastEnsemble(EnsembleSpec(specs, [w / total for w in ws]))
    for member, net in zip(ens.members, nets):
        member.load_state_dict(net.state_dict())
    return ens.eval()


def window_of(model: nn.Module) -> int:
    """The look-back a forecaster (or ensemble) reads: its longest member's."""
    return int(model.spec.window)


def greedy_selection(preds: list[np.ndarray], y: np.ndarray, rounds: int = 20) -> list[int]:
    """How often each candidate is picked (its weight, out of the sum) by forward selection with replacement:
    start from the candidate with the lowest MSE against `y`, then add whichever candidate lowers the MSE of the
    mean the most, while one does (at most `rounds` picks). `preds`: one array per candidate, shaped as y."""
    losses = [float(np.mean((p - y) ** 2)) for p in preds]
    counts = [0] * len(preds)
    first = int(np.argmin(losses))
    counts[first] = 1
    total, best = preds[first].astype("float64"), losses[first]
    for k in range(2, rounds + 1):
        trial = [float(np.mean(((total + p) / k - y) ** 2)) for p in preds]
        j = int(np.argmin(trial))
        if trial[j] >= best * (1 - 1e-6):
            break
        counts[j] += 1
        total, best = total + preds[j], trial[j]
    return counts
