"""Batch scoring: predict-batch writes predictions (with prediction ids and the model version) and the inference log,
from a file, a URL or a database table, all or nothing; actuals for them come back through `rnn-pipeline actuals`."""

import functools
import http.server
import io
import threading

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import write_config

from rnn_pipeline.data.datasets import seed_sine
from rnn_pipeline.serving.inference_log import InferenceLog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    from flows.training import training_flow

    folder = tmp_path_factory.mktemp("batch")
    cfg = write_config(folder, name="bat", n_trials=0, epochs=3, extra="""\
        features: {window: 20, horizon: 2}
        serving: {batch_chunk: 7}
        """)
    assert training_flow(str(cfg))["promoted"]
    values = seed_sine()["value"].to_numpy()
    rows = [{"window_id": f"w{w}", "value": values[w + k]} for w in range(30) for k in range(25)]
    pd.DataFrame(rows).to_csv(folder / "histories.csv", index=False)
    return folder, cfg


def _log(folder):
    store = InferenceLog(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    try:
        return store.predictions("bat")
    finally:
        store.dispose()


def test_predict_batch_writes_parquet_and_the_log_and_actuals_come_back(trained, cli):
    """The commands in-process (the `cli` fixture), their flows reporting to the session's Prefect test server."""
    folder, cfg = trained
    out = folder / "scored.parquet"
    code, stdout, stderr = cli("predict-batch", "--config", cfg, "--input", folder / "histories.csv", "--output", out)
    assert code == 0, stderr
    assert "30 predictions of bat v1" in stdout
    got = pd.read_parquet(out)
    bounds = [f"value_h{h}_{side}{level}" for level in (80, 95) for side in ("lo", "hi") for h in (1, 2)]
    assert got.columns.tolist() == ["prediction_id", "window_id", "value_h1", "value_h2", *bounds, "model_version"]
    assert got["window_id"].tolist() == [f"w{w}" for w in range(30)] and set(got["model_version"]) == {"1"}
    assert got["prediction_id"].is_unique
    # the same numbers as `rnn-pipeline predict` (the registered pyfunc) on the same file, up to float32 rounding:
    # chunks of 7 windows and one batch of 30 sum in a different order (~1e-7 at this scale, also near zero)
    code, stdout, stderr = cli("predict", "--config", cfg, "--input", folder / "histories.csv")
    assert code == 0, stderr
    want = pd.read_csv(io.StringIO(stdout))
    np.testing.assert_allclose(got[["value_h1", "value_h2"]].to_numpy(), want[["value_h1", "value_h2"]].to_numpy(),
                               rtol=1e-6, atol=1e-6)
    logged = _log(folder).set_index("prediction_id").loc[got["prediction_id"]]
    assert (logged["source"] == "batch:histories.csv").all() and (logged["model_version"] == "1").all()

    actual = got[["prediction_id"]].assign(value_h1=0.5, value_h2=-0.5)
    actual.to_csv(folder / "actuals.csv", index=False)
    code, stdout, stderr = cli("actuals", "--config", cfg, "--input", folder / "actuals.csv")
    assert code == 0 and "recorded 30 actual(s)" in stdout, stderr
    assert _log(folder).set_index("prediction_id").loc[got["prediction_id"], "actual"].notna().all()
    code, _, stderr = cli("actuals", "--config", cfg, "--input", folder / "actuals.csv")
    assert code == 2 and "already have an actual" in stderr


def _scores(folder, cfg, source, table=None):
    from flows.batch import batch_prediction_flow

    out = folder / f"from-{table or 'url'}.csv"
    s = batch_prediction_flow(str(cfg), source, str(out), table=table)
    assert s["n_predictions"] == 30 and s["model_version"] == "1"
    return pd.read_csv(out)


def test_predict_batch_reads_a_url_and_a_database_table(trained):
    folder, cfg = trained
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        by_url = _scores(folder, cfg, f"http://127.0.0.1:{server.server_port}/histories.csv")
    finally:
        server.shutdown()
    url = f"sqlite:///{folder / 'tables.db'}"
    engine = sa.create_engine(url)
    pd.read_csv(folder / "histories.csv").to_sql("histories", engine, index=False)
    engine.dispose()
    by_table = _scores(folder, cfg, url, table="histories")
    by_file = _scores(folder, cfg, (folder / "histories.csv").as_uri(), table=None)
    for frame in (by_url, by_table):
        np.testing.assert_allclose(frame[["value_h1", "value_h2"]], by_file[["value_h1", "value_h2"]], rtol=1e-9)
        assert not set(frame["prediction_id"]) & set(by_file["prediction_id"])  # every prediction is its own


@pytest.mark.parametrize("change,message", [
    (lambda f: f[~((f.window_id == "w7") & (f.index % 25 < 10))], "window 'w7' has 15 rows"),
    (lambda f: f.assign(value=f.value.where(f.index != 40, "abc")), "row 41"),
    (lambda f: f.rename(columns={"value": "v"}), "input lacks column(s) ['value']"),
])
def test_bad_batch_input_writes_nothing(trained, change, message):
    from flows.batch import batch_prediction_flow
    from rnn_pipeline.errors import DataValidationError

    folder, cfg = trained
    bad = folder / "bad.csv"
    change(pd.read_csv(folder / "histories.csv")).to_csv(bad, index=False)
    before = len(_log(folder))
    out = folder / "never.parquet"
    with pytest.raises(DataValidationError) as e:
        batch_prediction_flow(str(cfg), str(bad), str(out))
    assert message in str(e.value) and "bad.csv" in str(e.value)
    assert not out.exists() and not list(folder.glob(".never*")) and len(_log(folder)) == before
