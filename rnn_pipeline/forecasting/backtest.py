"""Rolling-origin backtesting: a forecast from each of n origins of the test period, `step` steps apart (the last
origin H steps before the end), scored beside persistence, the seasonal naive and the Ridges from the same
origins. With `refit` k, the model is refitted (the same parameters) on everything before the origin at origins 1,
1 + k, ...; without, the trained model forecasts from every origin (it has seen nothing of the test period).

A panel backtests each series from its own origins (counted back from its own end) and pools each origin's
windows over the series on their z-scores. Figures per origin: mse, mae and their standardised twins (each target's
errors over its training std); the aggregate is their mean and spread over the origins."""

from __future__ import annotations

import numpy as np

from rnn_pipeline.errors import ConfigError
from rnn_pipeline.forecasting.evaluation import (
    _ridge,
    persistence,
    seasonal_naive,
    target_scaler,
)
from rnn_pipeline.forecasting.windows import PreparedSeries, lag_matrix, target_matrix

KEYS = ("mse", "rmse", "mae", "std_mse", "std_rmse", "std_mae")


def origin_positions(data: PreparedSeries, window: int, n: int, step: int) -> np.ndarray:
    """The first target of each origin's window, oldest first: the last H steps before the series' end, then back by
    `step`. Every one must lie in the test split (the model has seen nothing from there) and after L inputs."""
    last = data.points.n - data.horizon
    positions = last - step * np.arange(n)[::-1]
    first = max(data.points.test_start, window)
    if positions[0] < first:
        room = last - first
        raise ConfigError(f"backtest: {n} origins {step} steps apart need {(n - 1) * step + data.horizon} steps of "
                          f"the test period; it has {room + data.horizon} (at L = {window}): use fewer origins, a "
                          "smaller step, or a larger split.test")
    return positions


def _scores(y_true: np.ndarray, y_pred: np.ndarray, mean, std) -> dict[str, np.ndarray]:
    """Per window (axis 0): mse, mae and their standardised twins."""
    err = y_pred - y_true
    z = err / std
    out = {"mse": np.mean(err ** 2, axis=(1, 2)), "mae": np.mean(np.abs(err), axis=(1, 2)),
           "std_mse": np.mean(z ** 2, axis=(1, 2)), "std_mae": np.mean(np.abs(z), axis=(1, 2))}
    return with_rmse(out)


def with_rmse(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each origin's rmse (and std_rmse): the root of its mse."""
    return {**scores, **{k.replace("mse", "rmse"): np.sqrt(v) for k, v in scores.items() if k.endswith("mse")}}


def series_forecasts(data: PreparedSeries, predict_windows, window: int, positions: np.ndarray, season: int | None,
                     ridge_windows: dict[str, int], ridge_alphas: list[float], refit=None,
                     refit_every: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Each model's scores per origin on one series: the RNN (`predict_windows`, or every `refit_every` origins
    what `refit(position)` returns) and the baselines; `ridge_windows`: each Ridge's look-back (as the evaluation
    chose it)."""
    idx = np.asarray(positions)
    y_true = target_matrix(data.values, idx, data.horizon, data.n_targets)
    preds = []
    predict = predict_windows
    for j, pos in enumerate(idx):
        if refit is not None and refit_every and j % refit_every == 0:
            predict = refit(int(pos))
        preds.append(predict(lag_matrix(data.values, idx[j:j + 1], window)))
    out = {"rnn": np.concatenate(preds)}
    out["persistence"] = persistence(data, idx)
    if season:
        out["seasonal_naive"] = seasonal_naive(data, idx, season)
    scaler = target_scaler(data)
    for name, L in ridge_windows.items():
        z = _ridge(data, L, ridge_alphas, name == "ridge_last", {"o": idx})["o"]
        out[name] = z * scaler.scale_ + scaler.mean_
    return {name: _scores(y_true, p, scaler.mean_, scaler.scale_) for name, p in out.items()}


def summarise(per_model: dict[str, dict[str, np.ndarray]], times: list[str], step: int) -> dict:
    """Scores per origin -> the backtest's result: one row per origin, and each model's mean and std over them
    (`rmse`: the root of the mean mse, so that mse, rmse and mae all score the same pooled windows)."""
    keys = [k for k in KEYS if k in next(iter(per_model.values()))]
    origins = [{"origin": j + 1, "time": t, **{f"{m}_{k}": float(v[k][j]) for m, v in per_model.items() for k in keys}}
               for j, t in enumerate(times)]
    summary = {}
    for m, v in per_model.items():
        summary[m] = {k: float(np.mean(v[k])) for k in keys} | {f"{k}_std": float(np.std(v[k])) for k in keys}
        # the mean rmse is the root of the mean mse: the figure the gate scores over the same pooled windows
        summary[m] |= {k.replace("mse", "rmse"): float(np.sqrt(summary[m][k])) for k in keys if k.endswith("mse")}
    return {"origins": origins, "models": summary, "n_origins": len(times), "step": step}


def pooled(per_series: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """A panel: each series' scores per origin -> each origin's mean over the series, on the z-scores only (the
    series' units differ). Models missing for a series (no season) are left out."""
    models = [m for m in per_series[0] if all(m in p for p in per_series)]
    return {m: with_rmse({k: np.mean([p[m][k] for p in per_series], axis=0) for k in ("std_mse", "std_mae")})
            for m in models}


def point_key(key: str) -> str:
    """The backtest's figure for a gate key: a backtest scores point forecasts, whose CRPS is their MAE."""
    return key.replace("crps", "mae")


def table(result: dict, key: str) -> str:
    """The backtest's lines for a summary: each model's mean +- std of `key` over the origins."""
    key = point_key(key)
    head = f"backtest: {result['n_origins']} origins, {result['step']} steps apart, {key} mean ± std over them"
    rows = [f"  {m:<16}{v[key]:>10.4f} ± {v[f'{key}_std']:.4f}" for m, v in result["models"].items() if key in v]
    return "\n".join([head, *rows])


def plot(path, result: dict, key: str = "std_mse"):
    """Each model's `key` per origin."""
    key = point_key(key)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnn_pipeline.forecasting.evaluation import _save_figure

    fig, ax = plt.subplots(figsize=(9, 4))
    x = [o["origin"] for o in result["origins"]]
    for m in result["models"]:
        ax.plot(x, [o[f"{m}_{key}"] for o in result["origins"]], marker="o", lw=1.5 if m == "rnn" else 1,
                label=m)
    ax.set_xlabel("origin (oldest first)")
    ax.set_ylabel(key)
    ax.set_title(f"Rolling-origin backtest: {key} per origin")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def log(result: dict, key: str, plots: bool = True) -> None:
    """The backtest in the active MLflow run: each model's mean and std over the origins (`backtest_<model>_<k>`),
    the per-origin table (backtest/origins.json) and, with `plots`, the per-origin chart of `key`."""
    import tempfile
    from pathlib import Path

    import mlflow
    import pandas as pd

    mlflow.log_params({"backtest.origins": result["n_origins"], "backtest.step": result["step"]})
    mlflow.log_metrics({f"backtest_{m}_{k}": v for m, vals in result["models"].items() for k, v in vals.items()})
    mlflow.log_table(pd.DataFrame(result["origins"]), "backtest/origins.json")
    if plots:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(plot(Path(tmp) / "backtest.png", result, key)), "backtest")
