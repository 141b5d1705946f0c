"""Backtests in the flows: the training flow's backtest step (refits every k origins, logged to MLflow, the gate on
the backtest mean) and `rnn-pipeline backtest` of a registered model."""

import mlflow
import pytest
from conftest import write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("backtest")
    cfg = write_config(folder, name="bt", n_trials=0, epochs=3, floor=None, extra="""\
        features: {window: 20, horizon: 5}
        backtest: {origins: 4, gate: true}
        evaluation: {season: null, plots: true}
        """)
    return folder, cfg, training_flow(str(cfg))


def test_the_training_flow_backtests_and_gates_on_the_backtest_mean(trained):
    folder, cfg, s = trained
    bt = s["backtest"]
    assert bt["n_origins"] == 4 and bt["step"] == 5 and [o["origin"] for o in bt["origins"]] == [1, 2, 3, 4]
    assert set(bt["models"]) == {"rnn", "persistence", "ridge", "ridge_last"}
    # the gate scored the registered pyfunc from the same origins, and the floor from the backtest's persistence
    assert s["gate"]["challenger"] == pytest.approx(bt["models"]["rnn"]["mse"], rel=1e-4)
    assert s["gate"]["floor"]["persistence"]["score"] == pytest.approx(bt["models"]["persistence"]["mse"])
    assert s["promoted"] == (bt["models"]["rnn"]["mse"] < bt["models"]["persistence"]["mse"])
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri)
    run = c.get_run(s["mlflow_run_id"])
    assert run.data.metrics["backtest_rnn_mse"] == pytest.approx(bt["models"]["rnn"]["mse"])
    assert run.data.params["backtest.origins"] == "4"
    assert {a.path for a in c.list_artifacts(s["mlflow_run_id"], "backtest")} == {"backtest/backtest.png",
                                                                                 "backtest/origins.json"}


def test_backtest_command_backtests_a_registered_model_and_logs_a_run(trained, cli):
    folder, cfg, s = trained
    model = f"models:/bt/{s['model_version']}"
    code, stdout, stderr = cli("backtest", "--config", cfg, "--model", model, "--origins", "4")
    assert code == 0, stderr
    assert f"bt v{s['model_version']}: backtest: 4 origins, 5 steps apart, mse mean" in stdout
    assert "rnn_mse" in stdout and "persistence_mse" in stdout
    rnn_line = next(line for line in stdout.splitlines() if line.strip().startswith("rnn "))
    # the same model from the same origins: the training flow's figure
    assert float(rnn_line.split()[1]) == pytest.approx(s["backtest"]["models"]["rnn"]["mse"], abs=6e-5)  # 4 places
    code, stdout, stderr = cli("backtest", "--config", cfg, "--model", model, "--origins", "200")
    assert code != 0 and "backtest: 200 origins 5 steps apart need" in stderr


def test_refit_every_k_origins_in_the_training_flow(tmp_path, prefect_harness):
    from flows.training import summary_table, training_flow

    cfg = write_config(tmp_path, name="btr", n_trials=0, epochs=2, extra="""\
        features: {window: 20, horizon: 5}
        backtest: {origins: 3, refit: 2}
        """)
    s = training_flow(str(cfg))
    bt = s["backtest"]
    assert bt["n_origins"] == 3 and "backtest: 3 origins, 5 steps apart, mse mean ± std" in summary_table(s)
    # refitted models forecast the first and third origins: still scored beside the same baselines
    assert set(bt["models"]) >= {"rnn", "persistence"} and all(v["mse"] > 0 for v in bt["models"].values())


def test_refits_fanned_out_on_dask_forecast_as_the_refits_fitted_in_process(tmp_path, prefect_harness):
    """backtest.workers 2: the refits are fitted on a local Dask cluster (flows.fanout) and the backtest's figures
    are those of the same refits fitted one after another in the training process."""
    from flows.training import training_flow

    runs = {}
    for workers in (0, 2):
        (tmp_path / f"w{workers}").mkdir()
        cfg = write_config(tmp_path / f"w{workers}", name=f"btd{workers}", n_trials=0, epochs=2, extra=f"""\
            features: {{window: 20, horizon: 5}}
            backtest: {{origins: 4, refit: 1, workers: {workers}}}
            """)
        runs[workers] = training_flow(str(cfg))
    assert "backtest_refits" in runs[2]["timings"] and "backtest_refits" not in runs[0]["timings"]
    here, there = runs[0]["backtest"], runs[2]["backtest"]
    assert there["n_origins"] == here["n_origins"] == 4
    for m in ("rnn", "persistence", "ridge"):
        assert there["models"][m]["mse"] == pytest.approx(here["models"][m]["mse"], rel=1e-3), m
