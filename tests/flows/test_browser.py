"""What a new user sees, in a real browser: Debian's Chromium, headless, driven through Playwright (the system browser,
no browser download). One model is trained and monitored through the CLI against a real Prefect server with its
UI; then the MLflow UI (`rnn-pipeline ui`), the model service (`rnn-pipeline serve`), the monitoring dashboard and a
drift report are opened as pages and checked for what a user must see there.

Skipped, with the reason, where Chromium or Playwright is missing (`make browser` installs Debian's chromium, as root);
RNNP_REQUIRE_BROWSER=1 (set by .ci/run) turns that skip into a failure. RNNP_SCREENSHOTS=<folder> saves each page as
a PNG there (`make screenshots` writes the README's pictures in docs/screenshots)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from conftest import REPO, put_prefect_db
from test_monitoring import NAME, add_batch, monitoring_config

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = os.environ.get("RNNP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("RNNP_SCREENSHOTS")
WAIT_MS = 90_000  # a page's content on a loaded 2-core machine: generous, and only ever waited on as a condition


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium package (apt, as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `make setup` installs the dev extras"
    return None


if _missing():
    if os.environ.get("RNNP_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"RNNP_REQUIRE_BROWSER=1 but the browser test cannot run: {_missing()}")
    pytest.skip(_missing(), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until `url` answers 200 (bounded; fails with the process's log if it exits or the deadline passes)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _cli(args: list[str], env: dict, folder: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    (folder / f"{name}.log").write_text(out.stdout + out.stderr)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory, prefect_db_template):
    """Train (v1), then one monitoring pass over an ordinary batch and a shifted one (degraded: retrain), all through
    the CLI against a Prefect server with its UI; then the MLflow UI and the service. Every process is stopped after."""
    folder = tmp_path_factory.mktemp("browser")
    state = folder / "state"
    (folder / "incoming").mkdir()
    cfg = monitoring_config(folder, state)
    procs: list[subprocess.Popen] = []

    def start(args: list[str], env: dict, name: str) -> tuple[subprocess.Popen, Path]:
        log = folder / f"{name}.log"
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        prefect_port = _free_port()
        base_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
        server_env = {**base_env, "PREFECT_HOME": str(folder / "prefect"), "PREFECT_UI_ENABLED": "true",
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL":
                      f"http://127.0.0.1:{prefect_port}/api"}
        put_prefect_db(prefect_db_template, folder / "prefect")  # migrated already (conftest)
        prefect = str(Path(sys.executable).parent / "prefect")
        proc, log = start([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                          server_env, "prefect-server")
        prefect_url = f"http://127.0.0.1:{prefect_port}"
        _wait_http(prefect_url + "/api/health", proc, log)
        env = {**base_env, "PREFECT_API_URL": prefect_url + "/api", "PREFECT_HOME": str(folder / "client")}

        _cli(["train", "--config", cfg], env, folder, "train")
        # the MLflow UI starts while the monitoring pass runs, and the service beside it after (bounded waits on both)
        ui_port = _free_port()
        ui, ui_log = start([sys.executable, "-m", "flows.cli", "ui", "--config", cfg, "--port", str(ui_port)],
                           base_env, "mlflow-ui")
        mlflow_url = f"http://127.0.0.1:{ui_port}"
        add_batch(folder, "b001.csv", 1000)
        add_batch(folder, "b002.csv", 1250, amplitude=1.6, frequency=2.0)
        _cli(["monitor", "--config", cfg], env, folder, "monitor")

        svc_port = _free_port()
        proc, log = start([sys.executable, "-m", "flows.cli", "serve", "--config", cfg, "--port", str(svc_port)],
                          base_env, "serve")
        service_url = f"http://127.0.0.1:{svc_port}"
        _wait_http(mlflow_url + "/health", ui, ui_log)
        _wait_http(service_url + "/health", proc, log)

        uri = f"sqlite:///{state / 'mlflow.db'}"
        client = mlflow.MlflowClient(uri, registry_uri=uri)
        flow_runs = httpx.post(prefect_url + "/api/flow_runs/filter", json={}, timeout=30).json()
        flows = {f["id"]: f["name"] for f in httpx.post(prefect_url + "/api/flows/filter", json={}, timeout=30).json()}
        yield {"flows": flows, "folder": folder, "state": state, "client": client, "prefect": prefect_url,
               "mlflow": mlflow_url, "service": service_url, "flow_runs": flow_runs}
    finally:  # all stopped at once, then waited for (bounded)
        live = [p for p in procs if p.poll() is None]
        for proc in live:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 60
        for proc in live:
            try:
                proc.wait(max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))


def without_assistant(page) -> None:
    """Close MLflow 3's assistant panel (it opens beside every page and takes a quarter of the width), as a user
    would with its X, before a screenshot."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()


def see(page, text: str | re.Pattern) -> None:
    """Wait until `text` is visible on the page (the pages are single-page apps that render after loading data); on
    failure, say what the page showed instead."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.get_by_text(text).first.wait_for(state="visible")
    except PageTimeout:
        shot(page, "failed")
        pytest.fail(f"{text!r} never became visible on {page.url}; the page shows:\n{page.inner_text('body')[:3000]}")


def test_the_mlflow_model_page_shows_the_champion_and_why(site, page):
    c = site["client"]
    champion = c.get_model_version_by_alias(NAME, "champion")
    page.goto(f"{site['mlflow']}/#/models/{NAME}/versions/{champion.version}")
    see(page, "champion")
    # the version's markdown description, rendered: the gate's decision and its reason, and the metric table
    decision = champion.tags["gate.decision"]
    see(page, re.compile(r"Gate: " + decision.replace("_", " ")))
    body = page.inner_text("body")
    assert champion.tags["gate.reason"][:40] in body
    assert "persistence" in body  # the baselines beside the version's own figures
    without_assistant(page)
    shot(page, "mlflow-model-version")
    # the registered models list: MLflow shows the newest version's alias first, a newer challenger hiding the
    # champion behind "+1"; the model's tag 'champion' names it in the Tags column
    page.goto(f"{site['mlflow']}/#/models")
    see(page, NAME)
    see(page, re.compile(rf"champion\W+version {champion.version}"))


def test_the_mlflow_run_page_shows_a_named_run_its_metrics_and_dataset(site, page):
    c = site["client"]
    champion = c.get_model_version_by_alias(NAME, "champion")
    run = c.get_run(champion.run_id)
    assert re.fullmatch(rf"{NAME} v{champion.version} \(.+\)", run.info.run_name)
    page.goto(f"{site['mlflow']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    see(page, run.info.run_name)
    see(page, "test_mse")
    see(page, "seed_sine")  # the logged dataset (the run's Datasets section)
    body = page.inner_text("body")
    # metric values are shown rounded, as MLflow's UI does: the first digits of the logged test MSE are there
    mse = run.data.metrics["test_mse"]
    assert f"{mse:.3g}"[:4] in body or f"{mse:.4f}"[:5] in body, (mse, body[:2000])
    without_assistant(page)
    shot(page, "mlflow-run")


def test_the_mlflow_runs_page_opens_on_the_pipelines_saved_view_with_scores_and_gate_columns(site, page):
    """The runs table of a model-training experiment (not the GenAI overview), through the saved view the pipeline
    writes: the run names, the test metric beside the baselines', the tuned architecture and the gate's decision."""
    from rnn_pipeline.tracking import VIEW_NAME, view_fragment

    c = site["client"]
    exp = c.get_experiment_by_name(NAME)
    page.goto(f"{site['mlflow']}/{view_fragment(exp.experiment_id)}")
    runs = c.search_runs([exp.experiment_id], "tags.gate.decision != ''")
    for r in runs:
        see(page, r.info.run_name)
    see(page, VIEW_NAME)
    without_assistant(page)
    for column in ("test_mse", "skill_vs_persistence", "best.hidden"):
        see(page, column)
    # the table draws only the columns in sight: scroll it to its right end, as a user would, for the gate's column
    page.locator(".ag-body-horizontal-scroll-viewport").first.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    see(page, "gate.decision")
    see(page, "promoted")  # v1's decision, in its column
    page.get_by_role("button", name="Exit shared view").first.click()  # as a user would, then the plain table again
    see(page, runs[0].info.run_name)
    page.goto(f"{site['mlflow']}/{view_fragment(exp.experiment_id)}")
    see(page, "test_mse")
    without_assistant(page)
    page.locator('[data-component-id="mlflow.experiment_page.shared_view.dismiss"]').first.click()
    shot(page, "mlflow-runs")


def test_the_monitoring_dashboard_shows_each_batch_verdict_and_version(site, page):
    reports = site["state"] / "reports" / NAME
    page.goto((reports / "index.html").as_uri())  # a static page: loaded means rendered
    body = page.inner_text("body")
    assert "b002.csv" in body, body[:1500]
    assert "b001.csv" in body and "ok" in body and "degraded" in body
    assert re.search(r"retrain", body)
    shot(page, "monitoring-dashboard")


def test_a_drift_report_carries_model_version_batch_verdict_and_thresholds(site, page):
    reports = site["state"] / "reports" / NAME
    [degraded] = [p for p in reports.glob("b002*.html")]
    page.goto(degraded.as_uri())
    see(page, "degraded")  # the header; Evidently's widgets render from its script after loading
    body = page.inner_text("body")
    assert NAME in body and "b002.csv" in body and re.search(r"version\s*1|v1\b", body), body[:1500]
    assert "error ratio" in body.lower() and "threshold" in body.lower()
    assert "value_step" in body and "from one step to the next" in body  # the legend of the window features
    shot(page, "drift-report")


def test_the_prefect_flow_run_page_shows_the_verdict_as_its_state(site, page):
    [mon] = [r for r in site["flow_runs"] if site["flows"].get(r["flow_id"]) == "rnn-monitoring"]
    assert mon["state_type"] == "COMPLETED" and mon["state_name"] != "Completed"  # a success, named by the verdict
    page.goto(f"{site['prefect']}/runs/flow-run/{mon['id']}")
    see(page, mon["name"])
    see(page, mon["state_name"])
    page.get_by_text("Artifacts").first.click()
    see(page, re.compile(r"degraded"))
    shot(page, "prefect-flow-run")


def test_the_service_docs_name_the_model_and_try_it_out_answers_200(site, page):
    c = site["client"]
    champion = c.get_model_version_by_alias(NAME, "champion")
    page.goto(f"{site['service']}/docs")
    see(page, "/predict")
    body = page.inner_text("body")
    assert NAME in body and f"version {champion.version}" in body.lower(), body[:1500]
    page.locator("#operations-default-predict, [id*='predict']").first.click()
    page.get_by_role("button", name="Try it out").first.click()
    page.get_by_role("button", name="Execute").first.click()
    status = page.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip().startswith("200"), page.locator(".live-responses-table").inner_text()
    shot(page, "service-docs")
