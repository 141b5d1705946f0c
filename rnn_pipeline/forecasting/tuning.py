"""Forecasting's default search space: what a user who gives only the data, the split, L, H and n_trials gets
searched (architecture, normalisation, channel mode, L around the configured window, width, learning rate, loss,
dropout), and the published recipe tried early."""

from __future__ import annotations

from rnn_pipeline.config import FloatRange, PipelineConfig, SearchSpace
from rnn_pipeline.forecasting.windows import PreparedSeries

MAX_WINDOW = 720  # the longest look-back the default space offers


def default_space(cfg: PipelineConfig, data: PreparedSeries | None = None) -> SearchSpace:
    """The space searched when a forecasting config gives none: architecture, normalisation, channel mode (several
    targets), L around the configured window, width, learning rate, loss, dropout and the linear highway. Windows
    that leave too few windows in a split of `data` are left out."""
    window = cfg.features.window
    windows = sorted({max(1, window // 2), window, min(2 * window, max(MAX_WINDOW, window))})
    if data is not None:
        windows = [w for w in windows if fits(data, w)] or [window]
    space = SearchSpace(architecture=["segment", "direct"], norm=["revin", "last", "none"],
                        window=windows, hidden=[64, 128, 256], lr=FloatRange(low=3e-4, high=3e-3, log=True),
                        batch_size=[64, 256], loss=["mse", "mae"], dropout=FloatRange(low=0.0, high=0.5),
                        segment=sorted({min(w, window) for w in (12, 24, 48)}), highway=[False, True])
    if data is not None and data.n_targets > 1:
        space.channels = ["independent", "mixed"]
    return space


def fits(data: PreparedSeries, window: int, min_windows: int = 2) -> bool:
    return all(len(data.points.first_targets(s, window, data.horizon)) >= min_windows
               for s in ("train", "val", "test"))


# The published long-horizon recipe for hourly data (SegRNN's scripts at L = 96: a GRU over segments of 24 steps,
# parallel decoding, channel independence with channel ids, dropout 0.5, batch 256, lr 1e-3; width capped for CPUs)
RECIPE = {"architecture": "segment", "norm": "revin", "channels": "independent", "cell": "gru", "hidden": 256,
          "dropout": 0.5, "lr": 1e-3, "batch_size": 256, "segment": 24, "loss": "mse", "highway": False}

# The recipe started from the strongest simple model on hourly data (the linear forecast of each channel's
# last-value-normalised window, as NLinear; the highway, fitted in closed form) so that the recurrent part learns
# what it leaves; and, with several targets, the recurrent model started from the Ridge on every column's lags
# (mixed, no normalisation), which wins where the channels share linear structure (weather)
LINEAR_STARTS = [{**RECIPE, "norm": "last", "highway": True},
                 {**RECIPE, "norm": "none", "channels": "mixed", "highway": True}]


def start_points(params: dict, window: int, n_targets: int | None = None, longest: int | None = None) -> list[dict]:
    """What a default-space study tries first, after the configured model: the recipe, then its linear starts (the
    mixed one only with several targets), then the NLinear-style start at the `longest` look-back of the space
    (linear forecasts of hourly data gain from longer windows, as DLinear's and NLinear's results show)."""
    points = [RECIPE, LINEAR_STARTS[0], *(LINEAR_STARTS[1:] if n_targets is None or n_targets > 1 else [])]
    out = [{**params, **p, "segment": min(p["segment"], window)} for p in points]
    if longest is not None and longest > window:
        out.append({**params, **LINEAR_STARTS[0], "window": longest})
    return out
