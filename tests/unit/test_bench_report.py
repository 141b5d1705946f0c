"""The forecasting benchmark's report: runs made apart (one process per run) are aggregated into the README's table,
with each seed against the best baseline and the Ridges' look-backs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_forecasting", REPO / "benchmarks" / "forecasting.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(seed, rnn, ridge=0.50, dataset="a", mode="all", horizon=96):
    return {"dataset": dataset, "mode": mode, "horizon": horizon, "seed": seed, "training_compute_seconds": 100.0 + seed,
            "rnn": {"mse": rnn, "mae": rnn / 2}, "persistence": {"mse": 1.0, "mae": 0.8},
            "seasonal_naive": {"mse": 0.9, "mae": 0.7}, "ridge": {"mse": ridge, "mae": 0.4},
            "ridge_last": {"mse": 0.6, "mae": 0.45}, "baseline_windows": {"ridge": 48, "ridge_last": 96}}


def test_aggregate_compares_each_seed_with_the_best_baseline(bench):
    (e,) = bench.aggregate([row(2, 0.55), row(0, 0.45), row(1, 0.47)])
    assert e["seed_list"] == [0, 1, 2]
    assert e["rnn_mse"] == pytest.approx(0.49)
    assert e["beats_every_baseline"] is True  # 0.49 < the Ridge's 0.50 on the mean, though seed 2 trails it
    assert e["vs_best_baseline"] == pytest.approx(-0.02)
    assert e["per_seed_vs_best_baseline"] == pytest.approx([-0.10, -0.06, 0.10])
    assert e["baseline_windows"] == {"ridge": [48], "ridge_last": [96]}


def test_table_marks_a_loss_and_shows_the_ridges_look_back(bench):
    summary = bench.aggregate([row(0, 0.45, dataset="win"), row(0, 0.52, dataset="lose", horizon=24)])
    lines = bench.table(summary).splitlines()
    assert lines[0].count("|") == lines[2].count("|") == lines[3].count("|")
    lose, win = lines[2], lines[3]  # sorted by H
    assert "| lose | all | 24 | 1 (0) | 0.5200 ± 0.0000 |" in lose and "| NO (+4.0%) | +4.0% |" in lose
    assert "| **0.4500 ± 0.0000** |" in win and "**yes** (-10.0%)" in win
    assert "0.5000 (48)" in win and "0.6000 (96)" in win


def test_report_reads_runs_made_apart(bench, tmp_path, monkeypatch, capsys):
    files = []
    for seed, rnn in ((0, 0.40), (1, 0.44)):
        f = tmp_path / f"s{seed}.json"
        f.write_text(json.dumps({"rows": [row(seed, rnn)]}))
        files.append(str(f))
    monkeypatch.setattr(sys, "argv", ["forecasting.py", "--report", *files])
    bench.main()
    out = capsys.readouterr().out
    assert "| a | all | 96 | 2 (0,1) | **0.4200 ± 0.0200** |" in out
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    monkeypatch.setattr(sys, "argv", ["forecasting.py", "--report", str(empty)])
    with pytest.raises(SystemExit, match="no rows"):
        bench.main()
