"""`make bench`: forecast accuracy on real hourly series, beside the naive and linear baselines, and the epoch time
of the segment model.

Accuracy: each series that installed packages ship as files (pvlib's TMY weather files: Greensboro, Miami, Sand
Point), target-only (`temp_air`) and all channels, at H = 24 and H = 96, goes through the training flow exactly as
a user's config would (`rnn-pipeline train`): the data, a chronological 70/15/15 split, L, H and `n_trials`, the
default search space (L tuned around the configured window), for several seeds. Figures are standardised MSE and
MAE (each target's errors over its training std) on the test windows, mean +- std over the seeds, beside
persistence, the seasonal naive (24 h), Ridge on the lags and Ridge with last-value normalisation (NLinear-style),
all fitted on the training split only and scored on the same windows.

Speed: one epoch over 8,500 windows at L = 336, H = 96 on one thread, for the segment model at a few widths and a
direct GRU-32 for reference (medians of several epochs).

Usage: python benchmarks/forecasting.py [--datasets a,b] [--modes target,all] [--horizons 24,96] [--seeds 0,1,2]
       [--trials 20] [--window 96] [--trial-epochs 60] [--trial-seconds S] [--ensemble K] [--ensemble-trials N]
       [--final-seconds S] [--keep DIR] [--skip-speed] [--skip-accuracy]
       python benchmarks/forecasting.py --report a.json b.json ...   (one table from runs made apart)
Results are printed as a table and written to .rnn_pipeline/bench_forecasting.json (rows as they finish too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASELINES = ("persistence", "seasonal_naive", "ridge", "ridge_last")
TARGET = "temp_air"


def config_text(dataset: str, mode: str, horizon: int, window: int, seed: int, trials: int, trial_epochs: int,
                root: Path, trial_seconds: float | None = None, ensemble: int = 1,
                ensemble_trials: int | None = None, final_seconds: float | None = None) -> str:
    """What a user writes: the data, the split, L, H and n_trials; the rest is the pipeline's defaults."""
    from rnn_pipeline.data import datasets

    columns = [c for c in datasets.BUILTINS[dataset]().columns if c != "time"]
    targets = [TARGET] if mode == "target" else columns
    return (f"name: bench-{dataset}-{mode}-h{horizon}-s{seed}\nseed: {seed}\n"
            f"data: {{builtin: {dataset}, time_column: time, target_columns: {json.dumps(targets)}}}\n"
            f"features: {{window: {window}, horizon: {horizon}}}\n"
            f"split: {{val: 0.15, test: 0.15}}\n"
            f"tuning: {{n_trials: {trials}, max_epochs: {trial_epochs}"
            + (f", trial_seconds: {trial_seconds}" if trial_seconds else "") + "}\n"
            + (f"training: {{ensemble: {ensemble}"
               + (f", ensemble_trials: {ensemble_trials}" if ensemble_trials else "")
               + (f", max_seconds: {final_seconds}" if final_seconds else "") + "}\n")
            + f"stores: {{root: '{root}'}}\n")


def run_one(dataset, mode, horizon, window, seed, trials, trial_epochs, work: Path, trial_seconds=None,
            ensemble: int = 1, ensemble_trials: int | None = None, final_seconds: float | None = None) -> dict:
    from flows.training import training_flow

    root = work / f"{dataset}-{mode}-h{horizon}-s{seed}"
    cfg = work / f"{root.name}.yaml"
    cfg.write_text(config_text(dataset, mode, horizon, window, seed, trials, trial_epochs, root, trial_seconds,
                               ensemble, ensemble_trials, final_seconds))
    t0 = time.perf_counter()
    s = training_flow(str(cfg))
    row = {"dataset": dataset, "mode": mode, "horizon": horizon, "seed": seed, "wall_seconds": time.perf_counter() - t0,
           "training_compute_seconds": s["timings"]["training_compute"], "best_params": s["best_params"],
           "promoted": s["promoted"], "reason": s["reason"],
           "ensemble": [{"weight": m["weight"], "val_loss": m["val_loss"], **{k: m["params"].get(k) for k in
                         ("architecture", "norm", "channels", "highway", "window", "hidden")}}
                        for m in s["final_fit"].get("ensemble", [])],
           "rnn": {k: s["metrics"][f"std_{k}"] for k in ("mse", "mae")},
           "baseline_windows": s.get("baseline_windows", {})}
    for name in BASELINES:
        if name in s["baselines"]:
            row[name] = {k: s["baselines"][name][f"std_{k}"] for k in ("mse", "mae")}
    return row


def aggregate(rows: list[dict]) -> list[dict]:
    """Rows (one run each) -> one entry per series, targets and H: means and spreads over the seeds, the Ridges'
    look-backs, and each seed's MSE against the best baseline's."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["mode"], r["horizon"]), []).append(r)
    out = []
    for (dataset, mode, horizon), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        entry = {"dataset": dataset, "mode": mode, "horizon": horizon, "seeds": len(rs),
                 "seed_list": [r["seed"] for r in rs]}
        for model in ("rnn", *BASELINES):
            for k in ("mse", "mae"):
                vals = [r[model][k] for r in rs if model in r]
                if vals:
                    entry[f"{model}_{k}"] = statistics.fmean(vals)
                    entry[f"{model}_{k}_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        best_baseline = min(entry[f"{b}_mse"] for b in BASELINES if f"{b}_mse" in entry)
        entry["beats_every_baseline"] = entry["rnn_mse"] < best_baseline
        entry["vs_best_baseline"] = entry["rnn_mse"] / best_baseline - 1
        entry["per_seed_vs_best_baseline"] = [r["rnn"]["mse"] / best_baseline - 1 for r in rs]
        entry["baseline_windows"] = {name: sorted({r.get("baseline_windows", {}).get(name) for r in rs} - {None})
                                     for name in ("ridge", "ridge_last")}
        entry["training_compute_seconds"] = statistics.fmean(r["training_compute_seconds"] for r in rs)
        out.append(entry)
    return sorted(out, key=lambda e: (e["horizon"], e["mode"], e["dataset"]))


def table(summary: list[dict]) -> str:
    """The README's table: standardised test MSE (mean ± std over the seeds, bold where below every baseline), MAE,
    the baselines' means (the Ridges' look-backs chosen on validation in brackets), and each seed's MSE against the
    best baseline's."""
    head = ("| series | targets | H | seeds | RNN MSE (mean ± std) | RNN MAE | " + " | ".join(
        f"{b.replace('_', ' ') if b == 'seasonal_naive' else b}{' (L)' if b.startswith('ridge') else ''}"
        for b in BASELINES) + " | below every baseline? | per seed vs best baseline | compute s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def base(e: dict, b: str) -> str:
        if f"{b}_mse" not in e:
            return "-"
        windows = e.get("baseline_windows", {}).get(b)
        return f"{e[f'{b}_mse']:.4f}" + (f" ({', '.join(map(str, windows))})" if windows else "")

    for e in summary:
        win = e["beats_every_baseline"]
        mse = f"{e['rnn_mse']:.4f} ± {e['rnn_mse_std']:.4f}"
        seeds = ",".join(map(str, e.get("seed_list", []))) or "?"
        per_seed = ", ".join(f"{100 * v:+.1f}%" for v in e.get("per_seed_vs_best_baseline", []))
        lines.append(f"| {e['dataset']} | {e['mode']} | {e['horizon']} | {e['seeds']} ({seeds}) | "
                     + (f"**{mse}**" if win else mse) + f" | {e['rnn_mae']:.4f} | "
                     + " | ".join(base(e, b) for b in BASELINES) + " | "
                     + ("**yes**" if win else "NO") + f" ({100 * e.get('vs_best_baseline', 0):+.1f}%) | {per_seed} | "
                     f"{e['training_compute_seconds']:.0f} |")
    return "\n".join(lines)


def epoch_seconds(n_windows: int = 8500, window: int = 336, horizon: int = 96, epochs: int = 3) -> list[dict]:
    """Median seconds of one training epoch (batch 32, one thread) over `n_windows` windows."""
    import numpy as np
    import pandas as pd

    from rnn_pipeline.forecasting.windows import prepare_series
    from rnn_pipeline.models import ForecasterSpec
    from rnn_pipeline.train import fit, setup_torch

    setup_torch(1, 0)
    n_train = n_windows + window + horizon - 1
    n = int(n_train / 0.7) + 1
    t = np.arange(n)
    rng = np.random.default_rng(0)
    y = np.sin(2 * np.pi * t / 24) + np.cumsum(rng.standard_normal(n)) * 0.05
    data = prepare_series(pd.Series(t), pd.DataFrame({"y": y}), "synthetic", ["y"], [], window=window,
                          max_window=window, horizon=horizon, scaler="standard", val=0.15, test=0.15,
                          val_start=n_train)
    train = data.windows("train", window)
    val = data.windows("val", window)
    assert len(train) == n_windows, len(train)
    out = []
    for name, kw in (("segment GRU-64, W=24, revin", dict(architecture="segment", hidden=64, norm="revin")),
                     ("segment GRU-128, W=24, revin", dict(architecture="segment", hidden=128, norm="revin")),
                     ("segment GRU-256, W=24, revin", dict(architecture="segment", hidden=256, norm="revin")),
                     ("direct GRU-32 (today's model)", dict(architecture="direct", hidden=32, norm="none"))):
        spec = ForecasterSpec(cell="gru", layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=horizon, segment=24,
                         window=window, **kw)
        n_ep = 1 if kw["architecture"] == "direct" else epochs
        res = fit(spec, train, val, lr=1e-3, batch_size=32, max_epochs=n_ep, patience=n_ep, seed=0)
        secs = [h["seconds"] for h in res.history]
        out.append({"model": name, "epoch_seconds": statistics.median(secs), "epochs_timed": len(secs),
                    "windows": n_windows, "window": window, "horizon": horizon})
        print(f"  {name}: {statistics.median(secs):.2f} s/epoch", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="greensboro_weather,miami_weather,sand_point_weather")
    ap.add_argument("--modes", default="target,all")
    ap.add_argument("--horizons", default="24,96")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--trial-epochs", type=int, default=60)
    ap.add_argument("--trial-seconds", type=float, default=None, help="tuning.trial_seconds (default: the config's)")
    ap.add_argument("--ensemble", type=int, default=1, help="training.ensemble (default 1: the pipeline's default)")
    ap.add_argument("--ensemble-trials", type=int, default=None,
                    help="training.ensemble_trials (default: the pipeline's, 3)")
    ap.add_argument("--final-seconds", type=float, default=None,
                    help="training.max_seconds, per final fit (default: the pipeline's, 1800)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--out", default=str(REPO / ".rnn_pipeline" / "bench_forecasting.json"))
    ap.add_argument("--report", nargs="+", default=None, metavar="JSON",
                    help="run nothing: print the table of the rows in these result files (runs made apart, e.g. "
                         "one per process, reported together)")
    ap.add_argument("--keep", default=None,
                    help="keep each run's stores (MLflow, models, last_run.json) under this folder to inspect them "
                         "(default: a temporary folder, removed at the end)")
    args = ap.parse_args()
    if args.report:
        rows = [row for f in args.report for row in json.loads(Path(f).read_text()).get("rows", [])]
        if not rows:
            sys.exit("no rows in " + ", ".join(args.report))
        print(table(aggregate(rows)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"args": vars(args)}
    if not args.skip_speed:
        print("[bench] epoch time, 8,500 windows at L=336, H=96, one thread", flush=True)
        result["epoch_time"] = epoch_seconds()
        out.write_text(json.dumps(result, indent=2, default=str))
    if not args.skip_accuracy:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        rows: list[dict] = []
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
        with (contextlib.nullcontext(args.keep) if args.keep
              else tempfile.TemporaryDirectory(prefix="rnnp-bench-")) as tmp:
            for dataset in args.datasets.split(","):
                for mode in args.modes.split(","):
                    for horizon in map(int, args.horizons.split(",")):
                        for seed in map(int, args.seeds.split(",")):
                            print(f"[bench] {dataset} {mode} H={horizon} seed {seed} ...", flush=True)
                            row = run_one(dataset, mode, horizon, args.window, seed, args.trials,
                                          args.trial_epochs, Path(tmp), args.trial_seconds, args.ensemble,
                                          args.ensemble_trials, args.final_seconds)
                            rows.append(row)
                            print(f"  rnn {row['rnn']['mse']:.4f}  " + "  ".join(
                                f"{b} {row[b]['mse']:.4f}" for b in BASELINES if b in row)
                                + f"  ({row['training_compute_seconds']:.0f}s training)", flush=True)
                            result["rows"] = rows
                            result["summary"] = aggregate(rows)
                            out.write_text(json.dumps(result, indent=2, default=str))
        print("\n" + table(result["summary"]))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
