"""train-many: several configs trained at once over Prefect's Dask task runner (a local cluster of two processes),
each a training run of its own, registered in its own stores; a config whose run fails fails alone."""

import subprocess
import sys

import mlflow
import pytest
from conftest import write_config

pytestmark = pytest.mark.slow


def test_two_configs_train_in_two_dask_processes_and_a_failing_one_fails_alone(tmp_path):
    configs = []
    for name in ("fan_a", "fan_b"):
        folder = tmp_path / name
        folder.mkdir()
        configs.append(write_config(folder, name=name, n_trials=0, epochs=2))
    broken = tmp_path / "fan_c"
    broken.mkdir()
    (broken / "bad.csv").write_text("time,value\n1,1.0\n2,2.0\n3,3.0\n")  # far too short to train on
    configs.append(write_config(broken, name="fan_c", n_trials=0, epochs=2, data="path: bad.csv"))
    cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "train-many", "--workers", "2",
                            *[a for c in configs for a in ("--config", str(c))]], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        out, err = cli.communicate(timeout=900)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 1, out + err[-3000:]  # the broken config's failure is reported
    configs = [str(c.resolve()) for c in configs]  # as the command names them
    lines = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith(str(tmp_path.resolve())))
    assert "FAILED" in lines[configs[2]] and "too short" in lines[configs[2]]
    pids = set()
    for name, config in zip(("fan_a", "fan_b"), configs):
        assert lines[config].startswith(f"{name} v1"), lines
        pids.add(lines[config].rsplit("pid ", 1)[1].rstrip(")"))
        uri = f"sqlite:///{tmp_path / name / 'state' / 'mlflow.db'}"
        assert mlflow.MlflowClient(uri, registry_uri=uri).get_model_version(name, "1")
    assert str(cli.pid) not in pids  # Dask's worker processes trained them, not the command's own
