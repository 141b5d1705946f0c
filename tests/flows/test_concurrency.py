"""One training run per model at a time: a second run of the same model exits at once naming the run in progress
(through the CLI: one line, exit 2), or waits for it; a run of another model is not held up."""

import os
import threading

import pytest
from conftest import write_config

from rnn_pipeline.locks import Lock, LockHeld

pytestmark = pytest.mark.slow


def _holder(tmp_path, model: str) -> Lock:
    """The lock a training run of `model` holds, taken here as if another run were in progress."""
    return Lock(f"sqlite:///{tmp_path / 'state' / 'monitoring.db'}", f"train:{model}", ttl_seconds=120,
                what=f"training run of model '{model}'")


def test_a_second_training_run_of_a_model_fails_at_once_or_waits(tmp_path, prefect_harness, cli):
    from flows.training import training_flow

    cfg = write_config(tmp_path, name="busy", n_trials=1, trial_epochs=1, epochs=1)
    held = _holder(tmp_path, "busy").acquire()
    try:
        with pytest.raises(LockHeld, match=rf"another training run of model 'busy' is in progress \(pid {os.getpid()}"):
            training_flow(str(cfg))
        assert not (tmp_path / "state" / "optuna.db").exists()  # nothing was started

        code, _, err = cli("train", "--config", cfg)  # in-process (a subprocess is seconds of imports)
        assert code == 2, err[-2000:]
        assert "error: another training run of model 'busy' is in progress" in err
        assert "--wait" in err and "Traceback" not in err

        (tmp_path / "other").mkdir()
        other = write_config(tmp_path / "other", name="other", n_trials=1, trial_epochs=1, epochs=1)
        assert training_flow(str(other))["model_version"] == "1"  # another model is not held up
    finally:
        threading.Timer(1.0, held.release).start()  # the holder finishes while the next run waits
    summary = training_flow(str(cfg), wait=120)
    assert summary["model_version"] == "1"
    assert _holder(tmp_path, "busy").holder() is None  # released after the run
