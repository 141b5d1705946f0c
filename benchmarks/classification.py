"""`make bench` (part 3): sequence classification figures, measured on this machine.

Trains each built-in classification config with `rnn-pipeline train` in a fresh process and fresh stores, and
reads its run summary: test accuracy and macro F1 of the RNN and of the baselines, wall time. JapaneseVowels'
target is accuracy >= 0.97 (dynamic time warping: about 0.95). Then the seed-to-seed spread of JapaneseVowels (the
same config under other seeds, which also changes the validation carve-out).

Results are printed and written to .rnn_pipeline/bench_classification.json.
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


def train(config: str, root: Path, overrides: dict | None = None) -> dict:
    """One training run of `config` in its own stores (a YAML that extends the built-in one)."""
    import yaml

    from rnn_pipeline.config import merge

    base = yaml.safe_load((REPO / "rnn_pipeline" / "configs" / f"{config}.yaml").read_text())
    cfg = merge(base, {"stores": {"root": str(root)}, **(overrides or {})})
    path = root.parent / f"{config}-{root.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"training {config} failed:\n{out.stderr[-3000:]}")
    summary = json.loads((root / "last_run.json").read_text())
    summary["process_seconds"] = time.perf_counter() - t0
    return summary


def row(s: dict) -> dict:
    pick = ("accuracy", "f1_macro", "roc_auc")
    return {"rnn": {k: round(s["metrics"][k], 4) for k in pick},
            **{name: {k: round(m[k], 4) for k in pick} for name, m in s["baselines"].items()},
            "n_test": s["n_test"], "best_params": s["best_params"], "process_seconds": round(s["process_seconds"], 1)}


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in ("japanese_vowels", "rotten_tomatoes"):
            results[config] = row(train(config, Path(tmp) / config))
            print(config, json.dumps(results[config]), flush=True)
        spread = []
        for seed in (0, 1, 2, 3):
            s = train("japanese_vowels", Path(tmp) / f"jv-seed{seed}", {"seed": seed})
            spread.append(round(s["metrics"]["accuracy"], 4))
        results["japanese_vowels_seeds_0_3_accuracy"] = spread
        print("japanese_vowels accuracy, seeds 0-3:", spread, flush=True)
    out = REPO / ".rnn_pipeline" / "bench_classification.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
