"""The HTML report of a judged batch: Evidently's drift report with a header saying what was judged and how (model,
version, batch, verdict, error ratio or accuracy, thresholds, what each feature means), written small, and the
retention of a model's reports folder.

The header is Evidently's own markdown text widget, rendered by the report's bundle like every other widget. The
bundle (Evidently's JavaScript, about 3.5 MB of each 3.9 MB report) is written once per folder beside the reports,
as `evidently-<version>.js`, and each report loads it by a relative path: a report still opens offline, from the
folder (copy the .js with it). Should Evidently's layout change, a report falls back to the single file Evidently
writes, with the header injected as plain HTML after <body>.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rnn_pipeline.monitoring.task import Outcome

DASHBOARD = "index.html"  # the model's dashboard page in its reports folder (rnn_pipeline.monitoring.dashboard)
LIB_PREFIX = "evidently-"

# what a drift feature means, by its name (forecasting: <column>_<statistic> over each input window; classification:
# per-item descriptors). rnn_pipeline.forecasting.monitoring and rnn_pipeline.classification.monitoring define them.
_WINDOW_SUFFIXES = {
    "_level": "mean of {c} over the window (its level)",
    "_spread": "standard deviation of {c} over the window (its spread)",
    "_step": "mean absolute change of {c} from one step to the next within the window (how fast it moves)",
    "_next": "the value of {c} that follows the window (what the champion forecasts)",
    "_mean": "mean of channel {c} over the sequence",
    "_std": "standard deviation of channel {c} over the sequence",
}
_NAMED = {
    "length": "length of the item: characters of a text, steps of a sequence",
    "words": "number of words of the text (Evidently's WordCount)",
    "non_letter_share": "percentage of characters of the text that are not letters (Evidently's "
                        "NonLetterCharacterPercentage)",
    "oov_share": "share of the text's tokens outside the model's vocabulary (the model's own tokenizer)",
    "predicted_label": "the champion's predicted label, a categorical column (prediction drift)",
}


def feature_meaning(name: str) -> str | None:
    """What a drift feature means (None for a name this pipeline does not make)."""
    if name in _NAMED:
        return _NAMED[name]
    for suffix, text in _WINDOW_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return text.format(c=name[:-len(suffix)])
    return None


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-" if x is None else str(x)
    return f"{x:.{digits}g}"


@dataclass
class ReportHeader:
    """What the header of a report says: a title, labelled lines, and the legend of the features."""
    model: str
    version: str | None
    batch: str
    verdict: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (feature, meaning)
    legend_note: str = ""

    @property
    def title(self) -> str:
        return (f"Monitoring report: model {self.model}, champion v{self.version or '-'}, batch {self.batch}: "
                f"verdict {self.verdict.upper()}")

    def markdown(self) -> str:
        """For Evidently's text widget (react-markdown, no raw HTML): every value escaped."""
        out = [f"### {_md(self.title)}", ""]
        out += [f"- **{_md(label)}**: {_md(text)}" for label, text in self.lines]
        if self.legend:
            out += ["", f"**Features**{': ' + _md(self.legend_note) if self.legend_note else ''}", ""]
            out += [f"- **{_md(f)}**: {_md(m)}" for f, m in self.legend]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        """The same as a plain, escaped HTML block (the fallback when the header cannot be an Evidently widget)."""
        e = html.escape
        items = "".join(f"<li><b>{e(label)}</b>: {e(text)}</li>" for label, text in self.lines)
        legend = "".join(f"<li><b>{e(f)}</b>: {e(m)}</li>" for f, m in self.legend)
        note = f": {e(self.legend_note)}" if self.legend_note else ""
        return (f'<div id="rnn-pipeline-header" style="font-family:sans-serif;margin:16px 24px">'
                f"<h3>{e(self.title)}</h3><ul>{items}</ul>"
                + (f"<p><b>Features</b>{note}</p><ul>{legend}</ul>" if legend else "") + "</div>")


def _md(text) -> str:
    """Plain text inside a markdown line: the characters that would start markup mid-line backslash-escaped (an
    underscore only at a word's edge: value_level stays as it is), <, > and & as entities (the text also sits in the
    report's script block, where a literal '</script>' would end it), on one line."""
    s = " ".join(str(text).split())
    s = re.sub(r"([\\`*\[\]])", r"\\\1", s)
    s = re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header_for(cfg, version: str | None, batch: str, outcome: Outcome, meta: dict | None = None,
               source: str | None = None) -> ReportHeader:
    """The header of a judged batch's report: the verdict and the figures it was decided on, the thresholds, and
    the legend of the features that were compared (`meta`: the champion's reference metadata)."""
    mc, d, meta = cfg.monitoring, outcome.drift, meta or {}
    h = ReportHeader(cfg.model_name, version, batch, outcome.verdict)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    unit = "items" if outcome.labels is not None or outcome.reference_accuracy is not None else "windows"
    h.lines.append(("Judged", f"{when}, {outcome.n_windows} {unit}"
                    + (f", from {source}" if source else "")))
    h.lines.append(("Verdict", f"{outcome.verdict} (degraded when the champion's error or accuracy check fails, "
                              "else drift when the drift share is reached, else ok)"))
    if outcome.reference_accuracy is not None:  # a classifier: judged on accuracy
        labels = outcome.labels or {}
        floor = outcome.reference_accuracy - mc.accuracy_drop
        if labels.get("accuracy") is None:
            h.lines.append(("Accuracy", "no labels in the batch: judged on drift only"))
        else:
            h.lines.append(("Accuracy", f"{_num(labels['accuracy'])} on {labels.get('n_labelled')} labelled items "
                            f"(macro F1 {_num(labels.get('f1_macro'))}) against {_num(outcome.reference_accuracy)} "
                            f"on the champion's test items; degraded below {_num(floor)} (test accuracy minus "
                            f"monitoring.accuracy_drop {mc.accuracy_drop}, with at least monitoring.min_windows "
                            f"{mc.min_windows} labelled items)"))
        h.lines.append(("Error ratio", "- (a classifier is judged on its accuracy)"))
    elif outcome.error_ratio is None:
        h.lines.append(("Error ratio", f"- (fewer than monitoring.min_windows {mc.min_windows} scoreable windows: "
                        "judged on drift only)"))
    else:
        h.lines.append(("Error ratio", f"{_num(outcome.error_ratio)} = champion MSE {_num(outcome.champion_mse)} on "
                        f"the batch / {_num(outcome.reference_mse)} on its test windows; degraded at "
                        f"{mc.error_ratio} or more (monitoring.error_ratio)"))
    n = len(d.scores)
    h.lines.append(("Drift share", f"{_num(d.share, 3)} ({d.n_drifted} of {n} features drifted); drift at "
                    f"{mc.drift_share} or more (monitoring.drift_share)"))
    if d.threshold == "auto":
        how = (f"per-feature thresholds calibrated on the reference at this batch size (drift_threshold auto, "
               f"x{mc.drift_calibration}), listed below")
    elif d.threshold is None:
        how = "Evidently's default threshold for the method"
    else:
        how = f"threshold {d.threshold} for every numeric feature"
    h.lines.append(("Drift test", f"{d.method or mc.drift_method}: {how}; a feature drifts when its score "
                    + ("is below" if (d.method or mc.drift_method) in _p_value_methods() else "reaches")
                    + " its threshold"))
    for f, s in d.scores.items():
        meaning = feature_meaning(f) or "a feature of the batch"
        thr = s.get("threshold")
        extra = (f" (score {_num(s.get('score'))}"
                 + (f", threshold {_num(thr)}" if thr is not None else "")
                 + (", drifted" if s.get("drifted") else "") + ")")
        h.legend.append((f, meaning + extra))
    if meta.get("window"):
        h.legend_note = (f"each row of the comparison is one input window of L = {meta['window']} steps "
                         "(reference: the series the champion was trained on)")
    elif unit == "items":
        h.legend_note = "each row of the comparison is one item (reference: the items the champion was trained on)"
    return h


def _p_value_methods() -> set[str]:
    from rnn_pipeline.monitoring.drift import P_VALUE_METHODS

    return P_VALUE_METHODS


# ---- writing ----------------------------------------------------------------------------------------------------
def save_report(snapshot, path: str | Path, header: ReportHeader | None = None, share_lib: bool = True) -> Path:
    """Write an Evidently snapshot as HTML with the header on top; with `share_lib` the Evidently bundle is a
    file beside the report instead of inlined into it. Written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _render(snapshot, header)
    if share_lib:
        text = _shared_lib(text, path.parent)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _render(snapshot, header: ReportHeader | None) -> str:
    if header is None:
        return snapshot.get_html_str(as_iframe=False)
    try:  # Evidently's markdown widget first, then the report's own widgets (what Snapshot.get_html_str renders)
        from evidently.core.metric_types import render_widgets
        from evidently.legacy.renderers.html_widgets import group_widget, text_widget

        widgets = [group_widget(title="", widgets=[text_widget(title="", text=header.markdown()),
                                                   *snapshot._widgets])]
        return render_widgets(widgets + list(snapshot._tests_widgets), as_iframe=False)
    except (ImportError, AttributeError, TypeError):
        return inject_after_body(snapshot.get_html_str(as_iframe=False), header.html())


def inject_after_body(page: str, block: str) -> str:
    """`block` right after the page's <body> tag (at the top when there is none)."""
    m = re.search(r"<body[^>]*>", page, flags=re.IGNORECASE)
    return page[:m.end()] + block + page[m.end():] if m else block + page


def _lib_source() -> Path | None:
    try:
        from evidently.legacy.utils.dashboard import STATIC_PATH
    except ImportError:
        return None
    p = Path(STATIC_PATH) / "index.js"
    return p if p.is_file() else None


def lib_name() -> str:
    import evidently

    return f"{LIB_PREFIX}{evidently.__version__}.js"


def _shared_lib(page: str, folder: Path) -> str:
    """The inlined bundle replaced by <script src="evidently-<version>.js"> (the file written beside the report
    once); the page unchanged when its bundle is not the one installed."""
    src = _lib_source()
    if src is None:
        return page
    block = f"<script>{src.read_text(encoding='utf-8')}</script>"
    i = page.find(block)
    if i < 0:
        return page
    target = folder / lib_name()
    if not target.exists() or target.stat().st_size != src.stat().st_size:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    return page[:i] + f'<script src="{html.escape(target.name)}"></script>' + page[i + len(block):]


# ---- retention --------------------------------------------------------------------------------------------------
def report_files(folder: str | Path) -> list[Path]:
    """The HTML reports in a model's reports folder, oldest first (the dashboard page is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.html") if p.is_file() and p.name != DASHBOARD]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def prune_reports(folder: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` reports of the folder (None keeps all). Returns the deleted files."""
    if keep is None:
        return []
    files = report_files(folder)
    gone = files[:max(0, len(files) - keep)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
