"""What a monitoring pass shows someone watching its schedule in Prefect's UI: the run's name (model and batches),
its final state's name (the verdict), and a markdown artifact with the verdict table. Plain functions of the pass's
summary; flows/monitoring.py makes the Prefect calls.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

# the state a pass ends in (always COMPLETED) is named after its worst verdict
STATE_NAMES = {"degraded": "Degraded", "drift": "Drift", "invalid": "Invalid", "ok": "OK"}
_RANK = ["degraded", "drift", "invalid", "ok"]
NO_NEW = "No new batches"
NO_NEW_LOG = "No new data"  # an inference-log pass with too little new to judge
SKIPPED = "Skipped"
NAME_LIMIT = 120


def artifact_key(model_name: str) -> str:
    """`monitoring-<model>`: lowercase letters, digits and dashes, as Prefect requires of a key."""
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-") or "model"
    return f"monitoring-{slug}"


def run_name(model_name: str, batches: list[str] | None = None, when: datetime | None = None) -> str:
    """`<model>-<UTC time>` before the batches are listed; `<model>: <first batch>[ .. <last> (n)]` after."""
    if not batches:
        return f"{model_name}-{(when or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S')}"
    name = f"{model_name}: {batches[0]}"
    if len(batches) > 1:
        name += f" .. {batches[-1]} ({len(batches)} batches)"
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT - 3] + "..."


def state_name(summary: dict) -> str:
    """Degraded / Drift / Invalid / OK (the worst verdict of the pass), No new batches (an inference-log pass: No
    new data), or Skipped (another pass holds the lock)."""
    if summary.get("skipped"):
        return SKIPPED
    verdicts = {b.get("verdict") for b in summary.get("batches") or []}
    for v in _RANK:
        if v in verdicts:
            return STATE_NAMES[v]
    return NO_NEW_LOG if summary.get("source") == "inference_log" else NO_NEW


def state_message(summary: dict) -> str:
    """One line: what was judged, the verdicts and what was done."""
    if summary.get("skipped"):
        return f"skipped: {summary['skipped']}"
    rows = summary.get("batches") or []
    if not rows:
        return ("not enough new predictions or actuals in the inference log to judge"
                if summary.get("source") == "inference_log" else f"no new batches in {summary.get('incoming')}")
    parts = []
    for b in rows:
        s = f"{b['batch']}: {b['verdict']}"
        if b.get("action") not in (None, "none"):
            s += f" -> {b['action']}"
            if str(b["action"]).startswith("retrain") and b.get("new_champion_version"):
                s += f" (champion v{b['new_champion_version']})"
        parts.append(s)
    text = f"{summary.get('model_name')}: " + "; ".join(parts)
    return text if len(text) <= 1000 else text[:997] + "..."


def _cell(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def _uri(path) -> str | None:
    if not path:
        return None
    try:
        return Path(path).resolve().as_uri()
    except ValueError:
        return None


def artifact_markdown(summary: dict, dashboard: str | Path | None = None) -> str:
    """The markdown artifact of a pass: a verdict table (one row per batch) with links to each report and the MLflow
    run, and to the model's dashboard page."""
    rows = summary.get("batches") or []
    name = state_name(summary)
    lines = [f"## Monitoring {_cell(summary.get('model_name'))}: {name}", "",
             f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, source {_cell(summary.get('source'))}: "
             f"{_cell(state_message(summary))}", ""]
    if rows:
        lines += ["| batch | verdict | drift share | error ratio | accuracy | action | champion judged | "
                  "new version | champion after | report | MLflow run |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in rows:
            uri = _uri(b.get("report_path"))
            report = f"[{_cell(Path(b['report_path']).name)}]({uri})" if uri else "-"
            run = f"`{b['mlflow_run_id']}`" if b.get("mlflow_run_id") else "-"
            lines.append("| " + " | ".join([
                _cell(b.get("batch")), f"**{_cell(b.get('verdict'))}**", _cell(b.get("drift_share")),
                _cell(b.get("error_ratio")), _cell(b.get("champion_accuracy")), _cell(b.get("action")),
                "v" + _cell(b.get("champion_version")), _cell(b.get("new_version")),
                "v" + _cell(b.get("new_champion_version")), report, run]) + " |")
        lines.append("")
    uri = _uri(dashboard)
    if uri:
        lines.append(f"Dashboard of every batch: [{_cell(Path(dashboard).name)}]({uri}) "
                     f"(`{_cell(str(dashboard))}`)")
    return "\n".join(lines) + "\n"
