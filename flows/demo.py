"""`rnn-pipeline demo`: the whole loop, hands-free, on the seed series.

Train a champion on the seed series, then feed the monitoring flow a stream of batch files: stationary batches that
continue the seed's process, then a regime shift (amplitude and frequency change). Each batch is one monitoring pass,
as a schedule would run it. The timeline (verdict, drifted share, champion error, action, champion version per batch)
is printed and written to `<root>/../demo_timeline.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from rnn_pipeline import stores as stores_mod
from rnn_pipeline.config import load_config
from rnn_pipeline.data import datasets
from rnn_pipeline.errors import ConfigError

from .monitoring import incoming_folder, monitoring_flow
from .training import training_flow


def timeline_file(st: stores_mod.Stores) -> Path:
    return st.root.parent / "demo_timeline.json"


def run_demo(config: str = "seed_sine_demo", *, batch_size: int = 250, stationary: int = 10, shifted: int = 6,
             amplitude: float = 1.6, frequency: float = 2.0, echo=print) -> list[dict]:
    cfg = load_config(config)
    st = stores_mod.resolve(cfg.stores, os.environ)
    if st.root.name != "demo":
        raise ConfigError(f"the demo wipes its stores.root at every start, so it must be a folder named 'demo' "
                          f"(got {st.root})")
    if os.environ.get("MLFLOW_TRACKING_URI") and cfg.stores.mlflow_uri is None:
        raise ConfigError("the demo keeps its own MLflow store: unset MLFLOW_TRACKING_URI to run it")
    shutil.rmtree(st.root, ignore_errors=True)
    stores_mod.ensure(st)
    t0 = time.perf_counter()
    echo(f"demo: training the first champion on the seed series ({cfg.name}, state in {st.root})")
    first = training_flow(config, reason="demo")
    echo(f"demo: champion v{first['champion_version']} test MSE {first['metrics']['mse']:.5f}")
    incoming = incoming_folder(cfg, st)
    incoming.mkdir(parents=True, exist_ok=True)
    timeline = []
    start = 1000  # the seed series ends at t = 999
    for i in range(stationary + shifted):
        after = i >= stationary
        frame = datasets.sine_stream(start, batch_size, amplitude=amplitude if after else 1.0,
                                     frequency=frequency if after else 1.0, seed=1000 + i)
        name = f"batch-{i + 1:03d}.csv"
        frame.to_csv(incoming / name, index=False)
        start += batch_size
        summary = monitoring_flow(config)
        row = next(b for b in summary["batches"] if b["batch"] == name)
        entry = {"batch": i + 1, "shifted": after, "verdict": row["verdict"], "drift_share": row["drift_share"],
                 "champion_mse": row["champion_mse"], "error_ratio": row["error_ratio"], "action": row["action"],
                 "judged_version": row["champion_version"], "champion_version": row["new_champion_version"]}
        timeline.append(entry)
        echo(timeline_row(entry))
    wall = time.perf_counter() - t0
    out = timeline_file(st)
    out.write_text(json.dumps(timeline, indent=2))
    echo(timeline_table(timeline))
    echo(f"demo: {len(timeline)} batches in {wall:.0f}s; timeline written to {out}")
    echo(f"demo: browse the runs with: mlflow ui --backend-store-uri {st.mlflow_uri}")
    return timeline


def timeline_row(e: dict) -> str:
    share = "-" if e["drift_share"] is None else f"{e['drift_share']:.2f}"
    mse = "-" if e["champion_mse"] is None else f"{e['champion_mse']:.5f}"
    return (f"{e['batch']:>5}  {'yes' if e['shifted'] else 'no':<7}  {e['verdict']:<9}{share:>7}  {mse:>12}  "
            f"{e['action']:<20}  v{e['champion_version']}")


def timeline_table(timeline: list[dict]) -> str:
    head = f"{'batch':>5}  {'shifted':<7}  {'verdict':<9}{'drift':>7}  {'champion mse':>12}  {'action':<20}  champion"
    return "\n".join([head, *(timeline_row(e) for e in timeline)])
