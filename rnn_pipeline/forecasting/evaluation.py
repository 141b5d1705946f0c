"""Test metrics in original units and on the standardised scale, the baselines on the same windows, skill scores
and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error, r2_score
from sklearn.preprocessing import StandardScaler

from rnn_pipeline.config import HIGHER_IS_BETTER
from rnn_pipeline.forecasting.windows import PreparedSeries, lag_matrix, target_matrix

# "auto" season: the median step of a datetime column -> steps per season (a day; a week of daily data)
AUTO_SEASONS = {pd.Timedelta(hours=1): 24, pd.Timedelta(minutes=30): 48, pd.Timedelta(minutes=15): 96,
                pd.Timedelta(minutes=10): 144, pd.Timedelta(days=1): 7}
# metrics that have a standardised twin ("std_mse", ...): percentage errors are unit-free already, and on z-scores
# (values near zero) they mean nothing
STD_KEYS = ("mse", "rmse", "mae", "r2", "mase")


def headline(metric: str, n_targets: int) -> str:
    """The key of the figure a run is judged by (summary, gate): a multi-target forecast's error metric is read on
    the standardised scale ("std_mse"), since in original units it would add up different units; otherwise the
    metric itself ("mse", "f1_macro")."""
    return f"std_{metric}" if n_targets > 1 and metric in (*STD_KEYS, "crps") else metric


def mape_applies(y_true: np.ndarray) -> bool:
    """MAPE divides each error by its actual value: it means something only when no actual is zero and they all have
    the same sign (a series crossing zero has actuals arbitrarily close to it, and errors blown up without bound)."""
    t = np.asarray(y_true).reshape(-1)
    return len(t) > 0 and bool(np.all(t > 0) or np.all(t < 0))


def metrics(y_true: np.ndarray, y_pred: np.ndarray, mase_scale: float) -> dict[str, float]:
    """All metrics over every (window, step, target). y: (N, H, T) in original units. `mape` is left out when the
    actuals include zero or cross it (mape_applies): every reader takes it as optional."""
    t, p = y_true.reshape(-1), y_pred.reshape(-1)
    mse = float(mean_squared_error(t, p))
    mae = float(mean_absolute_error(t, p))
    denom = np.abs(t) + np.abs(p)
    smape = float(np.mean(np.where(denom > 0, 2 * np.abs(p - t) / np.where(denom > 0, denom, 1), 0.0)) * 100)
    mape = {"mape": float(mean_absolute_percentage_error(t, p) * 100)} if mape_applies(t) else {}
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": mae, "r2": float(r2_score(t, p)), **mape,
            "smape": smape, "mase": mae / mase_scale if mase_scale > 0 else float("nan")}


def target_scaler(data: PreparedSeries) -> StandardScaler:
    """Each target's mean and population std over the training rows (sklearn's StandardScaler): the standardised
    scale, the same whichever `features.scaler` the model uses."""
    return StandardScaler().fit(data.values[: data.points.val_start, : data.n_targets])


def all_metrics(y_true: np.ndarray, y_pred: np.ndarray, mean, std, mase_scale: float,
                std_mase_scale: float) -> dict[str, float]:
    """The original-unit metrics plus their standardised twins (`std_mse`, ...: on (y - mean) / std, the training
    z-scores). y: (N, H, T) with per-target `mean`/`std`, or one target's (N, H) with its own two numbers."""
    std_m = metrics((y_true - mean) / std, (y_pred - mean) / std, std_mase_scale)
    return {**metrics(y_true, y_pred, mase_scale), **{f"std_{k}": std_m[k] for k in STD_KEYS}}


def crps(y_true: np.ndarray, y_pred: np.ndarray, q: np.ndarray | None = None, levels=()) -> float:
    """CRPS of forecasts (N, H, T): from a quantile model's quantiles `q` (N, H, T, Q) at `levels`, twice the mean
    pinball loss over them (the quantile decomposition of CRPS); of a point forecast (q None), its MAE (the CRPS of a
    forecast that puts all its mass on one value)."""
    if q is None:
        return float(np.mean(np.abs(y_true - y_pred)))
    from rnn_pipeline.forecasting.intervals import pinball

    return float(2 * np.mean([pinball(y_true, q[..., k], tau).mean() for k, tau in enumerate(levels)]))


def forecast_score(y_true: np.ndarray, y_pred: np.ndarray, data: PreparedSeries, key: str,
                   q: np.ndarray | None = None, levels=()) -> float:
    """One gate score (mse, rmse, mae, crps, or their std_ twins) of (N, H, T) forecasts on `data`'s test windows
    (crps: from a quantile model's quantiles `q` at `levels`, see `crps`)."""
    if key.startswith("std_"):
        s = target_scaler(data)
        y_true, y_pred, key = (y_true - s.mean_) / s.scale_, (y_pred - s.mean_) / s.scale_, key[4:]
        if q is not None:
            q = (q - s.mean_[:, None]) / s.scale_[:, None]
    if key == "crps":
        return crps(y_true, y_pred, q, levels)
    t, p = y_true.reshape(-1), y_pred.reshape(-1)
    if key == "mae":
        return float(mean_absolute_error(t, p))
    mse = float(mean_squared_error(t, p))
    return {"mse": mse, "rmse": float(np.sqrt(mse))}[key]


def check_season(data: PreparedSeries, season: int | None) -> None:
    """The seasonal-naive baseline and the MASE scale need a full season of training rows before every forecast."""
    if season and season >= data.points.val_start:
        from rnn_pipeline.errors import ConfigError

        raise ConfigError(f"evaluation.season is {season} steps but only {data.points.val_start} training rows "
                          f"come before validation: use a shorter season or more data")


def resolve_season(season: int | str | None, data: PreparedSeries) -> int | None:
    """The season length in steps from `evaluation.season`: an int is checked and kept, None means no season, and
    "auto" reads the time column: a datetime series whose median step is 1 hour -> 24, 30 min -> 48, 15 min -> 96,
    10 min -> 144, 1 day -> 7, when at least two seasons of training rows come before validation; else None."""
    if season is None or isinstance(season, int):
        check_season(data, season)
        return season
    if season != "auto":
        raise ValueError(f"evaluation.season must be an int, 'auto' or None, got {season!r}")
    time = data.time
    if len(time) < 2 or not pd.api.types.is_datetime64_any_dtype(time):
        return None
    found = AUTO_SEASONS.get(time.diff().median())
    return found if found is not None and 2 * found <= data.points.val_start else None


def mase_scale(data: PreparedSeries, season: int | None, per_target: bool = False, standardised: bool = False):
    """Mean absolute error of the in-sample (seasonal) naive forecast on the training rows (one per target), in
    original units or on the standardised scale."""
    m = season or 1
    train = data.values[: data.points.val_start, : data.n_targets]
    if standardised:
        train = target_scaler(data).transform(train)
    err = np.abs(train[m:] - train[:-m])
    return [float(v) for v in err.mean(axis=0)] if per_target else float(err.mean())


def persistence(data: PreparedSeries, first_targets: np.ndarray) -> np.ndarray:
    last = data.values[first_targets - 1, : data.n_targets]  # (N, T)
    return np.repeat(last[:, None, :], data.horizon, axis=1)


def seasonal_naive(data: PreparedSeries, first_targets: np.ndarray, season: int) -> np.ndarray:
    """Target at t+h is the value one season (or several, when h >= season) before it: only the past is used."""
    h = np.arange(data.horizon)
    back = season * (h // season + 1)
    idx = first_targets[:, None] + h[None, :] - back[None, :]
    return data.values[idx, : data.n_targets]


def _ridge(data: PreparedSeries, window: int, alphas: list[float], last_value: bool,
           first_targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ridge on the L lags fitted on the training windows, forecasting the windows whose first targets are given
    (per name), on the standardised scale (columns z-scored with their training statistics)."""
    T, H = data.n_targets, data.horizon
    scaler = StandardScaler().fit(data.values[: data.points.val_start])
    z = scaler.transform(data.values)

    def windows(idx: np.ndarray):  # flat inputs, flat targets and the last values taken off, per window
        x, y = lag_matrix(z, idx, window), target_matrix(z, idx, H, T)  # (N, L, F), (N, H, T)
        last = x[:, -1:, :] if last_value else np.zeros((len(idx), 1, z.shape[1]))
        return (x - last).reshape(len(idx), -1), (y - last[..., :T]).reshape(len(idx), -1), last[..., :T]

    x_fit, y_fit, _ = windows(data.points.first_targets("train", window, H))
    model = RidgeCV(alphas=alphas).fit(x_fit, y_fit)
    out = {}
    for name, idx in first_targets.items():
        x, _, last = windows(idx)
        out[name] = model.predict(x).reshape(len(idx), H, T) + last
    return out


def ridge_on_lags(data: PreparedSeries, window: int, alphas: list[float], last_value: bool = False) -> np.ndarray:
    """A linear model on the L lags of every input column, fitted on the training windows only (as the RNN is; alpha
    by RidgeCV's efficient leave-one-out on them), forecasting the test windows in original units. Columns are
    z-scored with their training statistics first. With `last_value` (NLinear's normalisation), each window's last
    value is subtracted per column from its inputs and per target from its targets, and added back to the forecast.
    """
    return ridge_baseline(data, [window], alphas, last_value, data.points.first_targets("test", window, data.horizon))[0]


def ridge_baseline(data: PreparedSeries, windows: list[int], alphas: list[float], last_value: bool,
                   test_first_targets: np.ndarray) -> tuple[np.ndarray, int, dict[int, float]]:
    """The Ridge baseline with its look-back chosen as the RNN's is: among `windows` (those that fit before every
    test window), the one whose fit on the training windows has the lowest standardised MSE on the validation
    windows. Returns the test forecasts (original units), the chosen L and each L's validation MSE."""
    H, T = data.horizon, data.n_targets
    first_test = int(test_first_targets.min()) if len(test_first_targets) else data.points.n
    windows = sorted({int(w) for w in windows if 1 <= w <= first_test
                      and len(data.points.first_targets("train", w, H)) >= 2})
    if not windows:
        raise ValueError("no look-back fits before the test windows")
    scaler = target_scaler(data)
    scored = [w for w in windows if len(data.points.first_targets("val", w, H))]
    if len(scored) < 2:  # nothing to choose between
        w = scored[0] if scored else windows[0]
        return _ridge(data, w, alphas, last_value, {"test": test_first_targets})["test"] * scaler.scale_ + \
            scaler.mean_, w, {}
    val_idx = data.points.first_targets("val", max(scored), H)  # every look-back is scored on the same windows
    z_val = scaler.transform(target_matrix(data.values, val_idx, H, T).reshape(-1, T))
    best, scores = None, {}
    for w in scored:
        got = _ridge(data, w, alphas, last_value, {"val": val_idx, "test": test_first_targets})
        scores[w] = float(np.mean((got["val"].reshape(-1, T) - z_val) ** 2))
        if best is None or scores[w] < scores[best[0]]:
            best = (w, got["test"])
    return best[1] * scaler.scale_ + scaler.mean_, best[0], scores


def evaluate(data: PreparedSeries, predict_windows, window: int, season: int | str | None,
             ridge_alphas: list[float], ridge_windows: list[int] | None = None) -> dict:
    """Score the model (`predict_windows`: (N, L, F) original units -> (N, H, T)) and the baselines on the same
    test windows, in original units and on the standardised scale (`std_mse`, ...: each target's errors divided by
    its training std). Per target too. Skills are `1 - model/baseline` on the headline scale (`headline`). The
    Ridge baselines read the look-back among `ridge_windows` (default: the model's) that validation prefers."""
    season = resolve_season(season, data)
    idx = data.points.first_targets("test", window, data.horizon)
    y_true = target_matrix(data.values, idx, data.horizon, data.n_targets)
    y_pred = predict_windows(lag_matrix(data.values, idx, window))
    scaler = target_scaler(data)
    mean, std = scaler.mean_, scaler.scale_
    scale, std_scale = mase_scale(data, season), mase_scale(data, season, standardised=True)
    scale_per_target = mase_scale(data, season, per_target=True)
    std_per_target = mase_scale(data, season, per_target=True, standardised=True)
    result = {"metrics": all_metrics(y_true, y_pred, mean, std, scale, std_scale), "baselines": {},
              "n_test_windows": int(len(idx)), "season": season, "headline": headline("mse", data.n_targets),
              "y_true": y_true, "y_pred": y_pred, "first_targets": idx}
    preds = {"persistence": persistence(data, idx)}
    if season:
        preds["seasonal_naive"] = seasonal_naive(data, idx, season)
    result["baseline_windows"], result["baseline_val_mse"] = {}, {}
    for name, last_value in (("ridge", False), ("ridge_last", True)):
        preds[name], result["baseline_windows"][name], scores = ridge_baseline(
            data, ridge_windows or [window], ridge_alphas, last_value, idx)
        result["baseline_val_mse"][name] = {str(w): v for w, v in scores.items()}
    for name, p in preds.items():
        result["baselines"][name] = all_metrics(y_true, p, mean, std, scale, std_scale)
    # aggregate metrics in original units mix units when there are several targets: report each target (a target's
    # std_ metrics are its original ones over its training variance), and each horizon step
    result["per_target"] = {col: all_metrics(y_true[..., j], y_pred[..., j], mean[j], std[j], scale_per_target[j],
                                             std_per_target[j]) for j, col in enumerate(data.target_columns)}
    result["mse_by_horizon"] = [float(np.mean((y_true[:, h] - y_pred[:, h]) ** 2)) for h in range(data.horizon)]
    key = result["headline"]
    m = result["metrics"][key]
    result["skill"] = {name: skill(m, b[key], key) for name, b in result["baselines"].items()}
    return result


def skill(model: float, baseline: float, metric: str) -> float:
    """How much better the model is than a baseline: for an error (mse, log_loss...) `1 - model/baseline` (0: as
    good, 1: perfect, negative: worse); for a higher-is-better score (accuracy, F1) the difference."""
    if metric in HIGHER_IS_BETTER:
        return model - baseline
    if baseline > 0:
        return 1 - model / baseline
    return 0.0 if model == baseline else float("-inf")


def predictions_frame(ev: dict, time_values, output_columns: list[str]) -> pd.DataFrame:
    """The test forecasts beside the actuals, one row per window: what a user audits the metrics with."""
    n = ev["n_test_windows"]
    frame = pd.DataFrame(ev["y_pred"].reshape(n, -1), columns=output_columns)
    frame.insert(0, "window_id", np.arange(n))
    frame.insert(1, "target_time", np.asarray(time_values)[ev["first_targets"]])
    actual = pd.DataFrame(ev["y_true"].reshape(n, -1), columns=[f"actual_{c}" for c in output_columns])
    frame = pd.concat([frame, actual], axis=1)  # at once: column by column fragments a wide (H x T) frame
    return frame


def _acf(x: np.ndarray, nlags: int) -> np.ndarray:
    x = x - x.mean()
    denom = float(np.dot(x, x)) or 1.0
    return np.array([np.dot(x[: len(x) - k], x[k:]) / denom for k in range(nlags + 1)])


def save_plots(folder: str | Path, ev: dict, time_values, history: list[dict], study=None) -> list[Path]:
    """Actual vs predicted, residual histogram, residual autocorrelation, loss curves, Optuna history and
    parameter importances (when the study allows). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    y_true, y_pred = ev["y_true"][:, 0, 0], ev["y_pred"][:, 0, 0]
    resid = y_true - y_pred

    def save(fig, name):
        files.append(_save_figure(fig, folder / name))

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(time_values, y_true, label="actual", lw=1)
    ax.plot(time_values, y_pred, label="predicted (h=1)", lw=1, ls="--")
    ax.set_title("Test set: actual vs predicted")
    ax.legend()
    save(fig, "actual_vs_predicted.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(resid, bins=40)
    ax.set_title("Residuals (h=1)")
    save(fig, "residual_histogram.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    nl = min(40, len(resid) - 1)
    ac = _acf(resid, nl)
    ax.bar(range(nl + 1), ac)
    band = 1.96 / np.sqrt(len(resid))
    ax.axhline(band, ls=":", c="gray")
    ax.axhline(-band, ls=":", c="gray")
    ax.set_title("Residual autocorrelation")
    save(fig, "residual_acf.png")

    files.extend(_training_plots(folder, history, study))
    return files


def fan_charts(path: str | Path, panels: list[dict], levels: list[float]) -> Path:
    """One chart per entry of `panels` (a title, `t_hist`/`x_hist`: the window's inputs of its first target, and
    `t_fut`, `actual`, `forecast`, `bounds` ((lo, hi) per level, each (H,)) of its first target): the history, the
    actual future, the forecast and its prediction intervals, the widest palest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.8 * len(panels)), squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        ax.plot(p["t_hist"], p["x_hist"], lw=1, c="tab:blue", label="history")
        ax.plot(p["t_fut"], p["actual"], lw=1, c="black", label="actual")
        ax.plot(p["t_fut"], p["forecast"], lw=1.2, ls="--", c="tab:orange", label="forecast")
        for a, (lo, hi) in sorted(zip(levels, p.get("bounds", [])), key=lambda t: t[0], reverse=True):
            ax.fill_between(p["t_fut"], lo, hi, color="tab:orange",
                            alpha=0.15 if a >= 0.9 else 0.3, lw=0, label=f"{a * 100:g}% interval")
        ax.set_title(p["title"], fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return _save_figure(fig, Path(path))


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _training_plots(folder: Path, history: list[dict], study=None) -> list[Path]:
    """Loss curves and, when the study allows, the Optuna history and parameter importances."""
    import matplotlib.pyplot as plt

    files: list[Path] = []

    def save(fig, name):
        files.append(_save_figure(fig, folder / name))

    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train")
        ax.plot([h["epoch"] for h in history], [h["val_loss"] for h in history], label="validation")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title("Loss curves")
        ax.legend()
        save(fig, "loss_curves.png")

    if study is not None:
        import optuna.visualization.matplotlib as ovm

        for name, fn in (("optuna_history.png", ovm.plot_optimization_history),
                         ("optuna_param_importances.png", ovm.plot_param_importances)):
            try:
                ax = fn(study)
                save(ax.figure, name)
            except Exception:  # too few complete trials, or a single-valued space: nothing to plot
                plt.close("all")
    return files
