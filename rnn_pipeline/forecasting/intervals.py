"""Prediction intervals for any forecaster, point models included: split conformal prediction on the validation
windows. For each level, horizon step and target, the half-width is the ceil((n + 1) level)-th smallest of the n
absolute validation errors (the finite-sample conformal quantile), in the model's scaled units; a forecast's interval is
the forecast plus or minus that half-width times its target's (or series') scale.

The validation windows also chose the model (early stopping, the search, the mix), so their errors are slightly
smaller than fresh ones and the intervals may cover a little less than their level: every run measures it on the
test windows (`coverage_<level>`) beside the mean width."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)


def label(level: float) -> str:
    """0.8 -> '80', 0.975 -> '97.5': how a level appears in column and metric names."""
    return f"{level * 100:g}"


def interval_columns(targets: list[str], horizon: int, levels: list[float]) -> list[str]:
    """`<target>_h<k>_lo<level>` and `_hi<level>`, in the order of the point forecasts' columns, level by level."""
    return [f"{t}_h{h + 1}_{side}{label(a)}" for a in levels for side in ("lo", "hi") for h in range(horizon)
            for t in targets]


@torch.no_grad()
def conformal_halfwidths(model, val, levels: list[float], chunk: int = 4096) -> np.ndarray:
    """(len(levels), H, T) half-widths in scaled units from `val` (a WindowSet) and the model's errors on it."""
    model.eval()
    errors = []
    for i in range(0, len(val), chunk):
        x, y = val.batch(torch.arange(i, min(i + chunk, len(val))))
        errors.append(torch.abs(model(x) - y).numpy())
    err = np.concatenate(errors)  # (N, H, T)
    n = len(err)
    too_few = [a for a in levels if math.ceil((n + 1) * a) > n]
    if too_few:
        log.warning("prediction intervals: %d validation windows are too few for the %s%% level(s); their half-width "
                    "is the largest validation error, and they may cover less", n,
                    ", ".join(label(a) for a in too_few))
    # the k-th smallest error, k = ceil((n + 1) level): the largest when too few windows for the level
    kth = [min(n, math.ceil((n + 1) * a)) - 1 for a in levels]
    part = np.partition(err, sorted(set(kth)), axis=0)
    return np.stack([part[k] for k in kth]).astype("float64")


def bounds(y: np.ndarray, halfwidth: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Point forecasts (N, H, T) and half-widths in original units (levels, N or 1, H, T) -> (lo, hi) per level."""
    return [(y - hw, y + hw) for hw in halfwidth]


def pinball(y: np.ndarray, q: np.ndarray, tau: float) -> np.ndarray:
    """The pinball (quantile) loss of quantile forecasts `q` at level `tau`, elementwise."""
    d = y - q
    return np.maximum(tau * d, (tau - 1) * d)


def interval_metrics(y_true: np.ndarray, bounds: list[tuple[np.ndarray, np.ndarray]], std, levels: list[float]) -> dict:
    """Per level: `coverage_<level>` (the share of test values inside their interval), `std_width_<level>` (the
    mean width) and `std_interval_score_<level>` (Winkler's: the width plus 2/alpha times how far an actual falls
    outside; lower is better, and it rewards narrow intervals only when they cover); and `std_pinball`, the mean
    pinball loss of the bounds as quantile forecasts ((1 - level) / 2 and (1 + level) / 2). std_ figures are over
    each target's training std: comparable across targets and series. `bounds`: (lo, hi) per level, each (N, H, T)
    in original units (the bundle's interval_bounds); `std`: per target (T,) or per window (N, 1, T)."""
    out, losses = {}, []
    z_true = y_true / std
    for a, (b_lo, b_hi) in zip(levels, bounds):
        lo, hi = b_lo / std, b_hi / std
        out[f"coverage_{label(a)}"] = float(np.mean((lo <= z_true) & (z_true <= hi)))
        out[f"std_width_{label(a)}"] = float(np.mean(hi - lo))
        alpha = 1 - a
        out[f"std_interval_score_{label(a)}"] = float(np.mean(
            (hi - lo) + 2 / alpha * (np.maximum(lo - z_true, 0) + np.maximum(z_true - hi, 0))))
        losses += [pinball(z_true, lo, alpha / 2), pinball(z_true, hi, 1 - alpha / 2)]
    if losses:
        out["std_pinball"] = float(np.mean(losses))
    return out


def quantile_pairs(levels: list[float], quantiles) -> list[list[int]]:
    """For each interval level, the positions of the quantiles (1 - level) / 2 and (1 + level) / 2 among a quantile
    model's `quantiles`; a level without both is a ValueError naming the quantiles it needs."""
    out = []
    for a in levels:
        want = [(1 - a) / 2, (1 + a) / 2]
        found = [next((i for i, q in enumerate(quantiles) if abs(q - w) < 1e-9), None) for w in want]
        if None in found:
            raise ValueError(f"the {label(a)}% interval from quantiles needs model.quantiles {want[0]:g} and "
                             f"{want[1]:g}")
        out.append(found)
    return out


def quantile_metrics(y_true: np.ndarray, q: np.ndarray, std, levels) -> dict:
    """A quantile forecaster's figures on the test windows (`q`: (N, H, T, Q) at `levels`, original units; `std`
    as for interval_metrics): `std_quantile_loss`, the mean pinball loss over the levels; `std_crps`, CRPS
    approximated by twice that mean (the quantile decomposition of CRPS over these levels: the finer the levels,
    the closer); `below_q<level>`, the share of actuals below each quantile (calibrated: the level itself); and
    `qcoverage_<width>` for each pair of levels symmetric about the median (0.1 and 0.9: `qcoverage_80`)."""
    z_true, z_q = y_true / std, q / np.asarray(std)[..., None]
    losses = [pinball(z_true, z_q[..., k], tau).mean() for k, tau in enumerate(levels)]
    out = {"std_quantile_loss": float(np.mean(losses)), "std_crps": float(2 * np.mean(losses))}
    for k, tau in enumerate(levels):
        out[f"below_q{label(tau)}"] = float(np.mean(y_true < q[..., k]))
    for k, tau in enumerate(levels):
        hi = [j for j, t in enumerate(levels) if abs(t - (1 - tau)) < 1e-9 and t > tau]
        if hi:
            inside = (q[..., k] <= y_true) & (y_true <= q[..., hi[0]])
            out[f"qcoverage_{label(1 - 2 * tau)}"] = float(np.mean(inside))
    return out
