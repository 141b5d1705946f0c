"""Monitoring a panel model: batches of many series against the series it was trained on, series by series.

Each series' windows are described as a single series' are (rnn_pipeline.forecasting.monitoring: level, spread and
step of each column, and the next target value), on that series' own training z-scores, so that every series speaks
the same units. Two drift views come from that:

- **pooled**: Evidently's report over the batch's windows of every series against a sample of the reference's
  windows (the report the run keeps, and the drifted share of features);
- **per series**: each series' windows in the batch against its own reference windows, with Evidently's normed
  Wasserstein distance per feature. A series drifts when the share of its drifted features reaches
  monitoring.drift_share; the batch reports the share of series drifted.

The champion's error is judged on each series' z-scores (std MSE) against its own test figure, and pooled against
the pooled test figure. The verdict: degraded when the pooled error ratio reaches monitoring.error_ratio; drift when
the pooled drifted share or the share of series drifted reaches monitoring.drift_share. A retrain learns from every
series' history so far (the retrain policy applies per series) and the gate judges the global model on all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.errors import DataValidationError
from rnn_pipeline.forecasting import monitoring as single
from rnn_pipeline.monitoring import drift as monitor
from rnn_pipeline.monitoring.task import NothingToRetrain, Outcome, TaskMonitor, fmt, frames
from rnn_pipeline.panel.data import _in_series, series_groups

REFERENCE_FILE = "reference.parquet"
MAX_REFERENCE_ROWS = 50_000  # the pooled report's reference: a fixed sample of every series' windows beyond this
CALIBRATION_BLOCKS = 16  # 'auto' thresholds per series: blocks of its reference at the batch's size


def write_reference(folder: Path, frame: pd.DataFrame, meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / REFERENCE_FILE, index=False)
    (folder / monitor.REFERENCE_META).write_text(json.dumps(meta, indent=2))
    return folder


def normed_wasserstein(ref: np.ndarray, cur: np.ndarray) -> float:
    """Evidently's `wasserstein` score: the Wasserstein distance over the reference's standard deviation (the
    distance itself where the reference is constant)."""
    from scipy.stats import wasserstein_distance

    d = float(wasserstein_distance(ref, cur))
    sd = float(np.std(ref))
    return d / sd if sd > 0 else d


class PanelMonitor(TaskMonitor):
    """A batch is a long table of rows of any of the champion's series (id, time, columns), each series continuing
    its own history; the state is each series' history so far (the reference and every accepted batch)."""

    task = "panel"
    SCORE_COLUMNS = (("champ std mse", "champion_mse"), ("ratio", "error_ratio"))

    @staticmethod
    def score_text(row: dict) -> str:
        return "error ratio " + ("-" if row["error_ratio"] is None else f"{row['error_ratio']:.2f}")

    def __init__(self, reference, meta, features, bundle, version, series_features: dict[str, pd.DataFrame]):
        super().__init__(reference, meta, features, bundle, version)
        self.series_features = series_features  # each series' reference window features

    @property
    def columns(self) -> list[str]:
        return self.meta["columns"]

    @property
    def described(self) -> list[str]:
        """The columns whose windows are described: every column but the static covariates (constant per series)."""
        static = set(self.meta.get("static_columns", []))
        return [c for c in single.described_columns(self.columns, self.bundle) if c not in static]

    # ---- the reference ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: Path, cfg, bundle, version: str) -> PanelMonitor:
        meta = json.loads((folder / monitor.REFERENCE_META).read_text())
        ref = pd.read_parquet(folder / REFERENCE_FILE)
        idc, tcol = meta["id_column"], meta["time_column"]
        ref[idc] = ref[idc].astype(str)
        state = {sid: g[[tcol, *meta["columns"]]].reset_index(drop=True) for sid, g in ref.groupby(idc, sort=False)}
        self = cls(state, meta, pd.DataFrame(), bundle, version, {})
        self.series_features = {sid: self._features(sid, part[meta["columns"]].to_numpy())
                                for sid, part in state.items()}
        pooled = pd.concat(self.series_features.values(), ignore_index=True)
        if len(pooled) > MAX_REFERENCE_ROWS:
            pooled = pooled.sample(MAX_REFERENCE_ROWS, random_state=0).reset_index(drop=True)
        self.features = pooled
        return self

    def _z(self, sid: str, values: np.ndarray) -> np.ndarray:
        """A series' values on its own training z-scores (the bundle's scaling of that series)."""
        b = self.bundle
        k = int(b.series_index([sid])[0])
        cols = [b.input_columns.index(c) for c in self.columns]
        return (values - b._offsets[k, cols]) / b._scales[k, cols]

    def _features(self, sid: str, values: np.ndarray, start: int = 0) -> pd.DataFrame:
        keep = [self.columns.index(c) for c in self.described]
        n_t = len(self.bundle.target_columns)
        return single.window_features(self._z(sid, values)[:, keep], self.described, n_t, self.meta["window"],
                                      start=start)

    # ---- batches ----------------------------------------------------------------------------------------------
    def initial_state(self, accepted: list[dict]) -> dict[str, pd.DataFrame]:
        idc, tcol = self.meta["id_column"], self.meta["time_column"]
        state = dict(self.reference)
        for frame in frames(accepted):
            for sid, g in frame.assign(**{idc: frame[idc].astype(str)}).groupby(idc, sort=False):
                if sid in state:
                    state[sid] = single.stream(state[sid], [g.drop(columns=idc).reset_index(drop=True)], tcol)
        return state

    def read_batch(self, raw: pd.DataFrame, source: str, cfg, state: dict) -> pd.DataFrame:
        """Each series' rows validated as a single series' batch (numbers, times, continuing that series); an
        unknown series is an error naming it (a panel model forecasts the series it was trained on)."""
        idc, tcol = self.meta["id_column"], self.meta["time_column"]
        if raw.shape[0] == 0:
            raise DataValidationError("no data rows", source=source)
        parts = []
        for sid, rows in series_groups(raw, source, idc).items():
            if sid not in state:
                raise DataValidationError(
                    f"series {sid!r} is not one of the champion's {len(state)} series: a panel model forecasts the "
                    "series it was trained on (train with the new series in the data to add it)",
                    source=source, column=idc, row=int(rows[0]) + 1, value=sid)
            try:
                part = single.read_calendar_batch(raw.iloc[rows].reset_index(drop=True), source, tcol, self.columns,
                                                  cfg, state[sid][tcol].iloc[-1], self.bundle)
            except DataValidationError as e:
                raise _in_series(e, source, sid, rows) from None
            parts.append(part.assign(**{idc: sid}))
        out = pd.concat(parts, ignore_index=True)
        if len(out) < 2:  # each row gives a window (the series' history supplies the inputs): a drift check needs 2
            raise DataValidationError(f"the batch has {len(out)} row: a drift check needs at least 2", source=source)
        return out[[idc, tcol, *self.columns]]

    def judge(self, cfg, state: dict, batch: pd.DataFrame) -> Outcome:
        """Per series: its batch windows (its last reference window supplies the first ones) described and forecast;
        pooled: Evidently over every series' windows; the verdict from both and the pooled error."""
        idc, window, b = self.meta["id_column"], self.meta["window"], self.bundle
        x_cols = [self.columns.index(c) for c in b.input_columns]
        feats, per_true, per_pred, per_series, per_x = {}, {}, {}, {}, {}
        for sid, g in batch.groupby(idc, sort=False):
            tail = state[sid].iloc[-window:][self.columns].to_numpy()
            combined = np.concatenate([tail, g[self.columns].to_numpy()])
            feats[sid] = self._features(sid, combined, start=len(tail))
            k = int(b.series_index([sid])[0])
            per_true[sid], per_pred[sid], per_x[sid] = single.batch_errors(
                lambda x, k=k: b.predict_windows(x, np.full(len(x), k)), combined[:, x_cols], len(b.target_columns),
                b.window, b.horizon, start=len(tail), with_inputs=True)
            per_series[sid] = k
        return self._outcome(cfg, feats, per_true, per_pred, per_series, per_x)

    def _outcome(self, cfg, feats: dict[str, pd.DataFrame], per_true: dict, per_pred: dict,
                 per_series: dict[str, int], per_x: dict | None = None) -> Outcome:
        mc, b = cfg.monitoring, self.bundle
        current = pd.concat([f for f in feats.values() if len(f)], ignore_index=True) if feats else pd.DataFrame()
        if len(current) < 2:
            raise DataValidationError(f"the batch gives {len(current)} window(s) over its series; a drift check "
                                      "needs at least 2 (each series needs more rows than the champion's window "
                                      "of history to give a window)")
        drift = monitor.drift_report(self.features[list(current.columns)], current, mc.drift_method,
                                     mc.drift_threshold, mc.drift_calibration)
        series = {}
        for sid, f in feats.items():
            series[sid] = {"n_windows": int(len(f)), **self._series_drift(cfg, sid, f)}
        # each series' errors on its training z-scores, as its test figure was (the evaluation's target std; models
        # registered before it was recorded: the bundle's scale, the same with the standard scaler)
        stds = self.meta.get("series_target_std", {})
        t_scale = {sid: np.asarray(stds[sid])[None] if sid in stds else b.target_scale([k])[0]
                   for sid, k in per_series.items()}  # (1, T)
        ref = self.meta.get("series_test_std_mse", {})
        errs, trues, preds, ks, xs = [], [], [], [], []
        for sid, y in per_true.items():
            if len(y) == 0:
                continue
            e = ((y - per_pred[sid]) / t_scale[sid]) ** 2
            series.setdefault(sid, {"n_windows": 0, "drift_share": None, "drifted": None})
            series[sid]["n_scored"] = int(len(y))
            series[sid]["std_mse"] = float(e.mean())
            if ref.get(sid):
                series[sid]["error_ratio"] = float(e.mean() / ref[sid])
            errs.append(e)
            trues.append(y)
            preds.append(per_pred[sid])
            ks.append(np.full(len(y), per_series[sid]))
            if per_x is not None:
                xs.append(per_x[sid])
        n_scored = sum(len(e) for e in errs)
        champion = ratio = coverage = None
        if n_scored >= mc.min_windows:
            champion = float(np.concatenate(errs).mean())
            test = self.meta["test_std_mse"]
            ratio = champion / test if test > 0 else (float("inf") if champion > 0 else 1.0)
            coverage = single.coverage(b, np.concatenate(trues), np.concatenate(preds),
                                       np.concatenate(xs) if per_x is not None else None, np.concatenate(ks))
        judged = [s for s in series.values() if s.get("drifted") is not None]
        drifted = sum(bool(s["drifted"]) for s in judged)
        series_share = drifted / len(judged) if judged else 0.0
        verdict = monitor.verdict(max(drift.share, series_share), ratio, mc.drift_share, mc.error_ratio)
        out = Outcome(drift, n_scored, verdict, champion_mse=champion, error_ratio=ratio,
                      reference_mse=self.meta["test_std_mse"], coverage=coverage, series=series,
                      series_drift_share=series_share)
        few = [sid for sid, s in series.items() if s.get("drifted") is None]
        if few:
            out.warnings.append(f"{len(few)} series with fewer than {mc.min_windows} windows in the batch were not "
                                f"judged for drift on their own ({', '.join(few[:5])}{' ...' if len(few) > 5 else ''})")
        return out

    def _series_drift(self, cfg, sid: str, current: pd.DataFrame) -> dict:
        """One series' windows against its own reference windows: each feature's normed Wasserstein distance, with
        monitoring.drift_threshold, or ('auto') k x the largest distance of a block of the series' reference at this
        size from the whole of it. Too few windows (under monitoring.min_windows): not judged (drifted None)."""
        mc = cfg.monitoring
        if len(current) < max(2, mc.min_windows):
            return {"drift_share": None, "drifted": None}
        ref = self.series_features[sid]
        auto = mc.drift_threshold == "auto"
        n, size = len(ref), min(len(current), len(ref) // 2)
        starts = np.linspace(0, n - size, CALIBRATION_BLOCKS).astype(int) if auto and size >= 2 else []
        hits, worst = 0, {}
        for c in current.columns:
            r = ref[c].to_numpy()
            score = normed_wasserstein(r, current[c].to_numpy())
            if auto:
                thr = max(0.1, mc.drift_calibration * max((normed_wasserstein(r, r[s:s + size]) for s in starts),
                                                          default=0.0))
            else:
                thr = 0.1 if mc.drift_threshold is None else float(mc.drift_threshold)
            hits += score >= thr
            worst[c] = round(score, 4)
        share = hits / len(current.columns)
        top = sorted(worst, key=worst.get, reverse=True)[:3]
        return {"drift_share": share, "drifted": share >= mc.drift_share, "top_features": {c: worst[c] for c in top}}

    def accept(self, state: dict, raw, batch: pd.DataFrame, cfg):
        idc, tcol = self.meta["id_column"], self.meta["time_column"]
        state = dict(state)
        for sid, g in batch.groupby(idc, sort=False):
            state[sid] = pd.concat([state[sid], g.drop(columns=idc)], ignore_index=True)
        fields = {"n_rows": len(batch), "first_time": str(batch[tcol].min()), "last_time": str(batch[tcol].max())}
        return state, batch, fields

    # ---- the inference log ------------------------------------------------------------------------------------
    def judge_log(self, cfg, current: pd.DataFrame, labelled: pd.DataFrame) -> Outcome:
        """The logged windows of each series described on its z-scores (drift, pooled and per series), and the
        champion's live error per series: its logged forecasts against the posted actuals."""
        mc, b, window = cfg.monitoring, self.bundle, self.meta["window"]
        by_series: dict[str, list] = {}
        for text in current["inputs"]:
            d = json.loads(text)
            if d.get("series") in self.reference and d.get("columns") == self.columns and len(d["values"]) == window:
                by_series.setdefault(d["series"], []).append(d["values"])
        n = sum(len(v) for v in by_series.values())
        if n < mc.min_windows:
            raise DataValidationError(f"only {n} logged window(s) name one of the champion's series and read its "
                                      f"columns {self.columns} over {window} steps; monitoring needs at least "
                                      f"{mc.min_windows}")
        keep = [self.columns.index(c) for c in self.described]
        feats = {}
        for sid, xs in by_series.items():
            x = np.asarray(xs, dtype="float64")
            z = self._z(sid, x.reshape(-1, len(self.columns))).reshape(x.shape)[:, :, keep]
            feats[sid] = single.window_stats(z, self.described)
        per_true, per_pred, per_series = {}, {}, {}
        if len(labelled):
            sids = [json.loads(t).get("series") for t in labelled["inputs"]]
            y_true, y_pred = single.forecast_errors(labelled, b.target_columns)
            for sid in dict.fromkeys(s for s in sids if s in self.reference):
                rows = [i for i, s in enumerate(sids) if s == sid]
                per_true[sid], per_pred[sid] = y_true[rows], y_pred[rows]
        per_series = {sid: int(b.series_index([sid])[0]) for sid in dict.fromkeys([*feats, *per_true])}
        return self._outcome(cfg, feats, per_true, per_pred, per_series)

    def log_frame(self, answered, cfg) -> None:
        return None  # forecasts and their actuals are not a series

    # ---- retraining -------------------------------------------------------------------------------------------
    def retrain_data(self, cfg, state: dict, accepted) -> pd.DataFrame:
        """Every series' history so far, as a long table (the retrain policy's window applies per series)."""
        idc = self.meta["id_column"]
        if sum(len(v) for v in state.values()) <= sum(len(v) for v in self.reference.values()):
            raise NothingToRetrain("retrain skipped (no new series data)", "no batch of the series since the champion",
                                   f"no new data of the series has arrived since champion v{self.version} was trained "
                                   "(forecasts and actuals in the log are not a series): nothing new to retrain on")
        r = cfg.monitoring.retrain
        parts = [single.retrain_window(part, r.policy, r.recent_points).assign(**{idc: sid})
                 for sid, part in state.items()]
        out = pd.concat(parts, ignore_index=True)
        return out[[idc, *[c for c in out.columns if c != idc]]]

    @staticmethod
    def retrain_config(data_path: Path) -> dict:
        return single.ForecastingMonitor.retrain_config(data_path)

    def describe(self, outcome: Outcome) -> str:
        series = outcome.series or {}
        judged = [s for s in series.values() if s.get("drifted") is not None]
        drifted = [sid for sid, s in series.items() if s.get("drifted")]
        covered = "".join(f", {k}% interval covers {100 * v:.1f}%" for k, v in (outcome.coverage or {}).items())
        names = f" ({', '.join(drifted[:5])}{' ...' if len(drifted) > 5 else ''})" if drifted else ""
        return (f"drifted share {outcome.drift.share:.2f}, {len(drifted)} of {len(judged)} series drifted{names}, "
                f"champion v{self.version} std MSE {fmt(outcome.champion_mse)}, error ratio "
                f"{fmt(outcome.error_ratio)}{covered}")
