"""Forecasting's default search space: what a user who gives only the data, the split, L, H and n_trials gets
searched (architecture, normalisation, channel mode, L around the configured window, width, learning rate, loss,
dropout), and the published recipe tried early."""

from __future__ import annotations

from rnn_pipeline.config import FloatRange, PipelineConfig, SearchSpace
from rnn_pipeline.forecasting.windows import PreparedSeries

MAX_WINDOW = 720  # the longest look-back the default space offers


def default_space(cfg: PipelineConfig, data: PreparedSeries | None = None) -> SearchSpace:
    """The space searched when a forecasting config gives none: architecture, normalisation, channel mode (several
    targets), L around the configured window, width, learning rate, loss and dropout. Windows that leave too few
    windows in a split of `data` are left out."""
    window = cfg.features.window
    windows = sorted({max(1, window // 2), window, min(2 * window, max(MAX_WINDOW, window))})
    if data is not None:
        windows = [w for w in windows if fits(data, w)] or [window]
    space = SearchSpace(architecture=["segment", "direct"], norm=["revin", "last", "none"],
                        window=windows, hidden=[64, 128, 256], lr=FloatRange(low=3e-4, high=3e-3, log=True),
                        batch_size=[64, 256], loss=["mse", "mae"], dropout=FloatRange(low=0.0, high=0.5),
                        segment=sorted({min(w, window) for w in (12, 24, 48)}))
    if data is not None and data.n_targets > 1:
        space.channels = ["independent", "mixed"]
    return space


def fits(data: PreparedSeries, window: int, min_windows: int = 2) -> bool:
    return all(len(data.points.first_targets(s, window, data.horizon)) >= min_windows
               for s in ("train", "val", "test"))


# The published long-horizon recipe for hourly data (SegRNN's scripts at L = 96: a GRU over segments of 24 steps,
# parallel decoding, channel independence with channel ids, dropout 0.5, batch 256, lr 1e-3; width capped for CPUs)
RECIPE = {"architecture": "segment", "norm": "revin", "channels": "independent", "cell": "gru", "hidden": 256,
          "dropout": 0.5, "lr": 1e-3, "batch_size": 256, "segment": 24, "loss": "mse"}
