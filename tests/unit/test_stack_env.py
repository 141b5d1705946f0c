"""Pointing a shell at the stack: the environment's stores (config wins), `stack env`'s lines, a stopped stack's
state kept for a later `down --drop`, and `deploy --pool` without a Prefect server."""

import os
import subprocess
import sys

import pytest

from rnn_pipeline import stack, stores
from rnn_pipeline.config import StoresConfig, load_config
from rnn_pipeline.errors import PipelineError

PG = "postgresql://postgres@db:5432"


def test_the_environment_names_the_stores_a_config_leaves_out(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://host:5000", "RNNP_OPTUNA_URL": f"{PG}/o", "RNNP_MONITORING_URL": f"{PG}/m"}
    st = stores.resolve(StoresConfig(root=str(tmp_path)), env)
    assert (st.mlflow_uri, st.optuna_url, st.monitoring_url) == ("http://host:5000", f"{PG}/o", f"{PG}/m")
    assert st.artifact_location is None  # the tracking server keeps the artifacts
    named = stores.resolve(StoresConfig(root=str(tmp_path), optuna_url="sqlite:///x.db",
                                        monitoring_url="sqlite:///y.db"), env)
    assert (named.optuna_url, named.monitoring_url) == ("sqlite:///x.db", "sqlite:///y.db")  # the config wins
    embedded = stores.resolve(StoresConfig(root=str(tmp_path)), {})
    assert embedded.optuna_url == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert embedded.monitoring_url == f"sqlite:///{tmp_path.resolve() / 'monitoring.db'}"


def state(tmp_path, databases):
    return stack.StackState(str(tmp_path), PG, databases, "http://127.0.0.1:5000", "http://127.0.0.1:4200", "pool",
                            {"mlflow": 2 ** 22 + 7})


def test_stack_env_points_every_store_at_the_stack(tmp_path):
    s = state(tmp_path, {r: f"rnnp_{r}" for r in ("mlflow", "prefect", "optuna", "monitoring")})
    assert s.env() == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "PREFECT_API_URL": "http://127.0.0.1:4200/api",
                       "RNNP_OPTUNA_URL": f"{PG}/rnnp_optuna", "RNNP_MONITORING_URL": f"{PG}/rnnp_monitoring"}
    st = stores.resolve(StoresConfig(root=str(tmp_path)), s.env())
    assert (st.mlflow_uri, st.optuna_url, st.monitoring_url) == (s.mlflow_url, s.optuna_url, s.monitoring_url)
    # a state file written before the stack had a monitoring database
    old = state(tmp_path, {r: f"rnnp_{r}" for r in ("mlflow", "prefect", "optuna")})
    assert "RNNP_MONITORING_URL" not in old.env() and "monitoring_url" not in old.stores()


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={k: v for k, v in os.environ.items() if not k.startswith("RNNP_")})


def test_stack_env_and_down_on_a_stack_that_is_not_running(tmp_path):
    folder = tmp_path / "stack"
    r = cli("stack", "env", "--folder", folder, cwd=tmp_path)
    assert r.returncode != 0 and "no stack is running from" in r.stderr and "stack up" in r.stderr
    folder.mkdir()
    stack._write_state(state(folder, {r: f"rnnp_t_{r}" for r in ("mlflow", "prefect", "optuna", "monitoring")}))
    # its process is gone (a pid no process has): `down` stops nothing, and keeps what `down --drop` needs
    assert stack.down(folder, log=lambda m: None) == ["mlflow"]
    kept = stack.read_state(folder)
    assert kept.processes == {} and kept.databases["monitoring"] == "rnnp_t_monitoring"
    assert stack.status(folder)["running"] is False
    r = cli("stack", "status", "--folder", folder, cwd=tmp_path)
    assert r.returncode == 1 and "no stack running" in r.stdout
    r = cli("stack", "env", "--folder", folder, cwd=tmp_path)
    assert r.returncode != 0 and "no stack is running" in r.stderr


def test_deploy_on_a_pool_needs_the_prefect_server(tmp_path, monkeypatch):
    from flows import deploy

    monkeypatch.setattr("flows.tune_worker.api_url", lambda: None)  # no Prefect server (nor a test harness's)
    cfg = load_config("seed_sine", {"stores": {"root": str(tmp_path)}})
    with pytest.raises(PipelineError, match="needs the Prefect server .*stack env"):
        deploy.deploy_to_pool("seed_sine", cfg, stores.resolve(cfg.stores, {}), "rnn-pipeline")


def test_a_pool_run_moves_to_the_folder_it_was_deployed_from(tmp_path, monkeypatch):
    from flows.runtime import WORKDIR_ENV, enter_workdir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "project").mkdir()
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "project"))
    enter_workdir()
    assert os.getcwd() == str(tmp_path / "project")
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "gone"))  # a folder this worker cannot see: said, not ignored
    with pytest.raises(PipelineError, match="gone .*RNNP_WORKDIR.*cannot see"):
        enter_workdir()
    assert os.getcwd() == str(tmp_path / "project")
    monkeypatch.delenv(WORKDIR_ENV)
    enter_workdir()  # not a pool run: stays where it is
    assert os.getcwd() == str(tmp_path / "project")


def test_the_ray_runner_says_how_to_get_it_where_prefect_ray_is_missing():
    pytest.importorskip("prefect_dask")
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("prefect-ray is installed here: the runner is built, not refused")
    from flows.fanout import ray_runner
    from rnn_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="pip install prefect-ray"):
        ray_runner(2, None)


def test_started_tuning_workers_wait_for_their_training_run_to_release_them(tmp_path):
    """Worker runs start before the training run has its MLflow run: each waits on the study for its launch's
    release (an earlier launch's does not count), ends at once when the training run withdraws them (it failed
    first), and gives up with an error naming the study when nothing comes."""
    import threading

    import optuna

    from flows.tune_worker import Launch, wait_for_release

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    earlier, launch = Launch(study, "pool", "d", [], None), Launch(study, "pool", "d", [], None)
    earlier.release("0", "an-earlier-run")  # a resumed study keeps an earlier run's release
    timer = threading.Timer(1.0, launch.release, ("7", "parent-run"))
    timer.start()
    try:
        assert wait_for_release(url, "s", launch.id, timeout=120) == ("7", "parent-run")
    finally:
        timer.cancel()
    again = Launch(study, "pool", "d", [], None)
    again.withdraw("the MLflow server did not answer")
    with pytest.raises(PipelineError, match="withdrew its tuning workers: the MLflow server did not answer"):
        wait_for_release(url, "s", again.id, timeout=120)
    with pytest.raises(PipelineError, match="did not release its tuning workers on study 'other'"):
        wait_for_release(url, "other", launch.id, timeout=0.2)
