"""The monitoring demo (`make demo`) in short: its timeline and the loop it shows. (Its own file so that
pytest-xdist runs it beside test_monitoring.py.)"""

import json

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_writes_its_timeline(tmp_path, monkeypatch, prefect_harness):
    """A short demo (2 stationary batches, 1 shifted) in a scratch folder: the timeline's shape and the loop."""
    from importlib import resources

    from flows.demo import run_demo

    monkeypatch.chdir(tmp_path)
    # the demo's own config, trained for fewer epochs (the demo's accuracy is not what is tested here)
    text = resources.files("rnn_pipeline.configs").joinpath("seed_sine_demo.yaml").read_text()
    text = text.replace("max_epochs: 120", "max_epochs: 25")
    assert "max_epochs: 25" in text
    (tmp_path / "demo.yaml").write_text(text)
    lines = []
    timeline = run_demo(str(tmp_path / "demo.yaml"), stationary=2, shifted=1, echo=lines.append)
    saved = json.loads((tmp_path / ".rnn_pipeline" / "demo_timeline.json").read_text())
    assert saved == timeline and len(saved) == 3
    keys = {"batch", "shifted", "verdict", "drift_share", "champion_mse", "action", "champion_version"}
    assert all(keys <= set(e) for e in saved)
    assert [e["shifted"] for e in saved] == [False, False, True]
    assert [e["verdict"] for e in saved[:2]] == ["ok", "ok"] and saved[2]["verdict"] in ("drift", "degraded")
    assert saved[2]["action"].startswith("retrain") and saved[2]["champion_mse"] > 10 * saved[0]["champion_mse"]
    assert any("timeline written to" in line for line in lines)
