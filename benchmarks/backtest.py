"""The cost of a rolling-origin backtest beside one evaluation, on the seed task (issue 15's target: a backtest of 5
origins without refits takes at most 1.5x one evaluation plus the fits it needs: none without refits).

One model of the seed config's default shape is fitted (briefly: the timing of a forecast does not depend on how
well the model learned), then the training flow's evaluation (the RNN and every baseline on the test windows, the
Ridges' look-backs chosen on validation) and its backtest (every model from 5 origins, the Ridges at the look-backs
the evaluation chose) are timed, each the median of `--repeats` runs, in one process and one torch thread.

    python benchmarks/backtest.py [--origins 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--origins", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    import torch

    from rnn_pipeline import tasks, tune
    from rnn_pipeline.config import load_config
    from rnn_pipeline.data import datasets

    torch.set_num_threads(1)
    cfg = load_config("seed_sine", {"training": {"max_epochs": args.epochs, "ensemble_trials": 1},
                                    "backtest": {"origins": args.origins}})
    t = tasks.for_config(cfg)
    data = t.prepare(t.read(datasets.seed_sine(), "seed_sine"), "seed_sine")
    params = tune.default_params(cfg)
    torch.manual_seed(0)
    fit = tune.fit_final([params], data, cfg, device="cpu")
    bundle = t.bundle(fit.model, data, params)
    season = t.season(data)

    def timed(f):
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = f()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    evaluate_s, ev = timed(lambda: t.evaluate(data, bundle, season))
    backtest_s, bt = timed(lambda: t.backtest(data, bundle, season, ev, params, "cpu", origins=args.origins))
    out = {"origins": args.origins, "refit": 0, "evaluate_seconds": round(evaluate_s, 3),
           "backtest_seconds": round(backtest_s, 3), "ratio": round(backtest_s / evaluate_s, 3), "target_ratio": 1.5,
           "test_windows": int(len(ev["first_targets"]))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
