"""Forecasting many series with one global model, as a Task: a forecasting config with `data.id_column`. The model,
its search space, tuning, the final fit and the mix are forecasting's (a window of any series is a window); what
differs is reading (series by series), preparing (each series split and scaled on its own), the bundle (a scaling
per series), and judging (each series beside its own baselines, aggregated scale-free: see panel.evaluation)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from rnn_pipeline.errors import ConfigError
from rnn_pipeline.forecasting import backtest, calendar, evaluation, intervals
from rnn_pipeline.forecasting.ensemble import window_of
from rnn_pipeline.forecasting.task import ForecastingTask, answered_quantiles, crps_figures, interval_lines
from rnn_pipeline.forecasting.windows import lag_matrix, target_matrix
from rnn_pipeline.panel import evaluation as panel_eval
from rnn_pipeline.panel.bundle import PanelBundle
from rnn_pipeline.panel.data import PreparedPanel, prepare_panel, validate_panel
from rnn_pipeline.panel.monitoring import PanelMonitor, write_reference
from rnn_pipeline.tasks import Artifacts, log_common_metrics, summary_head


class PanelTask(ForecastingTask):
    name = "panel"
    monitor = PanelMonitor

    # ---- data -------------------------------------------------------------------------------------------------
    def read(self, frame, source):
        d, names = self.cfg.data, self.cfg.features.calendar
        return [(sid, time, calendar.add(values, time, names, f"{source}, series {sid!r}", d.time_column))
                for sid, time, values in validate_panel(frame, source, d, self.cfg.split.test_end)]

    def prepare(self, checked, source) -> PreparedPanel:
        cfg, s = self.cfg, self.cfg.split
        return self.prepare_inputs(prepare_panel(
            checked, source, cfg.data.id_column, cfg.data.target_columns, self.feature_columns(),
            window=cfg.features.window, max_window=cfg.max_window(), horizon=cfg.features.horizon,
            scaler=cfg.features.scaler, val=s.val, test=s.test, val_start=s.val_start, test_start=s.test_start,
            test_end=s.test_end, outliers=cfg.data.outliers, outlier_threshold=cfg.data.outlier_threshold,
            max_windows_per_series=cfg.features.max_windows_per_series, static_columns=cfg.data.static_columns))

    def prepare_inputs(self, data: PreparedPanel) -> PreparedPanel:
        """The calendar columns unscaled (see calendar.keep_unscaled); with a series embedding
        (model.series_embedding), each row's series index as the last column of z (the model looks up its vector;
        the bundle adds the column to every request)."""
        if self.cfg.features.calendar:
            calendar.keep_unscaled(data.parts, [*data.target_columns, *data.feature_columns],
                                   self.cfg.features.calendar)
            data.z = torch.cat([p.z for p in data.parts])
        if self.cfg.model.series_embedding:
            index = np.repeat(np.arange(data.n_series, dtype="float32"), [p.points.n for p in data.parts])
            data.z = torch.cat([data.z, torch.from_numpy(index)[:, None]], dim=1)
        return data

    def spec(self, params, data: PreparedPanel):
        spec = super().spec(params, data)
        if self.cfg.model.series_embedding:
            spec = replace(spec, n_series=data.n_series, series_dim=self.cfg.model.series_embedding)
        return spec

    def describe(self, data: PreparedPanel, source: str) -> str:
        rows = [p.points.n for p in data.parts]
        return (f"data {source}: {data.n_series} series ('{data.id_column}'), {sum(rows)} rows ({min(rows)}-"
                f"{max(rows)} per series), {data.z.shape[1]} columns; training windows at L={self.cfg.features.window}"
                f": {len(data.points.first_targets('train', self.cfg.features.window, data.horizon))}")

    def about(self, data: PreparedPanel) -> str:
        return (f"Forecasts {', '.join(f'`{c}`' for c in data.target_columns)} {data.horizon} step(s) ahead for "
                f"{data.n_series} series (`{data.id_column}`) with one global model.")

    def digest(self, data: PreparedPanel) -> str:
        return data.digest()

    # ---- judging ----------------------------------------------------------------------------------------------
    def season(self, data: PreparedPanel):
        return evaluation.resolve_season(self.cfg.evaluation.season, data.parts[0])

    def gate_key(self, data: PreparedPanel) -> str:
        return f"std_{self.cfg.gate_metric}"  # the series' units differ: always on each series' z-scores

    # ---- the model --------------------------------------------------------------------------------------------
    def bundle(self, model, data: PreparedPanel, params) -> PanelBundle:
        scalings = [p.scaling for p in data.parts]
        window = window_of(model) or int(params["window"])
        return PanelBundle(model, scalings[0], data.target_columns, data.feature_columns, window, data.horizon,
                           self.intervals(model, data, window), self.calendar_spec(data.parts[0].time, window),
                           id_column=data.id_column,
                           series_ids=list(data.series_ids), scalings=scalings)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, data: PreparedPanel, bundle: PanelBundle, season):
        ev = panel_eval.evaluate_panel(
            data, lambda k, x: bundle.predict_windows(x, np.full(len(x), k)), bundle.window, season,
            self.cfg.evaluation.ridge_alphas, self.ridge_windows(data.parts[0], bundle.window))
        series = data.points.series_of(ev["first_targets"])
        std = np.stack([evaluation.target_scaler(p).scale_ for p in data.parts])[series][:, None, :]
        q = None
        if bundle.quantile_levels:  # the network's own quantiles on the same windows
            first = ev["first_targets"]
            x = np.empty((len(first), bundle.window, len(bundle.input_columns)))
            for k in np.unique(series):  # each series' windows from its own rows
                at = np.flatnonzero(series == k)
                x[at] = lag_matrix(data.parts[k].values, first[at] - data.points.offsets[k], bundle.window)
            q = bundle.predict_windows(x, series, quantiles=True)
            ev["metrics"].update(intervals.quantile_metrics(ev["y_true"], q, std, bundle.quantile_levels))
        if bundle.levels:  # coverage and width pooled over every series' test windows, each in its own units
            ev["metrics"].update(intervals.interval_metrics(ev["y_true"], bundle.interval_bounds(ev["y_pred"], series, q),
                                                            std, bundle.levels))
        if self.cfg.gate_metric == "crps":
            crps_figures(ev)
        return ev

    # ---- backtesting ------------------------------------------------------------------------------------------
    def backtest(self, data: PreparedPanel, bundle: PanelBundle, season, ev: dict | None = None,
                 params: dict | None = None, device="cpu", origins: int | None = None, step: int | None = None,
                 refitted: dict | None = None):
        """Each series backtested from its own origins (counted back from its own end), each origin's windows pooled
        over the series on their z-scores; the Ridges per series as its evaluation chose them. A panel backtests
        its trained model (backtest.refit is single-series): `refitted` is always None here."""
        b = self.cfg.backtest
        self.check_bundle(bundle, data, inputs=True)
        n, step = origins or b.origins, step or b.step or data.horizon
        per, times = [], None
        for k, (sid, part) in enumerate(zip(data.series_ids, data.parts)):
            positions = self._origins(sid, part, bundle.window, n, step)
            ridge = (ev["per_series"][sid]["baseline_windows"] if ev
                     else self.chosen_ridge_windows(part, bundle.window, positions))
            per.append(backtest.series_forecasts(part, lambda x, k=k: bundle.predict_windows(x, np.full(len(x), k)),
                                                 bundle.window, positions, season, ridge,
                                                 self.cfg.evaluation.ridge_alphas))
            times = times or [str(part.time.iloc[p]) for p in positions]
        return backtest.summarise(backtest.pooled(per), times, step)

    @staticmethod
    def _origins(sid: str, part, window: int, n: int, step: int) -> np.ndarray:
        try:
            return backtest.origin_positions(part, window, n, step)
        except ConfigError as e:
            raise ConfigError(f"series {sid!r}: {e}") from None

    def check_backtest(self, data: PreparedPanel) -> None:
        b = self.cfg.backtest
        if b.origins:
            for sid, part in zip(data.series_ids, data.parts):
                self._origins(sid, part, self.cfg.features.window, b.origins, b.step or data.horizon)

    def backtest_score(self, model, data: PreparedPanel, key: str, origins: int, step: int | None = None) -> float:
        return self._pyfunc_score(model, data, key, lambda sid, part, window: self._origins(
            sid, part, window, origins, step or data.horizon))

    def log_evaluation(self, ev, data: PreparedPanel) -> None:
        log_common_metrics(ev)
        mlflow.log_params({"n_series": data.n_series,
                           **{f"baseline.{k}.window": ",".join(map(str, v)) for k, v in ev["baseline_windows"].items()}})
        mlflow.log_table(self.series_table(ev), "evaluation/per_series.json")

    @staticmethod
    def series_table(ev) -> pd.DataFrame:
        rows = []
        for sid, m in ev["per_series"].items():
            rows.append({"series": sid, "n_test_windows": m["n_test_windows"], "std_mse": m["std_mse"],
                         "mase": m["mase"], "rel_mase": m["rel_mase"], "smape": m.get("smape"), "mse": m["mse"],
                         "mae": m["mae"], **{f"{b}_std_mse": v for b, v in m["baselines_std_mse"].items()}})
        return pd.DataFrame(rows)

    def summary(self, ev, data: PreparedPanel):
        return {"n_series": ev["n_series"], "n_test_windows": ev["n_test_windows"], "per_series": ev["per_series"],
                "best_series": ev["best_series"], "worst_series": ev["worst_series"],
                "baseline_windows": ev["baseline_windows"]}

    def tag_scores(self, gate_key):
        return tuple(dict.fromkeys((gate_key, "mase", "rel_mase")))

    def artifacts(self, folder: Path, ev, data: PreparedPanel, bundle: PanelBundle, history, study, digest):
        index = ev["first_targets"]
        series = data.points.series_of(index)
        first = int(index[0]) - int(data.points.offsets[series[0]])
        example = bundle.windows_frame(lag_matrix(data.parts[series[0]].values, np.array([first]), bundle.window),
                                       [data.series_ids[series[0]]])
        predictions = self.series_table(ev)
        frames = [pd.DataFrame(p.values, columns=[*data.target_columns, *data.feature_columns])
                  .assign(**{self.cfg.data.time_column: p.time.to_numpy(), data.id_column: sid})
                  for sid, p in zip(data.series_ids, data.parts)]
        reference = write_reference(folder / "reference", pd.concat(frames, ignore_index=True), {
            "format": 1, "task": "panel", "id_column": data.id_column, "time_column": self.cfg.data.time_column,
            "columns": [*data.target_columns, *data.feature_columns], "n_targets": data.n_targets,
            "static_columns": list(self.cfg.data.static_columns), "window": int(bundle.window),
            "horizon": int(data.horizon), "n_series": data.n_series, "test_std_mse": float(ev["metrics"]["std_mse"]),
            "series_test_std_mse": {sid: float(m["std_mse"]) for sid, m in ev["per_series"].items()},
            "series_target_std": {sid: evaluation.target_scaler(p).scale_.tolist()
                                  for sid, p in zip(data.series_ids, data.parts)},
            "data_digest": digest})
        plots = []
        if self.cfg.evaluation.plots:  # the best and the worst series' last test window, with their intervals
            shown = list(dict.fromkeys([*ev["best_series"][:2], *ev["worst_series"][:2]]))
            charts = [self.window_chart(data.parts[data.series_ids.index(sid)], bundle,
                                        f"series {sid} (rel_mase {ev['per_series'][sid]['rel_mase']:.3f}): last test "
                                        f"window, {data.target_columns[0]}", data.series_ids.index(sid))
                      for sid in shown]
            plots = [evaluation.fan_charts(folder / "series_forecasts.png", charts, bundle.levels)]
        return Artifacts(plots, example, index, ev["y_pred"], predictions, reference)

    def summary_table(self, s: dict) -> str:
        lines = summary_head(s) + [
            f"{s['n_series']} series, {s['n_test_windows']} test windows; std_* on each series' training z-scores, "
            "pooled; mase: mean over the series; rel_mase: over persistence's; skill = 1 - std_mse / baseline's",
            f"{'model':<22}{'std_mse':>10}{'std_mae':>10}{'mase':>8}{'rel_mase':>10}{'skill':>8}"]
        looks = s.get("baseline_windows", {})
        rows = [("rnn", s["metrics"], None)] + [
            (k + (f" L={'/'.join(map(str, looks[k]))}" if looks.get(k) else ""), v, s["skill"][k])
            for k, v in s["baselines"].items()]
        for name, m, sk in rows:
            skill = "" if sk is None else f"{sk:+.3f}"
            lines.append(f"{name:<22}{m['std_mse']:>10.4f}{m['std_mae']:>10.4f}{m['mase']:>8.3f}{m['rel_mase']:>10.3f}"
                         f"{skill:>8}")
        per = s.get("per_series", {})

        def show(ids):
            return ", ".join(f"{i} ({per[i]['rel_mase']:.3f})" for i in ids)

        lines += interval_lines(s["metrics"])
        if s.get("backtest"):
            lines += backtest.table(s["backtest"], s["headline"]).splitlines()
        lines.append(f"best series (rel_mase): {show(s.get('best_series', []))}")
        lines.append(f"worst series (rel_mase): {show(s.get('worst_series', []))}")
        lines.append(f"wall time {s['wall_seconds']:.1f}s (tuning {s['timings']['tune']:.1f}s, final fit "
                     f"{s['timings']['final_fit']:.1f}s, training compute {s['timings']['training_compute']:.1f}s)")
        return "\n".join(lines)

    # ---- scoring a logged model -------------------------------------------------------------------------------
    data_noun = "a panel of series"

    def score(self, model, data: PreparedPanel, metric):
        return self._pyfunc_score(model, data, metric,
                                  lambda sid, part, window: part.points.first_targets("test", window, data.horizon))

    def _pyfunc_score(self, model, data: PreparedPanel, metric: str, positions_of) -> float:
        """`metric` (pooled z-scores) of a loaded pyfunc's forecasts, through its own predict, of each series'
        windows whose first targets `positions_of(series id, its PreparedSeries, the model's window)` gives."""
        b = self.check_bundle(self.logged_bundle(model, data), data, inputs=True)
        xs, ys, ids, series = [], [], [], []
        for k, (sid, part) in enumerate(zip(data.series_ids, data.parts)):
            idx = positions_of(sid, part, b.window)
            xs.append(lag_matrix(part.values, idx, b.window))
            ys.append(target_matrix(part.values, idx, data.horizon, data.n_targets))
            ids += [sid] * len(idx)
            series.append(np.full(len(idx), k))
        out = model.predict(b.windows_frame(np.concatenate(xs), ids, window_ids=True))
        y_pred = out[b.output_columns].to_numpy().reshape(len(ids), b.horizon, len(b.target_columns))
        return panel_eval.panel_score(np.concatenate(ys), y_pred, np.concatenate(series), data, metric,
                                      *answered_quantiles(b, out, metric))

    @staticmethod
    def _predict_by_window(model, b: PanelBundle, x: np.ndarray, ids: list[str]) -> np.ndarray:
        """Windows of any series through the pyfunc's own predict, in one call (numbered by `window_id`)."""
        got = model.predict(b.windows_frame(x, ids, window_ids=True))
        return got[b.output_columns].to_numpy().reshape(len(ids), b.horizon, len(b.target_columns))

    def predict_logged(self, model, bundle: PanelBundle, data: PreparedPanel, index):
        series = data.points.series_of(index)
        x = np.stack([lag_matrix(data.parts[k].values, np.array([p - data.points.offsets[k]]), bundle.window)[0]
                      for p, k in zip(index, series)])
        ids = [data.series_ids[k] for k in series]
        return self._predict_by_window(model, bundle, x, ids).reshape(len(index), -1)
