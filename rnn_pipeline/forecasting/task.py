"""Forecasting as a Task: a validated series, split by target positions and scaled on the training rows, windows as
views, a recurrent forecaster, and an evaluation beside persistence, the seasonal naive and Ridge on the same test
windows (see rnn_pipeline.tasks for the interface)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from rnn_pipeline.config import SearchSpace
from rnn_pipeline.data.validation import validate_series
from rnn_pipeline.errors import ConfigError, PipelineError
from rnn_pipeline.forecasting import backtest, calendar, evaluation, intervals, tuning
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.forecasting.ensemble import ensemble_of, greedy_selection, window_of
from rnn_pipeline.forecasting.monitoring import ForecastingMonitor, reference_meta, write_reference
from rnn_pipeline.forecasting.windows import PreparedSeries, before_test_end, lag_matrix, prepare_series, target_matrix
from rnn_pipeline.models import ForecasterSpec
from rnn_pipeline.tasks import Artifacts, Task, log_common_metrics, summary_head


class ForecastingTask(Task):
    name = "forecasting"
    monitor = ForecastingMonitor
    ensemble_trials = 3
    family_keys = ("channels", "norm", "highway")

    # ---- data -------------------------------------------------------------------------------------------------
    def read(self, frame, source):
        d = self.cfg.data
        # rows from test_end: unused
        frame = before_test_end(frame, source, d.time_column, self.cfg.split.test_end, d.timezone)
        time, values = validate_series(frame, source, d.time_column, d.target_columns, d.feature_columns, d.missing,
                                       freq=d.freq, timezone=d.timezone)
        return time, calendar.add(values, time, self.cfg.features.calendar, source, d.time_column)

    def n_exempt(self) -> int:
        """The input columns at the end that the per-window norm leaves alone: the calendar's (and a panel's static
        ones)."""
        return len(calendar.columns(self.cfg.features.calendar)) + len(self.cfg.data.static_columns)

    def feature_columns(self) -> list[str]:
        """The model's inputs after the targets: the data's feature columns, then the calendar's."""
        return [*self.cfg.data.feature_columns, *calendar.columns(self.cfg.features.calendar)]

    def prepare(self, checked, source) -> PreparedSeries:
        cfg, s = self.cfg, self.cfg.split
        time_col, values = checked
        data = prepare_series(time_col, values, source, cfg.data.target_columns, self.feature_columns(),
                              window=cfg.features.window, max_window=cfg.max_window(), horizon=cfg.features.horizon,
                              scaler=cfg.features.scaler, val=s.val, test=s.test, val_start=s.val_start,
                              test_start=s.test_start, test_end=s.test_end, outliers=cfg.data.outliers,
                              outlier_threshold=cfg.data.outlier_threshold)
        calendar.keep_unscaled([data], [*data.target_columns, *data.feature_columns], cfg.features.calendar)
        return data

    def describe(self, data: PreparedSeries, source: str) -> str:
        return (f"data {source}: {data.points.n} rows, {data.values.shape[1]} columns; split at rows "
                f"{data.points.val_start + 1} (validation) and {data.points.test_start + 1} (test)")

    def about(self, data: PreparedSeries) -> str:
        extra = (f", with {', '.join(f'`{c}`' for c in data.feature_columns)} as extra inputs"
                 if data.feature_columns else "")
        return f"Forecasts {', '.join(f'`{c}`' for c in data.target_columns)} {data.horizon} step(s) ahead{extra}."

    def digest(self, data: PreparedSeries) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([data.target_columns, data.feature_columns]).encode())
        h.update(np.ascontiguousarray(data.values).tobytes())
        h.update(data.time.astype(str).str.cat(sep=",").encode())
        return h.hexdigest()

    def warnings(self, data: PreparedSeries) -> list[str]:
        return list(data.warnings)

    # ---- judging ----------------------------------------------------------------------------------------------
    def season(self, data):
        return evaluation.resolve_season(self.cfg.evaluation.season, data)

    def gate_key(self, data: PreparedSeries) -> str:
        return evaluation.headline(self.cfg.gate_metric, data.n_targets)

    def floor(self, season):
        floor = self.cfg.registry.floor
        if floor is None:
            return ["persistence", *(["seasonal_naive"] if season else [])]
        if "seasonal_naive" in floor and not season:
            raise ConfigError("registry.floor lists seasonal_naive, but this series has no season (evaluation.season "
                              "'auto' found none): give evaluation.season or drop it from the floor")
        return list(floor)

    # ---- the model --------------------------------------------------------------------------------------------
    def default_params(self):
        m, cfg = self.cfg.model, self.cfg
        return ({"architecture": m.architecture, "norm": m.norm, "channels": m.channels},
                {"window": cfg.features.window, "segment": m.segment, "affine": m.affine, "loss": cfg.training.loss,
                 "channel_embedding": m.channel_embedding, "highway": m.highway})

    def search_space(self, data=None) -> SearchSpace:
        return tuning.default_space(self.cfg, data) if self.cfg.tuning.space.is_empty() else self.cfg.tuning.space

    def start_points(self, params, space=None):
        if not self.cfg.tuning.space.is_empty():
            return []
        windows = getattr(space, "window", None) or []
        return tuning.start_points(params, self.cfg.features.window, len(self.cfg.data.target_columns),
                                   max(windows, default=None))

    def spec(self, params, data: PreparedSeries) -> ForecasterSpec:
        return ForecasterSpec(cell=params["cell"], hidden=int(params["hidden"]), layers=int(params["layers"]),
                         dropout=float(params["dropout"]), n_features=data.z.shape[1], n_targets=data.n_targets,
                         n_exempt=self.n_exempt(), quantiles=tuple(self.cfg.model.quantiles),
                         horizon=data.horizon, architecture=params.get("architecture", "direct"),
                         norm=params.get("norm", "none"), channels=params.get("channels", "mixed"),
                         segment=min(int(params.get("segment", 24)), int(params["window"])),
                         affine=bool(params.get("affine", False)),
                         channel_embedding=bool(params.get("channel_embedding", True)),
                         highway=bool(params.get("highway", False)), window=int(params["window"]))

    def train_sets(self, params, data: PreparedSeries):
        loss = params.get("loss", "mse")
        return data.windows("train", params["window"], loss), data.windows("val", params["window"], loss)

    def bundle(self, model, data: PreparedSeries, params) -> ForecastBundle:
        # the model's own look-back (an ensemble's: its longest member's), which need not be the params' (the best
        # trial's) when validation keeps another candidate alone
        window = window_of(model) or int(params["window"])
        return ForecastBundle(model, data.scaling, data.target_columns, data.feature_columns, window, data.horizon,
                              self.intervals(model, data, window), self.calendar_spec(data.time, window))

    def calendar_spec(self, time: pd.Series, window: int) -> dict | None:
        """What a bundle needs to compute the calendar columns of a request (None without features.calendar)."""
        cycles = self.cfg.features.calendar
        if not cycles:
            return None
        return {"cycles": list(cycles), "time_column": self.cfg.data.time_column,
                "timezone": calendar.zone(time, self.cfg.data.timezone),
                "example_time": [t.isoformat() for t in time.iloc[-window:]]}

    def intervals(self, model, data, window: int) -> dict | None:
        """The bundle's prediction intervals (evaluation.intervals' levels), calibrated on the validation windows
        (see forecasting.intervals); None when the config asks for none."""
        levels = self.cfg.evaluation.intervals
        if not levels:
            return None
        if self.cfg.evaluation.interval_method == "quantiles":  # the model's own quantiles: nothing to calibrate
            return {"levels": list(levels), "method": "quantiles",
                    "pairs": intervals.quantile_pairs(levels, self.cfg.model.quantiles)}
        val = data.windows("val", window)
        return {"levels": list(levels), "halfwidth": intervals.conformal_halfwidths(model, val, levels).tolist(),
                "calibration_windows": len(val)}

    def combine(self, models, data: PreparedSeries):
        """The weighted mean of `models` chosen by greedy forward selection on the validation windows (at the
        longest look-back among them, so that every model reads the same windows)."""
        val = data.windows("val", max(window_of(m) for m in models))
        preds, ys = [[] for _ in models], []
        with torch.no_grad():
            for i in range(0, len(val), 4096):
                x, y = val.batch(torch.arange(i, min(i + 4096, len(val))))
                ys.append(y.numpy())
                for p, m in zip(preds, models):
                    p.append(m.eval()(x).numpy())  # each reads its own last L steps
        counts = greedy_selection([np.concatenate(p) for p in preds], np.concatenate(ys))
        weights = [c / sum(counts) for c in counts]
        model = ensemble_of(models, weights)
        return model, weights, val.eval_loss(model)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, data, bundle: ForecastBundle, season):
        ev = evaluation.evaluate(data, bundle.predict_windows, bundle.window, season,
                                 self.cfg.evaluation.ridge_alphas, self.ridge_windows(data, bundle.window))
        q = None
        if bundle.quantile_levels:  # the network's own quantiles on the same windows
            q = bundle.predict_windows(lag_matrix(data.values, ev["first_targets"], bundle.window), quantiles=True)
            ev["metrics"].update(intervals.quantile_metrics(ev["y_true"], q, evaluation.target_scaler(data).scale_,
                                                            bundle.quantile_levels))
        if bundle.levels:  # the intervals' coverage and width on the same test windows
            ev["metrics"].update(intervals.interval_metrics(ev["y_true"], bundle.interval_bounds(ev["y_pred"], None, q),
                                                            evaluation.target_scaler(data).scale_, bundle.levels))
        if self.cfg.gate_metric == "crps":
            crps_figures(ev, evaluation.crps(ev["y_true"], ev["y_pred"], q, bundle.quantile_levels))
        return ev

    def ridge_windows(self, data: PreparedSeries, window: int) -> list[int]:
        """The look-backs the Ridge baselines choose from on validation, as the model's L was chosen: the configured
        window, the model's and those of the search space (a range's ends), where they fit the splits."""
        space = self.search_space(data).window if self.cfg.tuning.n_trials > 0 else None
        found = {self.cfg.features.window, window}
        if isinstance(space, list):
            found |= set(space)
        elif space is not None:
            found |= {space.low, space.high}
        return sorted(w for w in found if w == window or tuning.fits(data, w))

    # ---- backtesting ------------------------------------------------------------------------------------------
    def backtest(self, data: PreparedSeries, bundle: ForecastBundle, season, ev: dict | None = None,
                 params: dict | None = None, device="cpu", origins: int | None = None, step: int | None = None,
                 refitted: dict | None = None):
        """The rolling-origin backtest (config `backtest`, or `origins`/`step` given): see forecasting.backtest.
        The Ridges read the look-backs the evaluation `ev` chose (chosen again on validation without one);
        `params`: the best trial's, which backtest.refit refits; `refitted`: {position: bundle} of refits already
        fitted elsewhere (refit_positions, refit_bundle)."""
        b = self.cfg.backtest
        self.check_bundle(bundle, data, inputs=True)
        n, step = origins or b.origins, step or b.step or data.horizon
        refit = None
        window = self._backtest_window(bundle, params)
        if b.refit and params is not None:
            done = refitted or {}

            def refit(pos):  # fitted here, unless the flow fitted it already (fanned out: backtest.workers)
                return (done.get(pos) or self.refit_bundle(params, data, pos, device)).predict_windows
        positions = backtest.origin_positions(data, window, n, step)
        ridge_windows = ev["baseline_windows"] if ev else self.chosen_ridge_windows(data, bundle.window, positions)
        per = backtest.series_forecasts(data, bundle.predict_windows, window, positions, season, ridge_windows,
                                        self.cfg.evaluation.ridge_alphas, refit, b.refit)
        return backtest.summarise(per, [str(data.time.iloc[p]) for p in positions], step)

    def log_backtest(self, result: dict, key: str) -> None:
        backtest.log(result, key, self.cfg.evaluation.plots)

    def chosen_ridge_windows(self, data: PreparedSeries, window: int, positions) -> dict[str, int]:
        """Each Ridge's look-back as the evaluation chooses it (on the validation windows)."""
        return {name: evaluation.ridge_baseline(data, self.ridge_windows(data, window), self.cfg.evaluation.ridge_alphas,
                                                name == "ridge_last", np.asarray(positions))[1]
                for name in ("ridge", "ridge_last")}

    def _backtest_window(self, bundle: ForecastBundle, params: dict | None) -> int:
        """The look-back the origins must leave room for: a refit reads the best trial's, which the mix may not
        hold."""
        if self.cfg.backtest.refit and params is not None:
            return max(bundle.window, int(params["window"]))
        return bundle.window

    def refit_positions(self, data: PreparedSeries, bundle: ForecastBundle, params: dict) -> list[int]:
        """The origins (positions in the series) where backtest.refit refits: origins 1, 1 + k, 1 + 2k, ... Each
        refit is independent of the others: a flow may fit them anywhere (refit_bundle) and pass them to
        backtest(refitted=...)."""
        b = self.cfg.backtest
        positions = backtest.origin_positions(data, self._backtest_window(bundle, params), b.origins,
                                              b.step or data.horizon)
        return [int(p) for p in positions[::b.refit]]

    def refit_bundle(self, params: dict, data: PreparedSeries, position: int, device) -> ForecastBundle:
        """`params` fitted on everything before `position` (its validation: as many windows before it as the run's
        validation split held); its bundle forecasts in original units in and out."""
        import dataclasses

        from rnn_pipeline import tune
        from rnn_pipeline.forecasting.windows import SplitPoints

        val_len = data.points.test_start - data.points.val_start
        cut = dataclasses.replace(data, points=SplitPoints(data.points.n, position - val_len, position))
        t = self.cfg.training
        fit = tune.fit_model(params, cut, self.cfg, max_epochs=t.max_epochs, patience=t.patience, device=device,
                             max_seconds=t.max_seconds)
        return self.bundle(fit.model, cut, params)

    def backtest_score(self, model, data, key: str, origins: int, step: int | None = None) -> float:
        """The gate's score from the backtest's origins (backtest.gate): `key` over every origin's window, forecast
        by the loaded pyfunc through its own predict."""
        return self._pyfunc_score(model, data, key,
                                  lambda window: backtest.origin_positions(data, window, origins, step or data.horizon))

    def log_evaluation(self, ev, data: PreparedSeries) -> None:
        log_common_metrics(ev)
        mlflow.log_params({f"baseline.{k}.window": v for k, v in ev["baseline_windows"].items()})
        mlflow.log_metrics({f"test_mse_h{h + 1}": v for h, v in enumerate(ev["mse_by_horizon"])})
        if len(data.target_columns) > 1:
            for col, m in ev["per_target"].items():
                mlflow.log_metrics({f"test_{col}_{k}": v for k, v in m.items()})

    def summary(self, ev, data):
        return {"metrics_per_target": ev["per_target"], "mse_by_horizon": ev["mse_by_horizon"],
                "n_test_windows": ev["n_test_windows"], "baseline_windows": ev["baseline_windows"],
                "baseline_val_mse": ev["baseline_val_mse"]}

    def tag_scores(self, gate_key):
        return tuple(dict.fromkeys(("mse", gate_key)))

    def artifacts(self, folder: Path, ev, data: PreparedSeries, bundle: ForecastBundle, history, study, digest):
        plots = (evaluation.save_plots(folder, ev, data.time.iloc[ev["first_targets"]].to_numpy(), history, study)
                 + [self.fan_chart(folder / "forecast_intervals.png", data, bundle)]
                 if self.cfg.evaluation.plots else [])
        index = ev["first_targets"]
        meta = reference_meta(self.cfg.data.time_column, data.target_columns + data.feature_columns,
                                      data.n_targets, bundle.window, data.horizon, ev["metrics"]["mse"], data.time,
                                      digest)
        return Artifacts(plots, bundle.windows_frame(lag_matrix(data.values, index[:1], bundle.window)), index,
                         ev["y_pred"], evaluation.predictions_frame(ev, data.time, bundle.output_columns),
                         write_reference(folder / "reference", data.time, data.values, meta))

    @staticmethod
    def window_chart(data: PreparedSeries, bundle: ForecastBundle, title: str, series=None) -> dict:
        """The last test window of `data` (one series) as fan_charts draws it: its first target's history, actual
        future, forecast and intervals (`series`: a panel bundle's position of this series)."""
        L, H, T = bundle.window, data.horizon, data.n_targets
        idx = data.points.first_targets("test", L, H)[-1:]
        x = lag_matrix(data.values, idx, L)
        y = target_matrix(data.values, idx, H, T)
        kw = {} if series is None else {"series": np.array([series])}
        pred = bundle.predict_windows(x, **kw)
        chart = {"title": title, "t_hist": data.time.iloc[idx[0] - L: idx[0]].to_numpy(), "x_hist": x[0, :, 0],
                 "t_fut": data.time.iloc[idx[0]: idx[0] + H].to_numpy(), "actual": y[0, :, 0],
                 "forecast": pred[0, :, 0]}
        if bundle.levels:  # (lo, hi) of the first target, per level
            chart["bounds"] = [(lo[0, :, 0], hi[0, :, 0]) for lo, hi in bundle.interval_bounds(pred, kw.get("series"),
                                                                                                x=x)]
        return chart

    def fan_chart(self, path: Path, data: PreparedSeries, bundle: ForecastBundle) -> Path:
        return evaluation.fan_charts(path, [self.window_chart(
            data, bundle, f"last test window: {data.target_columns[0]}, {data.horizon} step(s) ahead")], bundle.levels)

    def summary_table(self, s: dict) -> str:
        # the headline scale: original units for one target, standardised (training z-scores) for several
        p = "std_" if s.get("headline", "mse").startswith("std_") else ""
        scale = ("standardised (each target's errors over its training std: original units would mix)" if p
                 else "original units")
        lines = summary_head(s) + [f"test windows, {scale}; skill = 1 - mse / baseline mse",
                                   f"{'model':<16}{'mse':>12}{'rmse':>10}{'mae':>10}{'r2':>8}{'mase':>8}{'skill':>8}"]
        looks = s.get("baseline_windows", {})
        rows = [("rnn", s["metrics"], None)] + [(k + (f" L={looks[k]}" if k in looks else ""), v, s["skill"][k])
                                                for k, v in s["baselines"].items()]
        for name, m, sk in rows:
            skill = "" if sk is None else f"{sk:+.3f}"
            lines.append(f"{name:<16}{m[p + 'mse']:>12.6f}{m[p + 'rmse']:>10.4f}{m[p + 'mae']:>10.4f}"
                         f"{m[p + 'r2']:>8.4f}{m[p + 'mase']:>8.3f}{skill:>8}")
        lines += interval_lines(s["metrics"])
        if s.get("backtest"):
            lines += backtest.table(s["backtest"], s["headline"]).splitlines()
        lines.append(f"wall time {s['wall_seconds']:.1f}s (tuning {s['timings']['tune']:.1f}s, final fit "
                     f"{s['timings']['final_fit']:.1f}s, training compute {s['timings']['training_compute']:.1f}s)")
        return "\n".join(lines)

    # ---- scoring a logged model -------------------------------------------------------------------------------
    data_noun = "a series to forecast"

    def logged_bundle(self, model, data):
        """The bundle inside a loaded pyfunc, checked against `data` (check_bundle)."""
        from rnn_pipeline.registry import bundle_of

        return self.check_bundle(bundle_of(model), data)

    def check_bundle(self, b, data, inputs: bool = False):
        """`b` must be a model of this task forecasting `data`'s targets over its horizon; with `inputs`, reading
        exactly its columns, in order. Returns `b`."""
        kind = getattr(b, "task", "forecasting")
        if kind != self.name:
            raise PipelineError(f"model is a {kind} model; this data is {self.data_noun}")
        if b.target_columns != data.target_columns or b.horizon != data.horizon:
            raise PipelineError(f"model forecasts {b.target_columns} x {b.horizon} steps; this data needs "
                                f"{data.target_columns} x {data.horizon}")
        if inputs and b.input_columns != [*data.target_columns, *data.feature_columns]:
            raise PipelineError(f"model reads {b.input_columns}; this data has "
                                f"{[*data.target_columns, *data.feature_columns]}")
        return b

    def check_backtest(self, data) -> None:
        """The configured backtest's origins fit in the test period (checked before training)."""
        b = self.cfg.backtest
        if b.origins:
            backtest.origin_positions(data, self.cfg.features.window, b.origins, b.step or data.horizon)

    def score(self, model, data: PreparedSeries, metric):
        return self._pyfunc_score(model, data, metric,
                                  lambda window: data.points.first_targets("test", window, data.horizon))

    def _pyfunc_score(self, model, data: PreparedSeries, metric: str, positions_of) -> float:
        """`metric` of a loaded pyfunc's forecasts, through its own predict, of the windows whose first targets
        `positions_of(its window)` gives."""
        b = self.logged_bundle(model, data)
        names = [*data.target_columns, *data.feature_columns]
        missing = [c for c in b.input_columns if c not in names]
        if missing:
            raise PipelineError(f"model needs input column(s) {missing} that this data lacks")
        cols = [names.index(c) for c in b.input_columns]
        idx = positions_of(b.window)
        x = lag_matrix(data.values[:, cols], idx, b.window)
        out = model.predict(b.windows_frame(x))
        y_pred = out[b.output_columns].to_numpy().reshape(len(idx), b.horizon, len(b.target_columns))
        y_true = target_matrix(data.values, idx, data.horizon, data.n_targets)
        return evaluation.forecast_score(y_true, y_pred, data, metric, *answered_quantiles(b, out, metric))

    def predict_logged(self, model, bundle: ForecastBundle, data: PreparedSeries, index):
        x = lag_matrix(data.values, index, bundle.window)
        return model.predict(bundle.windows_frame(x))[bundle.output_columns].to_numpy()


def crps_figures(ev: dict, model_crps: float | None = None) -> None:
    """The gate's CRPS beside the figures (registry.metric crps): a quantile model's from its quantiles (std_crps is
    already there), a point forecast's (the baselines', a point model's) its MAE."""
    m = ev["metrics"]
    if "std_crps" not in m:
        m["std_crps"] = m["std_mae"]
    if model_crps is not None:
        m["crps"] = model_crps
    for b in ev["baselines"].values():
        b["std_crps"] = b["std_mae"]
        if "mae" in b:
            b["crps"] = b["mae"]


def answered_quantiles(b, out, metric: str) -> tuple:
    """(q (N, H, T, Q), levels) from a pyfunc's answer `out` when the gate scores CRPS and the model answered its
    quantiles; else (None, ()): a point forecast."""
    levels = tuple(getattr(b, "quantile_levels", ()) or ())
    if not metric.endswith("crps") or not levels or not set(b.quantile_columns) <= set(out.columns):
        return None, ()
    q = out[b.quantile_columns].to_numpy().reshape(len(out), len(levels), b.horizon, len(b.target_columns))
    return np.moveaxis(q, 1, -1), levels


def interval_lines(m: dict) -> list[str]:
    """The summary's line on the prediction intervals' test coverage and width (none without intervals)."""
    levels = sorted((float(k.removeprefix("coverage_")), k[9:]) for k in m if k.startswith("coverage_"))
    if not levels and "std_quantile_loss" not in m:
        return []
    lines = ["prediction intervals on the test windows: " + ", ".join(
        f"{name}% covers {100 * m[f'coverage_{name}']:.1f}% (mean width {m[f'std_width_{name}']:.3f} std)"
        for _, name in levels)] if levels else []
    if "std_quantile_loss" in m:  # a quantile model
        pairs = sorted((float(k.removeprefix("qcoverage_")), k) for k in m if k.startswith("qcoverage_"))
        lines.append(f"quantiles: CRPS {m['std_crps']:.4f} std, pinball {m['std_quantile_loss']:.4f}" + "".join(
            f", {k[10:]}% band covers {100 * m[k]:.1f}%" for _, k in pairs))
    return lines
