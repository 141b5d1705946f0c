"""What a monitoring pass shows: the header of each Evidently report (model, version, batch, verdict, error ratio,
thresholds, the features' legend), the small report beside one shared Evidently bundle, monitoring.keep_reports, the
Prefect markdown artifact and the run's named final state, the model's dashboard page; and the pieces alone."""

import json
import re
import shutil
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from test_monitoring import NAME, add_batch, history, monitoring_config, trained  # noqa: F401  (trained: fixture)

from rnn_pipeline.monitoring import publish
from rnn_pipeline.monitoring.report import DASHBOARD, ReportHeader, inject_after_body, lib_name, prune_reports, save_report
from rnn_pipeline.monitoring.store import MonitoringStore

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, trained):  # noqa: F811  (the fixture imported above)
    shutil.copytree(trained, tmp_path / "state")
    (tmp_path / "incoming").mkdir()

    def config(keep_reports=2, retrain=False):
        path = monitoring_config(tmp_path, tmp_path / "state")
        text = open(path).read()
        text = text.replace("  error_ratio: 1.5\n", f"  error_ratio: 1.5\n  keep_reports: {keep_reports}\n")
        if not retrain:
            text = text.replace("retrain: {", "retrain: {enabled: false, ")
        open(path, "w").write(text)
        return path

    return tmp_path, config


def flow_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def artifacts(key, run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                                                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def test_a_pass_shows_its_verdicts_in_reports_prefect_and_the_dashboard(env):
    from prefect.client.schemas.objects import StateType

    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000)
    add_batch(folder, "b002.csv", 1250)
    add_batch(folder, "b003.csv", 1500, amplitude=1.6, frequency=2.0)  # degraded (retraining off here)
    summary = monitoring_flow(config(keep_reports=2))
    # a plain call still returns the summary dict
    assert isinstance(summary, dict)
    rows = summary["batches"]
    assert [(b["batch"], b["verdict"], b["action"]) for b in rows] == [
        ("b001.csv", "ok", "none"), ("b002.csv", "ok", "none"), ("b003.csv", "degraded", "none")]

    # keep_reports 2: the two newest reports stay, b001's is gone; its store row keeps the path it had
    reports = folder / "state" / "reports" / NAME
    kept = sorted(p.name for p in reports.glob("*.html") if p.name != DASHBOARD)
    assert [n.split("-")[0] for n in kept] == ["b002", "b003"]
    h = history(folder)
    assert h["report_path"].notna().all() and not (reports / h["report_path"].iloc[0].split("/")[-1]).exists()
    assert [str(reports / n) for n in kept] == h["report_path"].tolist()[1:]

    # the report: Evidently's own widgets plus the header, its bundle shared in one file beside the reports
    page = (reports / kept[1]).read_text()
    assert len(page) < 1_500_000 and (reports / lib_name()).stat().st_size > 2_000_000
    assert f'<script src="{lib_name()}"></script>' in page
    for text in ("Monitoring report: model mon, champion v1, batch b003.csv: verdict DEGRADED",
                 "**Error ratio**: ", "degraded at 1.5 or more (monitoring.error_ratio)",
                 "drift at 0.5 or more (monitoring.drift_share)", "wasserstein: per-feature thresholds calibrated",
                 "input window of L = ", "**value_step**: mean absolute change of value from one step to the next",
                 "**value_level**: mean of value over the window", "**value_spread**: standard deviation of value",
                 "**value_next**: the value of value that follows the window", "Dataset Drift"):
        assert text in page, text
    ratio = rows[2]["error_ratio"]
    assert f"**Error ratio**: {ratio:.4g} = champion MSE" in page
    header = re.search(r'"text": "(### Monitoring report[^"]*)"', page).group(1)
    assert header.count(", threshold ") == 4  # each feature's calibrated threshold, in the legend

    # MLflow: the run points at the report (one copy, in the reports folder), no second copy as an artifact
    uri = f"sqlite:///{folder / 'state' / 'mlflow.db'}"
    c = mlflow.MlflowClient(uri, registry_uri=uri)
    run = c.get_run(rows[2]["mlflow_run_id"])
    assert run.data.tags["report_path"] == rows[2]["report_path"]
    assert c.list_artifacts(run.info.run_id, "report") == []

    # Prefect: the run is named after the model and its batches, ends COMPLETED in a state named after the verdict
    fr = flow_run(summary["flow_run_id"])
    assert fr.name == "mon: b001.csv .. b003.csv (3 batches)"
    assert fr.state.type == StateType.COMPLETED and fr.state.name == "Degraded"
    assert "b003.csv: degraded" in fr.state.message
    # ... and publishes the verdict table as a markdown artifact
    [art] = artifacts("monitoring-mon", summary["flow_run_id"])
    assert art.type == "markdown"
    md = art.data
    assert "| batch | verdict | drift share | error ratio |" in md
    assert f"| b003.csv | **degraded** | {rows[2]['drift_share']:.4g} | {ratio:.4g} |" in md
    assert "| b001.csv | **ok** |" in md and "| b002.csv | **ok** |" in md
    assert f"`{rows[2]['mlflow_run_id']}`" in md
    assert f"[{kept[1]}](file://{reports / kept[1]})" in md
    assert f"file://{reports / DASHBOARD}" in md

    # the dashboard: one row per batch, newest first, links to the kept reports, the charts
    assert summary["dashboard"] == str(reports / DASHBOARD)
    dash = (reports / DASHBOARD).read_text()
    table = dash[dash.index('<table id="batches">'):]
    assert table.count('<tr class="row">') == 3
    assert table.index("b003.csv") < table.index("b002.csv") < table.index("b001.csv")
    assert f'<a href="{kept[0]}">report</a>' in table and f'<a href="{kept[1]}">report</a>' in table
    assert table.count(">pruned</span>") == 1
    for col in ("time (UTC)", "champion", "verdict", "drift share", "error ratio", "champion MSE", "action",
                "new champion", "report"):
        assert f"<th>{col}</th>" in table, col
    charts = re.findall(r'<svg class="chart" data-name="([^"]+)".*?</svg>', dash, flags=re.S)
    assert charts == ["drift share", "error ratio"]
    for chart in re.findall(r'<svg class="chart".*?</svg>', dash, flags=re.S):
        assert chart.count('class="point"') == 3 and 'class="threshold"' in chart and "<polyline" in chart
    assert "<script" not in dash and "http" not in dash.replace('xmlns="http://www.w3.org/2000/svg"', "")

    # a pass with nothing new: the state says so, and no artifact hides the last verdict table
    again = monitoring_flow(config(keep_reports=2))
    assert again["batches"] == []
    state = flow_run(again["flow_run_id"]).state
    assert state.type == StateType.COMPLETED and state.name == "No new batches"
    assert artifacts("monitoring-mon", again["flow_run_id"]) == []


def test_a_pass_that_finds_the_lock_held_is_skipped_and_keep_reports_null_keeps_all(env):
    from prefect.client.schemas.objects import StateType

    from flows.monitoring import monitoring_flow

    folder, config = env
    add_batch(folder, "b001.csv", 1000)
    store = MonitoringStore(f"sqlite:///{folder / 'state' / 'monitoring.db'}")
    try:
        with store.lock(f"monitor:{NAME}", 600):
            skipped = monitoring_flow(config(keep_reports="null"))
    finally:
        store.dispose()
    assert skipped["skipped"] and skipped["batches"] == []
    state = flow_run(skipped["flow_run_id"]).state
    assert state.type == StateType.COMPLETED and state.name == "Skipped"
    # the lock released: the batch is judged; with keep_reports null an old report is not pruned
    reports = folder / "state" / "reports" / NAME
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "old-00000000.html").write_text("<html></html>")
    [b] = monitoring_flow(config(keep_reports="null"))["batches"]
    assert b["verdict"] == "ok"
    assert (reports / "old-00000000.html").exists() and len(list(reports.glob("b001-*.html"))) == 1


# ---- the pieces alone ---------------------------------------------------------------------------------------------
def test_state_names_keys_and_run_names():
    rows = [{"batch": "a.csv", "verdict": "ok", "action": "none"},
            {"batch": "b.csv", "verdict": "invalid", "action": "quarantined"}]
    assert publish.state_name({"batches": rows}) == "Invalid"
    rows.append({"batch": "c.csv", "verdict": "drift", "action": "retrain → promoted", "new_champion_version": "2"})
    assert publish.state_name({"batches": rows}) == "Drift"
    assert publish.state_name({"batches": rows + [{"verdict": "degraded"}]}) == "Degraded"
    assert publish.state_name({"batches": [rows[0]]}) == "OK"
    assert publish.state_name({"batches": []}) == "No new batches"
    assert publish.state_name({"batches": [], "source": "inference_log"}) == "No new data"
    assert publish.state_name({"batches": [], "skipped": "another run"}) == "Skipped"
    msg = publish.state_message({"model_name": "m", "batches": rows})
    assert msg == "m: a.csv: ok; b.csv: invalid -> quarantined; c.csv: drift -> retrain → promoted (champion v2)"
    assert publish.artifact_key("Seed_Sine v2") == "monitoring-seed-sine-v2"
    assert publish.artifact_key("__") == "monitoring-model"
    assert publish.run_name("m", ["a.csv"]) == "m: a.csv"
    assert publish.run_name("m", ["x" * 200]).endswith("...") and len(publish.run_name("m", ["x" * 200])) == 120
    assert re.fullmatch(r"m-\d{8}-\d{6}", publish.run_name("m"))


def test_the_header_escapes_what_it_shows_and_falls_back_to_plain_html():
    h = ReportHeader("m", "3", "b</script>*[x](y)_z_.csv", "drift", lines=[("Error ratio", "a & b <c>")],
                     legend=[("value_step", "mean absolute change")])
    md = h.markdown()
    assert "</script>" not in md and "&lt;/script&gt;" in md and "\\*\\[x\\](y)\\_z\\_.csv" in md
    assert "&amp; b &lt;c&gt;" in md and "**value_step**: mean absolute change" in md
    block = h.html()
    assert "</script>" not in block and "&lt;/script&gt;" in block
    assert inject_after_body('<html><body class="x"><p>r</p></body></html>', "<i>h</i>") == \
        '<html><body class="x"><i>h</i><p>r</p></body></html>'


def test_a_report_without_evidently_widgets_gets_the_header_after_body(tmp_path):
    class Bare:  # a snapshot without the widgets the header joins: Evidently's own page, the header injected
        def get_html_str(self, as_iframe):
            return "<html><body><div id=r></div></body></html>"

    h = ReportHeader("m", "1", "b.csv", "ok", lines=[("Verdict", "ok")])
    path = save_report(Bare(), tmp_path / "r" / "b.html", h)
    page = path.read_text()
    assert page.startswith('<html><body><div id="rnn-pipeline-header"') and "<div id=r>" in page
    assert [p.name for p in path.parent.iterdir()] == ["b.html"]  # no bundle in the page: nothing shared


def test_prune_keeps_the_newest_reports_and_never_the_dashboard(tmp_path):
    import os

    for i in range(5):
        p = tmp_path / f"r{i}.html"
        p.write_text("x")
        os.utime(p, ns=(i * 10**9, i * 10**9))
    (tmp_path / DASHBOARD).write_text("d")
    (tmp_path / lib_name()).write_text("js")
    assert prune_reports(tmp_path, None) == []
    gone = prune_reports(tmp_path, 2)
    assert sorted(p.name for p in gone) == ["r0.html", "r1.html", "r2.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([DASHBOARD, lib_name(), "r3.html", "r4.html"])


def test_the_dashboard_of_a_classifier_charts_accuracy(tmp_path):
    from rnn_pipeline.monitoring.dashboard import render_dashboard

    frame = pd.DataFrame([
        {"batch": "t1.csv", "verdict": "ok", "drift_share": 0.1, "error_ratio": None, "champion_mse": None,
         "champion_accuracy": 0.9, "reference_accuracy": 0.92, "champion_version": "1", "action": "none",
         "new_version": None, "new_champion_version": "1", "report_path": None, "message": None,
         "created_at": pd.Timestamp("2025-01-01 10:00", tz="UTC")},
        {"batch": "t2.csv", "verdict": "degraded", "drift_share": 0.6, "error_ratio": None, "champion_mse": None,
         "champion_accuracy": 0.5, "reference_accuracy": 0.92, "champion_version": "1",
         "action": "retrain → promoted", "new_version": "2", "new_champion_version": "2",
         "report_path": str(tmp_path / "gone.html"), "message": "x", "created_at": None}])
    page = render_dashboard(frame, "clf", tmp_path, drift_share=0.5)
    assert re.findall(r'<svg class="chart" data-name="([^"]+)"', page) == ["drift share", "accuracy"]
    assert "<th>accuracy</th>" in page and "<th>champion MSE</th>" not in page
    assert 'class="retrain"' in page and ">v2</text>" in page and ">pruned</span>" in page
    assert "2025-01-01 10:00:00" in page and json.dumps("t2.csv")[1:-1] in page


def test_the_header_of_a_classifier_states_its_accuracy_figures():
    from rnn_pipeline.monitoring.drift import DriftResult
    from rnn_pipeline.monitoring.report import header_for
    from rnn_pipeline.monitoring.task import Outcome

    mc = SimpleNamespace(accuracy_drop=0.1, min_windows=10, error_ratio=1.5, drift_share=0.5, drift_calibration=1.5,
                         drift_method="wasserstein")
    cfg = SimpleNamespace(model_name="clf", monitoring=mc)
    drift = DriftResult(0.4, 2, {"length": {"score": 0.3, "drifted": True, "threshold": 0.2},
                                 "oov_share": {"score": 0.1, "drifted": False, "threshold": 0.2},
                                 "words": {"score": 0.3, "drifted": True, "threshold": 0.2},
                                 "predicted_label": {"score": 0.0, "drifted": False, "threshold": 0.2},
                                 "x_mean": {"score": 0.0, "drifted": False, "threshold": 0.2}},
                        "wasserstein", "auto")
    out = Outcome(drift, 120, "degraded", labels={"accuracy": 0.7, "f1_macro": 0.65, "n_labelled": 120},
                  reference_accuracy=0.9)
    md = header_for(cfg, "4", "t.csv", out, {}, "a batch file").markdown()
    assert "verdict DEGRADED" in md and "champion v4" in md
    assert "**Accuracy**: 0.7 on 120 labelled items (macro F1 0.65) against 0.9" in md
    assert "degraded below 0.8 (test accuracy minus monitoring.accuracy_drop 0.1" in md
    assert "**Error ratio**: - (a classifier is judged on its accuracy)" in md
    assert "**oov_share**: share of the text's tokens outside the model's vocabulary" in md
    assert "**predicted_label**: the champion's predicted label" in md
    assert "**x_mean**: mean of channel x over the sequence" in md
    assert "each row of the comparison is one item" in md
