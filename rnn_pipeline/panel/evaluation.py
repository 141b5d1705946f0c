"""A panel's evaluation: every series scored as a single series is (forecasting.evaluation.evaluate: the model and
persistence, the seasonal naive and both Ridges, each fitted on that series alone, on the same test windows), then
aggregated with scale-free figures, since the series' units and sizes differ:

- `std_mse`, `std_rmse`, `std_mae`: every window of every series on its own series' training z-scores, pooled;
- `mase`: the mean over the series of each one's MASE (its MAE over its own in-sample naive MAE);
- `rel_mase`: that mean over persistence's (below 1: better than repeating the last value), in the spirit of
  M4's OWA, which also scores against a naive forecast;
- `smape` and `owa` (0.5 sMAPE and 0.5 MASE, each relative to persistence's) only where every series is positive,
  as in M4: on data that crosses zero (temperatures in degrees C) percentage errors mean nothing.

Each series' own figures are kept (`per_series`), with the best and worst series by relative MASE."""

from __future__ import annotations

import numpy as np

from rnn_pipeline.forecasting import evaluation
from rnn_pipeline.forecasting.evaluation import mape_applies, skill

POOLED = ("std_mse", "std_rmse", "std_mae", "std_crps")
BASELINE_NAMES = ("persistence", "seasonal_naive", "ridge", "ridge_last")


def _aggregate(per: list[dict], counts: np.ndarray, positive: bool) -> dict[str, float]:
    """Per-series metric dicts (with their test window counts) -> the panel's figures (without the relative ones)."""
    w = counts / counts.sum()
    out = {"std_mse": float(np.sum(w * [m["std_mse"] for m in per])),
           "std_mae": float(np.sum(w * [m["std_mae"] for m in per])),
           "mase": float(np.mean([m["mase"] for m in per]))}
    out["std_rmse"] = float(np.sqrt(out["std_mse"]))
    if positive:
        out["smape"] = float(np.mean([m["smape"] for m in per]))
    return out


def evaluate_panel(data, predict_series, window: int, season: int | None, ridge_alphas: list[float],
                   ridge_windows: list[int] | None = None, most: int = 5) -> dict:
    """Score the model (`predict_series(k, x)`: series k's (N, L, F) windows in original units -> (N, H, T)) and
    the baselines on every series' test windows; aggregate (module docstring). `most`: how many series the best and
    worst lists hold."""
    per_series, evs = {}, []
    for k, part in enumerate(data.parts):
        ev = evaluation.evaluate(part, lambda x, k=k: predict_series(k, x), window, season, ridge_alphas,
                                 ridge_windows)
        evs.append(ev)
    counts = np.array([ev["n_test_windows"] for ev in evs], dtype="float64")
    positive = all(mape_applies(part.values[:, : data.n_targets]) for part in data.parts)
    metrics = _aggregate([ev["metrics"] for ev in evs], counts, positive)
    baselines = {}
    for name in BASELINE_NAMES:
        if all(name in ev["baselines"] for ev in evs):
            baselines[name] = _aggregate([ev["baselines"][name] for ev in evs], counts, positive)
    pers = baselines["persistence"]
    for m in [metrics, *baselines.values()]:
        m["rel_mase"] = m["mase"] / pers["mase"] if pers["mase"] > 0 else float("nan")
        if positive and pers.get("smape"):
            m["owa"] = 0.5 * (m["smape"] / pers["smape"] + m["rel_mase"])
    for sid, ev, part in zip(data.series_ids, evs, data.parts):
        m = ev["metrics"]
        p_mase = ev["baselines"]["persistence"]["mase"]
        smape = {"smape": m["smape"]} if mape_applies(part.values[:, : data.n_targets]) else {}
        per_series[sid] = {"n_test_windows": ev["n_test_windows"], "mse": m["mse"], "mae": m["mae"],
                           "std_mse": m["std_mse"], "std_mae": m["std_mae"], "mase": m["mase"], **smape,
                           "rel_mase": m["mase"] / p_mase if p_mase > 0 else float("nan"),
                           "baselines_std_mse": {b: v["std_mse"] for b, v in ev["baselines"].items()},
                           "baseline_windows": ev["baseline_windows"]}
    ranked = sorted(per_series, key=lambda s: per_series[s]["rel_mase"])
    key = "std_mse"
    offsets = data.points.offsets
    return {"metrics": metrics, "baselines": baselines, "season": season, "headline": key,
            "skill": {b: skill(metrics[key], v[key], key) for b, v in baselines.items()},
            "per_series": per_series, "best_series": ranked[:most], "worst_series": ranked[::-1][:most],
            "n_series": data.n_series, "n_test_windows": int(counts.sum()),
            "baseline_windows": {b: sorted({ev["baseline_windows"][b] for ev in evs}) for b in ("ridge", "ridge_last")},
            "y_true": np.concatenate([ev["y_true"] for ev in evs]),
            "y_pred": np.concatenate([ev["y_pred"] for ev in evs]),
            "first_targets": np.concatenate([ev["first_targets"] + off for ev, off in zip(evs, offsets)]),
            "series": evs}


def panel_score(y_true: np.ndarray, y_pred: np.ndarray, series: np.ndarray, data, key: str,
                q: np.ndarray | None = None, levels=()) -> float:
    """One gate score of a panel's test forecasts: `std_mse`, `std_rmse`, `std_mae` or `std_crps` (each window on
    its series' training z-scores, pooled; crps from a quantile model's quantiles `q`, see evaluation.crps).
    `series`: each window's series position."""
    if key not in POOLED:
        raise ValueError(f"a panel is judged on {', '.join(POOLED)} (the series' units differ), not {key}")
    z_true, z_pred = np.empty_like(y_true), np.empty_like(y_pred)
    z_q = None if q is None else np.empty_like(q)
    for k, part in enumerate(data.parts):
        s = evaluation.target_scaler(part)
        rows = series == k
        z_true[rows] = (y_true[rows] - s.mean_) / s.scale_
        z_pred[rows] = (y_pred[rows] - s.mean_) / s.scale_
        if q is not None:
            z_q[rows] = (q[rows] - s.mean_[:, None]) / s.scale_[:, None]
    if key == "std_crps":
        return evaluation.crps(z_true, z_pred, z_q, levels)
    err = z_pred - z_true
    if key == "std_mae":
        return float(np.mean(np.abs(err)))
    mse = float(np.mean(err ** 2))
    return mse if key == "std_mse" else float(np.sqrt(mse))
