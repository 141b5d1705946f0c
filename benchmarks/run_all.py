"""`make bench`: the figures issue #2 asks for, measured on this machine.

1. The seed task end to end (`rnn-pipeline train --config seed_sine` in a fresh state folder): process wall time,
   the champion's test MSE against Ridge and persistence, and how the wall time splits between training and the
   Prefect/MLflow/start-up overhead.
2. Epoch time of the pipeline's training loop vs a bare PyTorch loop on the seed's own model (SimpleRNN-32 relu,
   batch 32, the same windows), interleaved, medians.
3. Peak memory of preprocessing a 10-million-point series with L = 168 (in a fresh process).

Results are printed and written to .rnn_pipeline/bench.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seed_end_to_end() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "seed.yaml"
        from rnn_pipeline.config import load_config

        base = (REPO / "rnn_pipeline" / "configs" / "seed_sine.yaml").read_text()
        cfg.write_text(base + f"\nstores: {{root: '{Path(tmp) / 'state'}'}}\n")
        load_config(cfg)  # fail fast on a broken config
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect")}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(cfg)], cwd=tmp, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(f"seed run failed:\n{out.stderr[-3000:]}")
        s = json.loads((Path(tmp) / "state" / "last_run.json").read_text())
    t = s["timings"]
    return {
        "process_wall_seconds": round(wall, 1), "flow_wall_seconds": round(s["wall_seconds"], 1),
        "training_compute_seconds": round(t["training_compute"], 1),
        "overhead_seconds": round(wall - t["training_compute"], 1),
        "overhead_share": round(1 - t["training_compute"] / wall, 3),
        "test_mse": s["metrics"]["mse"], "ridge_mse": s["baselines"]["ridge"]["mse"],
        "persistence_mse": s["baselines"]["persistence"]["mse"], "n_trials": s["n_trials"], "n_pruned": s["n_pruned"],
        "best_params": s["best_params"], "target_mse_met": s["metrics"]["mse"] <= 0.0100,
        "training_target_met": t["training_compute"] <= 75,
        "beats_ridge": s["metrics"]["mse"] < s["baselines"]["ridge"]["mse"],
    }


def epoch_time(epochs: int = 40) -> dict:
    import numpy as np
    import torch

    from rnn_pipeline.data import datasets
    from rnn_pipeline.data.validation import validate_series
    from rnn_pipeline.forecasting.windows import prepare_series
    from rnn_pipeline.models import ForecasterSpec
    from rnn_pipeline.train import fit, setup_torch

    setup_torch(1, 0)
    t, v = validate_series(datasets.seed_sine(), "s", "time", ["value"], [], "error")
    data = prepare_series(t, v, "s", ["value"], [], window=50, max_window=50, horizon=1, scaler="standard",
                          val=0.15, test=0.2)
    train, val = data.windows("train", 50), data.windows("val", 50)
    spec = ForecasterSpec(cell="rnn_relu", hidden=32, layers=1, dropout=0.0, n_features=1, n_targets=1, horizon=1)

    # the bare loop: pre-built tensors, Adam, MSE, the same validation pass per epoch
    xtr, ytr = train.batch()
    xva, yva = val.batch()
    xtr, ytr, xva, yva = (a.contiguous() for a in (xtr, ytr, xva, yva))

    def bare(n_epochs: int) -> list[float]:
        torch.manual_seed(0)
        rnn = torch.nn.RNN(1, 32, nonlinearity="relu", batch_first=True)
        head = torch.nn.Linear(32, 1)
        params = list(rnn.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)
        times = []
        for _ in range(n_epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(len(xtr))
            for i in range(0, len(perm), 32):
                b = perm[i:i + 32]
                loss = torch.nn.functional.mse_loss(head(rnn(xtr[b])[0][:, -1]), ytr[b][:, 0])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                torch.nn.functional.mse_loss(head(rnn(xva)[0][:, -1]), yva[:, 0]).item()
            times.append(time.perf_counter() - t0)
        return times

    def pipeline(n_epochs: int) -> list[float]:
        res = fit(spec, train, val, lr=1e-3, batch_size=32, max_epochs=n_epochs, patience=10 ** 6,
                  clip_grad_norm=None, loss_steps="last")
        return [h["seconds"] for h in res.history]

    bare(3), pipeline(3)  # warm up
    b, p = [], []
    for _ in range(4):  # interleave so that machine noise hits both alike
        b += bare(epochs // 4)
        p += pipeline(epochs // 4)
    mb, mp = float(np.median(b)), float(np.median(p))
    # the pipeline's default also clips gradients; report that cost separately
    clipped = fit(spec, train, val, lr=1e-3, batch_size=32, max_epochs=epochs // 2, patience=10 ** 6)
    mc = float(np.median([h["seconds"] for h in clipped.history]))
    return {"bare_epoch_ms": round(mb * 1000, 2), "pipeline_epoch_ms": round(mp * 1000, 2),
            "ratio": round(mp / mb, 3), "pipeline_with_clipping_epoch_ms": round(mc * 1000, 2),
            "ratio_with_clipping": round(mc / mb, 3), "train_windows": len(train), "epochs_each": len(b)}


MEMORY_SCRIPT = r"""
import json, resource, sys, time
import numpy as np, pandas as pd
from rnn_pipeline.forecasting.windows import prepare_series
from rnn_pipeline.data.validation import validate_series
import torch
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = 10_000_000
rng = np.random.default_rng(0)
t = np.arange(n)
frame = pd.DataFrame({"time": t, "value": np.sin(0.01 * t) + 0.1 * rng.standard_normal(n)})
after_data = rss_mb()
t0 = time.perf_counter()
time_col, values = validate_series(frame, "bench", "time", ["value"], [], "error")
data = prepare_series(time_col, values, "bench", ["value"], [], window=168, max_window=168, horizon=1,
                      scaler="standard", val=0.1, test=0.1)
w = data.windows("train", 168)
x, y = w.batch(torch.arange(0, 256))
secs = time.perf_counter() - t0
print(json.dumps({"points": n, "window": 168, "train_windows": len(w), "peak_rss_mb": round(rss_mb(), 1),
                  "rss_after_building_the_frame_mb": round(after_data, 1),
                  "preprocessing_increment_mb": round(rss_mb() - after_data, 1),
                  "materialised_windows_would_be_mb": round(len(w) * 168 * 4 / 2**20, 1),
                  "seconds": round(secs, 2)}))
"""


def preprocessing_memory() -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {}
    for name, fn in (("epoch_time", epoch_time), ("preprocessing_memory", preprocessing_memory),
                     ("seed_end_to_end", seed_end_to_end)):
        print(f"[bench] {name} ...", flush=True)
        results[name] = fn()
        print(json.dumps(results[name], indent=2), flush=True)
    out = REPO / ".rnn_pipeline" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    e, m, s = results["epoch_time"], results["preprocessing_memory"], results["seed_end_to_end"]
    print("\n== summary ==")
    print(f"seed task: test MSE {s['test_mse']:.5f} (target <= 0.0100: {'met' if s['target_mse_met'] else 'MISSED'}), "
          f"ridge {s['ridge_mse']:.5f}, persistence {s['persistence_mse']:.5f}; {s['n_trials']} trials")
    print(f"make-run equivalent: {s['process_wall_seconds']}s wall, of which training {s['training_compute_seconds']}s "
          f"(target <= 75 s: {'met' if s['training_target_met'] else 'MISSED'}) "
          f"and overhead (imports, Prefect, MLflow, evaluation) {s['overhead_seconds']}s")
    print(f"epoch time: pipeline {e['pipeline_epoch_ms']} ms vs bare PyTorch {e['bare_epoch_ms']} ms "
          f"= {e['ratio']}x (target <= 1.1x); with the default gradient clipping {e['ratio_with_clipping']}x")
    print(f"preprocessing 10M points, L=168: peak RSS {m['peak_rss_mb']} MB (target <= 1500 MB), "
          f"{m['seconds']} s")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
