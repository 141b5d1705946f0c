"""`make bench`: panels at scale, on a synthetic panel of 10,000 series x 1,000 steps (10M points; see
datasets.synthetic_panel): reading and preparing it as the training flow does (validation per series, the split and
scaling per series; time and peak RSS, each phase in its own process so that its peak is its own), one training
epoch of a 64-unit GRU over windows capped per series, and predicting every series in one batch as predict-batch
does between reading its input and writing its output (windows per series, chunks, forecasts with intervals).

Accuracy on the real panel (`--accuracy --seeds 0,1,2`): the built-in `weather_panel` config (three pvlib TMY
stations, air temperature 24 h ahead) through the training flow, one run per seed, the global RNN's aggregate
figures beside each station's own persistence, seasonal naive and Ridges, and the intervals' test coverage. Runs
made apart (one process per seed) print one table with `--report a.json b.json ...`.

Usage: python benchmarks/panel.py [--series 10000] [--steps 1000] [--window 48] [--horizon 24] [--cap 8]
       python benchmarks/panel.py --accuracy [--seeds 0,1,2] [--out FILE]
       python benchmarks/panel.py --report a.json b.json ...
Results are printed and written to .rnn_pipeline/bench_panel.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def config(path: Path, window: int, horizon: int, cap: int):
    from rnn_pipeline.config import PipelineConfig

    return PipelineConfig(name="bench_panel", data={"path": str(path), "id_column": "series", "time_column": "time",
                                                    "target_columns": ["value"]},
                          features={"window": window, "horizon": horizon, "max_windows_per_series": cap},
                          split={"val": 0.15, "test": 0.15}, tuning={"n_trials": 0},
                          model={"architecture": "segment", "norm": "revin", "cell": "gru", "hidden": 64,
                                 "segment": 12},
                          training={"max_epochs": 1, "ensemble_trials": 1, "batch_size": 256, "threads": 1})


def phase(name: str, path: Path, window: int, horizon: int, cap: int) -> dict:
    """One phase in this process (run by main in a child process): its seconds and the process's peak RSS."""
    import numpy as np

    from rnn_pipeline import tasks, tune
    from rnn_pipeline.data.datasets import read_table
    from rnn_pipeline.train import setup_torch

    cfg = config(path, window, horizon, cap)
    setup_torch(1, 0)
    t = tasks.for_config(cfg)
    out = {}
    t0 = time.perf_counter()
    frame = read_table(path)
    data = t.prepare(t.read(frame, str(path)), str(path))
    out["prepare_seconds"] = time.perf_counter() - t0
    out["series"], out["points"] = data.n_series, int(data.z.shape[0])
    out["train_windows"] = len(data.points.first_targets("train", window, horizon))
    if name in ("epoch", "predict"):
        params = tune.default_params(cfg)
        t0 = time.perf_counter()
        fit = tune.fit_final([params], data, cfg, device="cpu")
        out["epoch_seconds"] = fit.history[0]["seconds"]
        out["fit_seconds"] = time.perf_counter() - t0
        bundle = t.bundle(fit.model, data, params)
        if name == "predict":
            del data
            from rnn_pipeline.serving import batch

            last = frame.groupby("series", sort=False).tail(window)
            t0 = time.perf_counter()  # what predict-batch does between reading the file and writing the output
            ids, inputs = batch.model_inputs(bundle, last, "panel")
            got, _ = batch.score(bundle, ids, inputs)
            out["predict_seconds"] = time.perf_counter() - t0
            out["predicted_series"], out["output_columns"] = len(got), got.shape[1]
            assert np.isfinite(got.filter(like="_h").to_numpy()).all()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def accuracy(seed: int, work: Path, calendar: list[str] | None = None, quantiles: list[float] | None = None,
             embedding: int = 0) -> dict:
    """The weather_panel config through the training flow with `seed` (and `calendar`: features.calendar;
    `quantiles`: model.quantiles; `embedding`: model.series_embedding): the run's aggregate figures."""
    from flows.training import training_flow

    overrides = {"seed": seed, "stores": {"root": str(work / f"s{seed}")}}
    if calendar:
        overrides["features"] = {"calendar": calendar}
    if quantiles or embedding:
        overrides["model"] = {"quantiles": quantiles or [], "series_embedding": embedding}
    s = training_flow("weather_panel", overrides=overrides)
    keys = ("std_mse", "std_mae", "mase", "rel_mase")
    return {"seed": seed, "rnn": {k: s["metrics"][k] for k in keys},
            "intervals": {k: v for k, v in s["metrics"].items()
                          if k.startswith(("coverage_", "std_width_", "qcoverage_", "below_q", "std_crps"))},
            "baselines": {b: {k: m[k] for k in keys} for b, m in s["baselines"].items()},
            "per_series_rel_mase": {sid: m["rel_mase"] for sid, m in s["per_series"].items()},
            "promoted": s["promoted"], "reason": s["reason"],
            "training_compute_seconds": s["timings"]["training_compute"], "wall_seconds": s["wall_seconds"]}


def report(rows: list[dict]) -> str:
    """One table: the RNN's mean +- std over the seeds beside the baselines' means, and the intervals' coverage."""
    import statistics

    def ms(vals):
        return f"{statistics.fmean(vals):.4f} ± {statistics.pstdev(vals):.4f}" if len(vals) > 1 else f"{vals[0]:.4f}"

    seeds = ",".join(str(r["seed"]) for r in rows)
    lines = [f"weather_panel, seeds {seeds}: aggregate over the three stations (std_mse pooled on each station's "
             "z-scores; rel_mase: mean MASE over persistence's)",
             "| model | std_mse | std_mae | rel_mase |", "|---|---|---|---|"]
    lines.append("| global RNN | " + " | ".join(ms([r["rnn"][k] for r in rows]) for k in ("std_mse", "std_mae",
                                                                                           "rel_mase")) + " |")
    for b in rows[0]["baselines"]:
        lines.append(f"| {b} (per station) | " + " | ".join(
            f"{statistics.fmean(r['baselines'][b][k] for r in rows):.4f}" for k in ("std_mse", "std_mae", "rel_mase"))
            + " |")
    cov = sorted(k for k in rows[0]["intervals"] if k.startswith("coverage_"))
    lines.append("intervals on the test windows: " + ", ".join(
        f"{k[9:]}% covers {ms([100 * r['intervals'][k] for r in rows])}%" for k in cov))
    qcov = sorted(k for k in rows[0]["intervals"] if k.startswith("qcoverage_"))
    if qcov:
        lines.append("the quantile model's bands on the test windows: " + ", ".join(
            f"{k[10:]}% covers {ms([100 * r['intervals'][k] for r in rows])}%" for k in qcov)
            + f"; CRPS {ms([r['intervals']['std_crps'] for r in rows])} std")
    lines.append("per station rel_mase (mean over seeds): " + ", ".join(
        f"{sid} {statistics.fmean(r['per_series_rel_mase'][sid] for r in rows):.3f}"
        for sid in rows[0]["per_series_rel_mase"]))
    lines.append(f"training compute per run: {statistics.fmean(r['training_compute_seconds'] for r in rows):.0f} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--cap", type=int, default=8, help="training windows per series")
    ap.add_argument("--accuracy", action="store_true", help="the real panel through the training flow")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--calendar", help="--accuracy with features.calendar, e.g. hour or hour,dayofweek")
    ap.add_argument("--quantiles", help="--accuracy with model.quantiles, e.g. 0.025,0.1,0.9,0.975")
    ap.add_argument("--embedding", type=int, default=0, help="--accuracy with model.series_embedding")
    ap.add_argument("--out", help="write the results here")
    ap.add_argument("--report", nargs="+", help="print one table from --accuracy result files")
    ap.add_argument("--phase", choices=["prepare", "epoch", "predict"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        print(report([row for f in args.report for row in json.loads(Path(f).read_text())]))
        return
    if args.accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            cal = args.calendar.split(",") if args.calendar else None
            qs = [float(q) for q in args.quantiles.split(",")] if args.quantiles else None
            rows = [accuracy(int(seed), Path(tmp), cal, qs, args.embedding) for seed in args.seeds.split(",")]
        out = Path(args.out) if args.out else REPO / ".rnn_pipeline" / "bench_panel_accuracy.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
        print(report(rows))
        print(f"written to {out}")
        return
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.path), args.window, args.horizon, args.cap)))
        return
    from rnn_pipeline.data.datasets import synthetic_panel

    results = {"series": args.series, "steps": args.steps, "window": args.window, "horizon": args.horizon,
               "cap": args.cap}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "panel.parquet"
        t0 = time.perf_counter()
        synthetic_panel(args.series, args.steps, seed=0).to_parquet(path, index=False)
        results["generate_seconds"] = time.perf_counter() - t0
        for name in ("prepare", "predict"):
            cmd = [sys.executable, __file__, "--phase", name, "--path", str(path), "--window", str(args.window),
                   "--horizon", str(args.horizon), "--cap", str(args.cap)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"phase {name} failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {results[name]}", flush=True)
    out = REPO / ".rnn_pipeline" / "bench_panel.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
