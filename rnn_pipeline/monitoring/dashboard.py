"""A model's monitoring over time, as one static page: `reports/<name>/index.html`, rewritten from the monitoring
store after every pass.

A table of every judged batch (newest first: time, batch, champion judged, verdict, drift share, error ratio, the
champion's MSE or accuracy on it, action, champion after it, its report while kept) and line charts of the drift
share, the error ratio and (classifiers) the accuracy per batch, with the thresholds and the retrains marked. Plain
HTML and inline SVG: no script, nothing fetched, it opens offline from the folder.
"""

from __future__ import annotations

import html
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from rnn_pipeline.monitoring.report import DASHBOARD

VERDICT_COLOURS = {"ok": "#2e7d32", "drift": "#ef6c00", "degraded": "#c62828", "invalid": "#757575"}


def write_dashboard(store, model_name: str, folder: str | Path, *, drift_share: float | None = None,
                    error_ratio: float | None = None, title: str | None = None) -> Path:
    """Write `folder/index.html` from the monitoring store's rows for `model_name` (`drift_share`, `error_ratio`:
    the thresholds drawn on the charts). Returns the page's path. Written whole or not at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    page = render_dashboard(store.history(model_name), model_name, folder, drift_share=drift_share,
                            error_ratio=error_ratio, title=title)
    path = folder / DASHBOARD
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _value(x) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return str(x)


def _num(x, digits: int = 4) -> str:
    v = _value(x)
    return "-" if v is None else f"{v:.{digits}g}"


def _time(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    try:
        t = pd.Timestamp(x)
        if t.tzinfo is None:
            t = t.tz_localize("UTC")
        return t.tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(x)


def _report_link(path, folder: Path) -> str:
    """The report's link while it is kept (relative inside the folder), 'pruned' once removed."""
    p = _text(path)
    if not p:
        return "-"
    f = Path(p)
    if not f.exists():
        return '<span class="muted" title="removed by monitoring.keep_reports">pruned</span>'
    try:
        href = f.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        href = f.resolve().as_uri()
    return f'<a href="{html.escape(href, quote=True)}">report</a>'


def render_dashboard(frame: pd.DataFrame, model_name: str, folder: Path, *, drift_share: float | None = None,
                     error_ratio: float | None = None, title: str | None = None) -> str:
    """The page for a model's store rows (oldest first, as MonitoringStore.history returns them)."""
    e = html.escape
    rows = frame.to_dict("records")
    title = title or f"Monitoring: {model_name}"
    has_mse = any(_value(r.get("champion_mse")) is not None for r in rows)
    has_acc = any(_value(r.get("champion_accuracy")) is not None for r in rows)
    counts = pd.Series([r.get("verdict") for r in rows]).value_counts().to_dict() if rows else {}
    retrains = sum(1 for r in rows if _text(r.get("action")).startswith("retrain"))
    promoted = sum(1 for r in rows if _text(r.get("action")).endswith("promoted"))
    current = next((_text(r.get("new_champion_version")) for r in reversed(rows)
                    if _text(r.get("new_champion_version"))), "-")
    summary = (f"{len(rows)} batch(es) judged: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
               + f"; {retrains} retrain(s), {promoted} promoted; champion now v{current}") if rows else \
        "no batch judged yet"

    head = ["#", "time (UTC)", "batch", "champion", "verdict", "drift share", "error ratio"]
    head += ["champion MSE"] if has_mse or not has_acc else []
    head += ["accuracy", "reference accuracy"] if has_acc else []
    head += ["action", "new champion", "report"]
    body = []
    for i, r in reversed(list(enumerate(rows, 1))):
        verdict = _text(r.get("verdict"))
        colour = VERDICT_COLOURS.get(verdict, "#333")
        cells = [str(i), _time(r.get("created_at")), e(_text(r.get("batch"))),
                 "v" + e(_text(r.get("champion_version")) or "-"),
                 f'<b style="color:{colour}">{e(verdict)}</b>', _num(r.get("drift_share"), 3),
                 _num(r.get("error_ratio"))]
        if has_mse or not has_acc:
            cells.append(_num(r.get("champion_mse")))
        if has_acc:
            cells += [_num(r.get("champion_accuracy")), _num(r.get("reference_accuracy"))]
        action = e(_text(r.get("action")))
        if _text(r.get("new_version")):
            action += f" (v{e(_text(r.get('new_version')))})"
        message = _text(r.get("message"))
        if message:
            action = f'<span title="{e(message, quote=True)}">{action}</span>'
        cells += [action, "v" + e(_text(r.get("new_champion_version")) or "-"),
                  _report_link(r.get("report_path"), folder)]
        body.append('<tr class="row">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")

    labels = [_text(r.get("batch")) for r in rows]
    verdicts = [_text(r.get("verdict")) for r in rows]
    marks = [(i, _text(r.get("action")), _text(r.get("new_champion_version"))) for i, r in enumerate(rows)
             if _text(r.get("action")).startswith("retrain")]
    charts = [svg_chart("drift share", [_value(r.get("drift_share")) for r in rows], labels, verdicts,
                        threshold=drift_share, marks=marks, y_max=1.0)]
    if any(_value(r.get("error_ratio")) is not None for r in rows) or not has_acc:
        charts.append(svg_chart("error ratio", [_value(r.get("error_ratio")) for r in rows], labels, verdicts,
                                threshold=error_ratio, marks=marks))
    if has_acc:
        charts.append(svg_chart("accuracy", [_value(r.get("champion_accuracy")) for r in rows], labels, verdicts,
                                marks=marks, y_max=1.0))
    thresholds = []
    if drift_share is not None:
        thresholds.append(f"drift at a drift share of {drift_share} or more")
    if error_ratio is not None:
        thresholds.append(f"degraded at an error ratio of {error_ratio} or more")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    legend = " ".join(f'<span style="color:{c}">&#9679; {v}</span>' for v, c in VERDICT_COLOURS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; white-space: nowrap; }}
th {{ background: #f4f4f4; position: sticky; top: 0; }}
.muted {{ color: #888; }} .charts {{ display: flex; flex-wrap: wrap; gap: 16px; margin: 12px 0 20px; }}
svg {{ background: #fff; border: 1px solid #e4e4e4; }}
</style></head>
<body>
<h2>{e(title)}</h2>
<p>{e(summary)}.{' Thresholds: ' + e('; '.join(thresholds)) + '.' if thresholds else ''}</p>
<p class="muted">Written {now} from the monitoring store, after every monitoring pass. Points: {legend};
dotted lines: retrains (the version that became champion). A report link stays while monitoring.keep_reports keeps
the report.</p>
<div class="charts">{''.join(charts)}</div>
<table id="batches"><thead><tr>{''.join(f'<th>{e(h)}</th>' for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


def svg_chart(name: str, values: list[float | None], labels: list[str], verdicts: list[str], *,
              threshold: float | None = None, marks: list[tuple[int, str, str]] = (), y_max: float | None = None,
              width: int = 560, height: int = 220) -> str:
    """A line chart of one figure per batch (None: a gap), points coloured by verdict, the threshold dashed, the
    retrains dotted; a log scale when the largest value is more than 20 times the smallest."""
    e = html.escape
    left, right, top, bottom = 52, 12, 26, 30
    w, h = width - left - right, height - top - bottom
    finite = [v for v in values if v is not None]
    n = len(values)
    out = [f'<svg class="chart" data-name="{e(name, quote=True)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{e(name)} per batch</text>']
    if not finite:
        out.append(f'<text x="{left}" y="{top + h / 2:.0f}" font-size="12" fill="#888">no values yet</text></svg>')
        return "".join(out)
    lo_v, hi_v = min(finite + ([threshold] if threshold is not None else [])), max(
        finite + ([threshold] if threshold is not None else []))
    log = lo_v > 0 and hi_v / lo_v > 20 and y_max is None
    if log:
        lo, hi = math.log10(lo_v) - 0.1, math.log10(hi_v) + 0.1
    else:
        lo, hi = min(0.0, lo_v), (y_max if y_max is not None and hi_v <= y_max else hi_v * 1.1 or 1.0)
    if hi <= lo:
        hi = lo + 1.0

    def x(i: int) -> float:
        return left + (w * (i + 0.5) / n)

    def y(v: float) -> float:
        t = math.log10(v) if log else v
        return top + h - h * (t - lo) / (hi - lo)

    # axes and ticks
    out.append(f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#999"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#999"/>')
    ticks = ([10 ** k for k in range(math.ceil(lo), math.floor(hi) + 1)] if log
             else [lo + (hi - lo) * k / 4 for k in range(5)])
    for t in ticks:
        yy = y(t)
        out.append(f'<line x1="{left - 4}" y1="{yy:.1f}" x2="{left + w}" y2="{yy:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>')
    step = max(1, math.ceil(n / 10))
    for i in range(0, n, step):
        out.append(f'<text x="{x(i):.1f}" y="{top + h + 14}" font-size="10" text-anchor="middle">{i + 1}</text>')
    out.append(f'<text x="{left + w / 2:.0f}" y="{height - 4}" font-size="10" text-anchor="middle" fill="#666">'
               f'batch{" (log scale)" if log else ""}</text>')
    for i, action, version in marks:
        out.append(f'<line class="retrain" x1="{x(i):.1f}" y1="{top}" x2="{x(i):.1f}" y2="{top + h}" '
                   f'stroke="#1565c0" stroke-dasharray="2,3"><title>{e(labels[i])}: {e(action)}</title></line>')
        if action.endswith("promoted") and version:
            out.append(f'<text x="{x(i) + 3:.1f}" y="{top + 10}" font-size="10" fill="#1565c0">v{e(version)}</text>')
    if threshold is not None and (not log or threshold > 0):
        ty = y(threshold)
        out.append(f'<line class="threshold" x1="{left}" y1="{ty:.1f}" x2="{left + w}" y2="{ty:.1f}" '
                   f'stroke="#c62828" stroke-dasharray="6,4"><title>threshold {threshold}</title></line>')
    # the line, broken at gaps
    segment: list[str] = []
    for i, v in enumerate(values + [None]):
        if v is not None and (not log or v > 0):
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            continue
        if len(segment) > 1:
            out.append(f'<polyline fill="none" stroke="#555" stroke-width="1.5" points="{" ".join(segment)}"/>')
        segment = []
    for i, v in enumerate(values):
        if v is None or (log and v <= 0):
            continue
        colour = VERDICT_COLOURS.get(verdicts[i], "#333")
        out.append(f'<circle class="point" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
                   f'<title>{i + 1}. {e(labels[i])}: {e(name)} {v:.4g} ({e(verdicts[i])})</title></circle>')
    out.append("</svg>")
    return "".join(out)
