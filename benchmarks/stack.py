"""The server-backed stack (issue 16). Two measurements:

- **overhead** (`--overhead`): the seed task's `rnn-pipeline train` (the built-in config as `make run` trains it),
  embedded (SQLite stores, the ephemeral Prefect API) against server-backed (the MLflow server, the Prefect server,
  Optuna on PostgreSQL), wall time of the whole command each (target: within 1.3x);
- **fan-out** (`--fanout K [--runners sequential,dask,ray]`): K independent training runs (the seed task, `--trials`
  trials of `--epochs` epochs each) one after another, then through `rnn-pipeline train-many` on a local Dask
  cluster of 2 processes (and on a local Ray of 2 CPUs, where prefect-ray is installed), and each engine's own cost:
  a flow of 4 no-op tasks on a fresh local cluster;
- **backtest refits** (`--refits N`): the seed task's backtest with N origins refitted at each (backtest.refit 1,
  `--epochs` epochs per refit), fitted one after another in this process, then through `flows.fanout.refit_origins`
  on a local Dask cluster of 2 processes (as `backtest.workers: 2` does in the training flow; the cluster's start
  counted), with the backtest's RNN figure from each to show they agree;
- **parallel tuning** (default): trials per minute with 1 and 2 (or 4) tuning workers sharing one study on
  PostgreSQL, on the seed task, one torch thread per worker (target: 2 workers >= 1.7x the rate of 1 on 2 cores),
  interleaved (`--workers 1,2,1,2`: each run of another count is also set against the run of the first count,
  1, before it).

Brings up the stack (`rnn pipeline stack up` with as many process workers as the largest count, its own databases:
every pool worker polls the Prefect server every 2 s, idle or not, and the server's share of the two cores grows
with them, so compare 1 and 2 workers in a run of its own, `--workers 1,2,1,2`, on the 2 workers `stack up` starts
by default, and 1 against 4 in another, `--workers 1,4`), trains the seed config with
`tuning.workers` = each count (a fresh study each: the study name holds the config's digest; every trial the same
size, so that the counts compare), and reads the workers' phase from the run summary: finished trials over the
training run's wait for its workers, from releasing them to the last one ending (`trials_per_minute`, the target's
figure; the workers' start-up overlaps the training run's MLflow set-up, and what is left of it is included), over
the time from starting them (`since_launch_per_minute`), and over the whole `train` command's wall time; from the
study: the mean trial's training time and the rate between the first trial's start and the last one's end
(`steady_trials_per_minute`); and from the Prefect server where each worker's start-up went (`worker_startup`).
Then brings the stack down and drops its databases.

    python benchmarks/stack.py [--trials 12] [--epochs 80] [--workers 1,2,1,2 | --workers 1,4] | --overhead | --fanout 4
        | --refits 8 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--workers", default="1,2,1,2")
    ap.add_argument("--epochs", type=int, default=80, help="epochs per trial")
    ap.add_argument("--overhead", action="store_true", help="embedded against server-backed train, seed task")
    ap.add_argument("--fanout", type=int, default=0, help="K independent trainings: sequential against Dask")
    ap.add_argument("--runners", default="sequential,dask", help="--fanout: task runners to time (ray needs "
                    "prefect-ray installed)")
    ap.add_argument("--refits", type=int, default=0, help="a backtest of N refitted origins: sequential against Dask")
    args = ap.parse_args()
    if args.overhead:
        return overhead()
    if args.refits:
        return refits(args.refits, args.epochs)
    if args.fanout:
        return fanout(args.fanout, args.trials, args.epochs, args.runners.split(","))
    from rnn_pipeline import stack

    why = stack.reachable(os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB))
    if why:
        sys.exit(f"needs PostgreSQL: {why}")
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "stack"
        state = stack.up(folder, os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB), workers=max(counts),
                         mlflow_port=stack.free_port(), prefect_port=stack.free_port(),
                         prefix=f"rnnp_b{uuid.uuid4().hex[:6]}_", log=lambda m: print(m, file=sys.stderr))
        rows = []
        try:
            for i, n in enumerate(counts):
                config = tmp / f"w{n}-{i}.yaml"
                # every trial the same size (one GRU of 64 units on 48 steps; the learning rate and dropout vary):
                # trials per minute then measure the workers, not which sizes each study happened to sample
                config.write_text(textwrap.dedent(f"""\
                    name: bench-w{n}-{i}
                    seed: 100
                    data: {{builtin: seed_sine}}
                    training: {{max_epochs: 2, ensemble_trials: 1, threads: 1}}
                    tuning: {{n_trials: {args.trials}, max_epochs: {args.epochs}, patience: {args.epochs},
                              pruner: none, workers: {n},
                              space: {{architecture: [direct], cell: [gru], hidden: [64], layers: [1], window: [48],
                                       batch_size: [64], dropout: {{low: 0.0, high: 0.3}},
                                       lr: {{low: 0.0003, high: 0.01, log: true}}}}}}
                    evaluation: {{plots: false}}
                    registry: {{floor: []}}
                    stores: {{root: "{tmp / f'state{i}'}", mlflow_uri: "{state.mlflow_url}",
                              optuna_url: "{state.optuna_url}"}}
                    """))
                t0 = time.perf_counter()
                run = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(config)],
                                     capture_output=True, text=True, env={**os.environ, **stack.prefect_env(state)})
                if run.returncode != 0:
                    raise SystemExit(f"training with {n} worker(s) failed:\n{run.stderr[-3000:]}")
                wall = time.perf_counter() - t0
                s = json.loads((tmp / f"state{i}" / "last_run.json").read_text())
                # the training run's wait for its workers (the target's figure: their start-up overlaps its own
                # steps before tuning), and the whole phase from starting them
                seconds, since_launch = s["timings"]["tune_workers"], s["timings"]["tune_workers_since_launch"]
                finished = s["n_complete"] + s["n_pruned"]
                rows.append({"workers": n, "finished_trials": finished, "seconds": round(seconds, 1),
                             "trials_per_minute": round(60 * finished / seconds, 2),
                             "seconds_since_launch": round(since_launch, 1),
                             "since_launch_per_minute": round(60 * finished / since_launch, 2),
                             "train_wall_seconds": round(wall, 1),
                             **trial_timeline(state.optuna_url, f"bench-w{n}-{i}-", args.trials, seconds),
                             **worker_startup(state, f"bench-w{n}-{i}-")})
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            stack.down(folder, drop=True, log=lambda m: None)
    # a count given more than once (--workers 1,2,1,2) is summarised by its median
    summary = {}
    for n in dict.fromkeys(counts):
        mine = [r for r in rows if r["workers"] == n]
        summary[n] = {k: statistics.median(r[k] for r in mine)
                      for k in ("trials_per_minute", "first_n_per_minute", "since_launch_per_minute",
                                "train_wall_seconds")}
    base = summary[counts[0]]
    for v in summary.values():
        v["speedup"] = round(v["trials_per_minute"] / base["trials_per_minute"], 2)
        v["first_n_speedup"] = round(v["first_n_per_minute"] / base["first_n_per_minute"], 2)
        v["since_launch_speedup"] = round(v["since_launch_per_minute"] / base["since_launch_per_minute"], 2)
        v["train_wall_speedup"] = round(base["train_wall_seconds"] / v["train_wall_seconds"], 2)
    # interleaved runs (--workers 1,2,1,2): each run against the run of the first count just before it, so that a
    # pair shares the machine's state of the moment (the same trial alone varies by 10-20% over an hour here)
    pairs, last = [], None
    for r in rows:
        if r["workers"] == counts[0]:
            last = r
        elif last is not None:
            pairs.append({"workers": r["workers"], "speedup": round(r["trials_per_minute"] / last["trials_per_minute"], 2),
                          "trial_seconds": [last.get("trial_seconds_mean"), r.get("trial_seconds_mean")]})
    print(json.dumps({"trials": args.trials, "epochs_per_trial": args.epochs, "rows": rows,
                      "by_workers": summary, "pairs": pairs}, indent=2))



def trial_timeline(optuna_url: str, name: str, n: int, phase_seconds: float) -> dict:
    """What the workers' phase spent where, from the study itself: the mean training time of a trial (its own clock),
    the span from the first trial's start to the last one's end (trials per minute once the workers run), and the
    phase's time until the study held `n` finished trials (the cap; two workers finishing at the same moment can
    still both start one past it): `n` over that time is the like-for-like rate."""
    import optuna

    storage = optuna.storages.RDBStorage(optuna_url)
    try:
        study = next(s for s in optuna.get_all_study_summaries(storage) if name in s.study_name)
        trials = [t for t in optuna.load_study(study_name=study.study_name, storage=storage).get_trials(deepcopy=False)
                  if t.datetime_complete is not None and t.state.is_finished()
                  and t.state != optuna.trial.TrialState.FAIL]
    finally:
        storage.engine.dispose()
    if not trials:
        return {}
    ends = sorted(t.datetime_complete for t in trials)
    span = (ends[-1] - min(t.datetime_start for t in trials)).total_seconds()
    to_n = phase_seconds - (ends[-1] - ends[min(n, len(ends)) - 1]).total_seconds()
    return {"trial_seconds_mean": round(sum(t.user_attrs.get("seconds", 0) for t in trials) / len(trials), 2),
            "trials_span_seconds": round(span, 1), "steady_trials_per_minute": round(60 * len(trials) / span, 2),
            "seconds_to_n": round(to_n, 1), "first_n_per_minute": round(60 * min(n, len(ends)) / to_n, 2)}


def worker_startup(state, name: str) -> dict:
    """Each tuning worker's start-up, from the Prefect server and the study, as means over the workers: from its
    flow run's creation to a pool worker taking it (Pending: `pickup_seconds`), from that to the flow running in its
    own process (Running: the process started, Prefect and the flow's module, torch and MLflow with it, imported:
    `process_seconds`), and from that to its first trial's start (the data prepared, the wait to be released, the
    study opened: `startup_seconds`)."""
    import urllib.request
    from datetime import datetime

    import optuna

    req = urllib.request.Request(f"{state.prefect_url}/api/flow_runs/filter", data=b"{}",
                                 headers={"Content-Type": "application/json"}, method="POST")
    runs = [r for r in json.loads(urllib.request.urlopen(req, timeout=30).read())
            if r["name"].startswith("tune-worker") and name in r["parameters"].get("study_name", "")]
    storage = optuna.storages.RDBStorage(state.optuna_url)
    try:
        study = next(s for s in optuna.get_all_study_summaries(storage) if name in s.study_name)
        trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    pickup, engine, startup = [], [], []
    for r in runs:
        if not r.get("start_time"):
            continue
        created, started = (datetime.fromisoformat(r[k]).timestamp() for k in ("created", "start_time"))
        states = json.loads(urllib.request.urlopen(f"{state.prefect_url}/api/flow_run_states/?flow_run_id={r['id']}",
                                                   timeout=30).read())
        pending = [datetime.fromisoformat(x["timestamp"]).timestamp() for x in states if x["type"] == "PENDING"]
        mine = [t.datetime_start.timestamp() for t in trials
                if t.user_attrs.get("worker") == r["parameters"].get("worker") and t.datetime_start is not None]
        if pending:  # created -> a pool worker took it (Pending) -> its process ran the flow (Running)
            pickup.append(min(pending) - created)
            engine.append(started - min(pending))
        if mine:
            startup.append(min(mine) - started)
    return {k: round(statistics.mean(v), 1) if v else None
            for k, v in (("pickup_seconds", pickup), ("process_seconds", engine), ("startup_seconds", startup))}


def overhead() -> None:
    """The seed config's train, embedded then server-backed, each in a fresh stores root."""
    from rnn_pipeline import stack

    def train(root: Path, extra: dict, env: dict) -> float:
        sets = [f"stores.root={root}", *[f"stores.{k}={v}" for k, v in extra.items()]]
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", "seed_sine",
                              *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True,
                             env={**os.environ, **env})
        if run.returncode != 0:
            raise SystemExit(run.stderr[-3000:])
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        embedded = train(tmp / "embedded", {}, {})
        state = stack.up(tmp / "stack", os.environ.get("RNNP_STACK_DB", stack.DEFAULT_DB), workers=1,
                         mlflow_port=stack.free_port(), prefect_port=stack.free_port(),
                         prefix=f"rnnp_o{uuid.uuid4().hex[:6]}_", log=lambda m: print(m, file=sys.stderr))
        try:
            served = train(tmp / "served", state.stores(), stack.prefect_env(state))
        finally:
            stack.down(tmp / "stack", drop=True, log=lambda m: None)
    print(json.dumps({"embedded_seconds": round(embedded, 1), "server_backed_seconds": round(served, 1),
                      "ratio": round(served / embedded, 3), "target_ratio": 1.3}, indent=2))


def refits(n: int, epochs: int) -> None:
    """The seed task's backtest of `n` origins, each refitted: the refits in this process (one torch thread), then
    on 2 Dask processes through the Prefect task runner."""
    import torch
    from prefect import flow

    from flows.fanout import refit_origins
    from rnn_pipeline import tasks, tune
    from rnn_pipeline.config import load_config
    from rnn_pipeline.data import datasets

    torch.set_num_threads(1)
    overrides = {"training": {"max_epochs": epochs, "patience": epochs, "ensemble_trials": 1, "threads": 1},
                 "backtest": {"origins": n, "refit": 1}}
    cfg = load_config("seed_sine", overrides)
    t = tasks.for_config(cfg)
    frame, source = datasets.load(cfg.data.builtin, cfg.data.path, cfg.base_dir)
    data = t.prepare(t.read(frame, source), source)
    params = tune.default_params(cfg)
    quick = tune.fit_model(params, data, cfg, max_epochs=1, patience=1, device="cpu")
    bundle = t.bundle(quick.model, data, params)
    positions = t.refit_positions(data, bundle, params)

    t0 = time.perf_counter()
    here = {p: t.refit_bundle(params, data, p, "cpu") for p in positions}
    sequential = time.perf_counter() - t0

    @flow
    def warm() -> None:  # the Prefect API up before the clock starts (the training flow has it already)
        return None

    warm()
    t0 = time.perf_counter()
    there = refit_origins("seed_sine", overrides, params, positions, t.digest(data), "cpu", 2, None)
    dask_seconds = time.perf_counter() - t0
    figures = {k: t.backtest(data, bundle, None, params=params, refitted=v)["models"]["rnn"]["mse"]
               for k, v in (("sequential", here), ("dask", there))}
    print(json.dumps({"refits": len(positions), "epochs_per_refit": epochs, "sequential_seconds": round(sequential, 1),
                      "dask_seconds": round(dask_seconds, 1), "speedup": round(sequential / dask_seconds, 2),
                      "backtest_rnn_mse": {k: round(v, 6) for k, v in figures.items()}}, indent=2))


def fanout(k: int, trials: int, epochs: int, runners: list[str]) -> None:
    """K seed-task configs (each its own model and stores, `trials` trials of `epochs` epochs) trained sequentially,
    then over Dask with 2 processes."""
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for runner in runners:
            configs = []
            for i in range(k):
                c = tmp / f"{runner}{i}.yaml"
                c.write_text(textwrap.dedent(f"""\
                    name: fan{i}
                    seed: {i}
                    data: {{builtin: seed_sine}}
                    training: {{max_epochs: 20, ensemble_trials: 1, threads: 1}}
                    tuning: {{n_trials: {trials}, max_epochs: {epochs}, patience: {epochs}, pruner: none}}
                    evaluation: {{plots: false}}
                    registry: {{floor: []}}
                    stores: {{root: "{tmp / runner / str(i)}"}}
                    """))
                configs.append(str(c))
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "flows.cli", "train-many", "--runner", runner, "--workers",
                                  "2", *[a for c in configs for a in ("--config", c)]], capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(run.stdout + run.stderr[-3000:])
            times[runner] = time.perf_counter() - t0
    base = times.get("sequential")
    print(json.dumps({"trainings": k, "trials": trials, "epochs_per_trial": epochs,
                      **{f"{r}_seconds": round(v, 1) for r, v in times.items()},
                      **({f"{r}_speedup": round(base / v, 2) for r, v in times.items() if r != "sequential"}
                         if base else {}),
                      "engine_start_seconds": {r: engine_start(r) for r in times if r != "sequential"}}, indent=2))


ENGINE_START = """
import time
from prefect import flow, task
from flows.fanout import dask_runner, ray_runner

@task
def noop(i):
    return i

@flow
def fan():
    return [f.result() for f in noop.map(range(4))]

fan()  # the Prefect API up first: what is timed next is the engine
t0 = time.perf_counter()
fan.with_options(task_runner={"dask": dask_runner, "ray": ray_runner}[RUNNER](2, None))()
print(time.perf_counter() - t0)
"""


def engine_start(runner: str) -> float:
    """Seconds for a flow of 4 no-op tasks on a fresh local cluster of 2 processes of `runner` (its start, task
    round trips and shutdown), in a new process."""
    run = subprocess.run([sys.executable, "-c", ENGINE_START.replace("RUNNER", repr(runner))], capture_output=True,
                         text=True, cwd=REPO)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    return round(float(run.stdout.strip().splitlines()[-1]), 1)


if __name__ == "__main__":
    main()
