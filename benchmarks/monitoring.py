"""`make bench` (part 2): the monitoring loop's figures, measured on this machine.

1. `rnn-pipeline demo` in a fresh process: wall time, retrains on the stationary batches (target 0), batches from the
   regime shift until the first non-ok verdict (target: flagged within 1 batch).
2. The champion the demo ends with against a model trained on post-shift data alone (same hyperparameters and
   procedure, 1000 post-shift points, the amount the demo's retrain policy keeps), both scored on 1000 fresh
   post-shift points that neither saw. Target: ratio <= 1.2.

Results are printed and written to .rnn_pipeline/bench_monitoring.json.
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
AMPLITUDE, FREQUENCY = 1.6, 2.0  # the demo's shift


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def champion_mse(mlflow_uri: str, name: str, values, first_targets) -> tuple[float, str]:
    import mlflow
    import numpy as np

    from rnn_pipeline import registry
    from rnn_pipeline.forecasting.windows import lag_matrix, target_matrix

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    version = client.get_model_version_by_alias(name, "champion").version
    mlflow.set_registry_uri(mlflow_uri)
    bundle = registry.bundle_of(registry.load(f"models:/{name}/{version}"))
    pred = bundle.predict_windows(lag_matrix(values, first_targets, bundle.window))
    true = target_matrix(values, first_targets, bundle.horizon, 1)
    return float(np.mean((pred - true) ** 2)), str(version)


def main() -> None:
    import numpy as np

    from rnn_pipeline.data.datasets import sine_stream

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    wall = run([sys.executable, "-m", "flows.cli", "demo"], REPO, env)
    timeline = json.loads((REPO / ".rnn_pipeline" / "demo_timeline.json").read_text())
    stationary = [e for e in timeline if not e["shifted"]]
    shifted = [e for e in timeline if e["shifted"]]
    first_flag = next((i for i, e in enumerate(shifted) if e["verdict"] != "ok"), None)
    batch_size = 250
    end = 1000 + batch_size * len(timeline)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # post-shift data the demo's stream never contained: a training stretch, then an evaluation stretch
        train = sine_stream(end + 5000, 1000, amplitude=AMPLITUDE, frequency=FREQUENCY, seed=555)
        train.to_parquet(tmp / "post_shift.parquet", index=False)
        base = (REPO / "rnn_pipeline" / "configs" / "seed_sine_demo.yaml").read_text()
        cfg = tmp / "post_shift_only.yaml"
        cfg.write_text(base.replace("builtin: seed_sine", f"path: {tmp / 'post_shift.parquet'}")
                       .replace("name: seed_sine_demo", "name: post_shift_only")
                       .replace("root: .rnn_pipeline/demo", f"root: {tmp / 'state'}"))
        t_ref = run([sys.executable, "-m", "flows.cli", "train", "--config", str(cfg)], tmp,
                    {**env, "PREFECT_HOME": str(tmp / "prefect")})
        evaluation = sine_stream(end + 8000, 1050, amplitude=AMPLITUDE, frequency=FREQUENCY, seed=777)
        values = evaluation[["value"]].to_numpy()
        first = np.arange(50, len(values))
        demo_mse, demo_version = champion_mse(f"sqlite:///{REPO / '.rnn_pipeline' / 'demo' / 'mlflow.db'}",
                                              "seed_sine_demo", values, first)
        ref_mse, _ = champion_mse(f"sqlite:///{tmp / 'state' / 'mlflow.db'}", "post_shift_only", values, first)

    result = {
        "demo_wall_seconds": round(wall, 1),
        "batches": len(timeline), "stationary_batches": len(stationary), "shifted_batches": len(shifted),
        "retrains_on_stationary": sum(e["action"].startswith("retrain") for e in stationary),
        "false_alarms_on_stationary": sum(e["verdict"] != "ok" for e in stationary),
        "batches_until_flagged_after_shift": first_flag,
        "retrains_after_shift": sum(e["action"].startswith("retrain") for e in shifted),
        "promotions_after_shift": sum(e["action"] == "retrain → promoted" for e in shifted),
        "final_champion_version": demo_version,
        "final_champion_post_shift_mse": demo_mse,
        "post_shift_only_model_mse": ref_mse,
        "ratio": demo_mse / ref_mse,
        "post_shift_only_training_seconds": round(t_ref, 1),
        "evaluation_windows": int(len(first)),
    }
    out = REPO / ".rnn_pipeline" / "bench_monitoring.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = (result["retrains_on_stationary"] == 0 and first_flag is not None and first_flag <= 1
          and result["ratio"] <= 1.2)
    print(f"targets {'met' if ok else 'NOT met'}; written to {out}")


if __name__ == "__main__":
    main()
