"""Packaging, registration, aliases and the champion/challenger gate.

Nothing here moves an alias before every score is known: the challenger and the champion are both scored
(through the logged pyfunc, exactly as a user would load them) before a version is created, and a failure
while writing the version deletes it again."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from rnn_pipeline import faults
from rnn_pipeline.classification.bundle import ClassifierBundle
from rnn_pipeline.config import HIGHER_IS_BETTER
from rnn_pipeline.errors import PipelineError, RegistryError
from rnn_pipeline.forecasting.bundle import ForecastBundle
from rnn_pipeline.forecasting.evaluation import skill

log = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
CHAMPION, CHALLENGER = "champion", "challenger"
DECISION_TAG = "gate.decision"


def _req(pkg: str) -> str:
    return f"{pkg}=={metadata.version(pkg).split('+')[0]}"


def log_model(bundle: ForecastBundle | ClassifierBundle, workdir: str | Path, input_example: pd.DataFrame) -> str:
    """Log the bundle as a pyfunc in the active run; returns the model URI."""
    artifacts = bundle.save(workdir)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(PACKAGE_DIR / "pyfunc_model.py"), artifacts=artifacts,
        code_paths=[str(PACKAGE_DIR)], signature=bundle.signature(), input_example=input_example,
        pip_requirements=[_req(p) for p in ("mlflow", "torch", "safetensors", "numpy", "pandas", "scikit-learn")])
    return info.model_uri


def champion_uri(name: str) -> str:
    """The URI of model `name`'s champion (the alias, followed wherever it points)."""
    return f"models:/{name}@{CHAMPION}"


def bundle_of(model) -> ForecastBundle | ClassifierBundle:
    """The bundle inside a loaded pyfunc."""
    return model.unwrap_python_model().bundle



def load(uri: str):
    try:
        # our pyfunc validates its own input, so MLflow's advice to add type hints is noise; MLflow sets its own
        # 'once' filter while loading, so the warnings are recorded and all others shown again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = mlflow.pyfunc.load_model(uri)
        for w in caught:
            if "Add type hints to the `predict` method" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return model
    except MlflowException as e:
        raise RegistryError(f"cannot load model '{uri}': {e.message.splitlines()[0]}") from None


def check_reproduces(got: np.ndarray, expected: np.ndarray) -> float:
    """The seed's save/load check: the reloaded pyfunc's outputs (`got`, from Task.predict_logged) must match the
    in-memory forecasts or probabilities (`expected`) for the same test items. Returns the largest absolute
    difference; raises before anything is registered when they differ."""
    want = expected.reshape(len(got), -1)
    diff = float(np.max(np.abs(got - want))) if len(got) else 0.0
    # float32 networks: batch sizes change the kernels' summation order, so allow float32 rounding at the data's scale
    scale = max(1.0, float(np.max(np.abs(want)))) if len(want) else 1.0
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
        raise PipelineError(f"the logged model does not reproduce the in-memory forecasts (max difference "
                            f"{diff:.3g}); nothing was registered")
    return diff


@dataclass
class GateDecision:
    promoted: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None  # before the decision
    floor: dict[str, dict[str, float]] = field(default_factory=dict)  # baseline -> {"score", "skill"}
    below_floor: bool = False

    @property
    def label(self) -> str:
        """promoted, below_floor (loses to a floor baseline) or kept_champion."""
        return "promoted" if self.promoted else "below_floor" if self.below_floor else "kept_champion"


def _beats(challenger: float, baseline: float, metric: str) -> bool:
    """Strictly better (NaN never is)."""
    return challenger > baseline if metric in HIGHER_IS_BETTER else challenger < baseline


def _floor_text(items: list[tuple[str, dict]]) -> str:
    return ", ".join(f"{name} (skill {f['skill']:.3g})" for name, f in items)


def current_champion(client: mlflow.MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(challenger_score: float, champion_score: float | None, margin: float, metric: str,
           champion_version: str | None, champion_error: str | None = None,
           floor: dict[str, float] | None = None) -> GateDecision:
    """Promote only a challenger that strictly beats every floor baseline (`floor`: name -> its score on the same
    windows and metric) and then the champion by `margin`. The first model must pass the floor too."""
    floor_info = {name: {"score": float(b), "skill": float(skill(challenger_score, b, metric))}
                  for name, b in (floor or {}).items()}
    lost = [(name, floor_info[name]) for name, b in (floor or {}).items() if not _beats(challenger_score, b, metric)]
    if lost:
        reason = f"not promoted: loses to {_floor_text(lost[:1])}"
        if len(lost) > 1:
            reason += f"; also to {_floor_text(lost[1:])}"
        return GateDecision(False, reason, challenger_score, champion_score, champion_version, floor_info, True)
    passed = f"; beats {_floor_text(list(floor_info.items()))}" if floor_info else ""
    if champion_version is None:
        return GateDecision(True, f"first model: no champion yet{passed}", challenger_score, None, None, floor_info)
    if champion_score is None:
        return GateDecision(False, f"champion v{champion_version} could not be scored on this data "
                                   f"({champion_error}); kept, promote by hand if intended",
                            challenger_score, None, champion_version, floor_info)
    if metric in HIGHER_IS_BETTER:  # the margin is a share of the champion's shortfall from a perfect 1
        bar = champion_score + margin * (1 - champion_score)
        wins, rule = challenger_score > bar, f"> {champion_score:.6g} + margin {margin:g} x (1 - {champion_score:.6g})"
    else:
        bar = champion_score * (1 - margin)
        wins, rule = challenger_score < bar, f"< {champion_score:.6g} x (1 - margin {margin:g})"
    if wins:
        return GateDecision(True, f"challenger {metric} {challenger_score:.6g} beats champion v{champion_version} "
                                  f"{champion_score:.6g} ({rule}){passed}", challenger_score, champion_score,
                            champion_version, floor_info)
    return GateDecision(False, f"challenger {metric} {challenger_score:.6g} does not beat champion v{champion_version} "
                               f"{champion_score:.6g} (needs {rule})", challenger_score, champion_score,
                        champion_version, floor_info)


def gate(model_uri: str, name: str, score: Callable[[object], float], metric: str, margin: float,
         floor: dict[str, float] | None = None) -> GateDecision:
    """Score challenger and champion on the same test windows and decide; changes nothing in the registry.
    `score` scores a loaded pyfunc on the run's test split (Task.score, bound to the data and `metric`, the
    headline key: std_mse for a multi-target forecast); `floor` maps each floor baseline to its score on the same
    windows and key (from the evaluation)."""
    client = mlflow.MlflowClient()
    challenger_score = score(load(model_uri))
    champ = current_champion(client, name)
    if champ is None:
        return decide(challenger_score, None, margin, metric, None, floor=floor)
    try:
        champion_score = score(load(f"models:/{name}/{champ.version}"))
    except Exception as e:  # a champion that cannot be loaded or scored must not block registration
        return decide(challenger_score, None, margin, metric, str(champ.version), f"{type(e).__name__}: {e}", floor)
    return decide(challenger_score, champion_score, margin, metric, str(champ.version), floor=floor)


def alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _rollback(client, name: str, version: str | None, created_model: bool, previous_challenger: str | None) -> None:
    try:
        if created_model:
            client.delete_registered_model(name)
            return
        if version is not None:
            client.delete_model_version(name, version)
        if previous_challenger is not None:
            client.set_registered_model_alias(name, CHALLENGER, previous_challenger)
    except Exception as e:  # keep the original error; say what could not be undone
        log.error("rollback of %s incomplete: %s", name, e)


def register(model_uri: str, name: str, decision: GateDecision, metric: str, run_id: str,
             tags: dict[str, str] | None = None, description: str | None = None,
             model_description: str | None = None) -> str:
    """Create the version, tag it with the scores and the decision, alias it challenger and, if it won, champion.
    If anything fails after the version exists, the version is deleted again: no half-registered model.
    `description`: the version's markdown (default: version_description from the decision and `tags`);
    `model_description`: what the model is, the registered model's description, to which the current champion and
    why is added on every registration (model_markdown)."""
    client = mlflow.MlflowClient()
    created_model = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=model_description or DEFAULT_MODEL_DESCRIPTION)
        created_model = True
    previous_challenger = alias_version(client, name, CHALLENGER)
    version = None
    if description is None:
        description = version_description(decision, metric, run_id, tags=tags)
    try:
        # a logged model's URI (models:/m-...) names its id: a tracking server checks the source against it
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        version = str(client.create_model_version(name, model_uri, run_id=run_id, description=description,
                                                  model_id=model_id).version)
        all_tags = {"gate.metric": metric, "gate.challenger_score": f"{decision.challenger_score:.8g}",
                    "gate.champion_score": "" if decision.champion_score is None else f"{decision.champion_score:.8g}",
                    "gate.champion_version": decision.champion_version or "",
                    "gate.reason": decision.reason, "gate.floor": ",".join(decision.floor) or "none",
                    **{f"gate.floor.{b}": f"{f['score']:.8g} (skill {f['skill']:.4g})"
                       for b, f in decision.floor.items()},
                    **(tags or {})}
        for i, (k, v) in enumerate(all_tags.items()):
            client.set_model_version_tag(name, version, k, str(v))
            if i == 2:
                faults.point("registration")  # crash tests: the version exists with part of its tags
        # the decision is written last and before any alias: a version that has it is complete, and one that lacks
        # it (a process killed part-way) is recognisably not; `reconcile` tags it incomplete on the next run
        client.set_model_version_tag(name, version, DECISION_TAG, decision.label)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
    except BaseException:  # Ctrl-C included: put the registry back as it was
        log.error("registration of %s failed part-way: rolling back", name)
        _rollback(client, name, version, created_model, previous_challenger)
        raise
    try:  # the registered model's description names the champion now; only words, so a failure here undoes nothing
        client.update_registered_model(name, description=model_markdown(client, name, model_description, version,
                                                                         decision))
        # and so does a tag, shown in the registered models list: its 'Aliased versions' column shows the alias of
        # the newest version first, so a newer challenger hides the champion behind "+1"
        champion = alias_version(client, name, CHAMPION)
        client.set_registered_model_tag(name, CHAMPION, f"version {champion}" if champion else "none yet")
    except Exception as e:
        log.warning("the description of registered model %s was not updated: %s", name, e)
    return version


DEFAULT_MODEL_DESCRIPTION = "RNN model registered by rnn-pipeline."


def _num(v) -> str:
    """4 significant digits, for the description tables (the tags and the runs keep every digit)."""
    try:
        return "–" if v is None or v == "" else f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)


def metric_table(metric: str, metrics: dict[str, float], baselines: dict[str, dict[str, float]],
                 decision: GateDecision) -> str:
    """A markdown table: each metric (the gate's `metric` first) for this version, every baseline (the gate's floor
    marked) and the champion it was gated against (scored on the same test items: the gate metric only)."""
    rows = list(dict.fromkeys([metric, *metrics]))
    mine = {**metrics, metric: metrics.get(metric, decision.challenger_score)}
    cols = [("this version", mine),
            *((b, baselines.get(b) or ({metric: f["score"]} if (f := decision.floor.get(b)) else {}))
              for b in dict.fromkeys([*baselines, *decision.floor]))]
    if decision.champion_version is not None:
        cols.append((f"champion v{decision.champion_version}", {metric: decision.champion_score}))
    heads = [f"{c} (floor)" if c in decision.floor else c for c, _ in cols]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {'**' + m + '**' if m == metric else m} | " + " | ".join(_num(v.get(m)) for _, v in cols) + " |"
              for m in rows]
    return "\n".join(lines)


def version_description(decision: GateDecision, metric: str, run_id: str, *, metrics: dict[str, float] | None = None,
                        baselines: dict[str, dict[str, float]] | None = None, tags: dict[str, str] | None = None,
                        data: str | None = None) -> str:
    """A version's markdown description: the gate's decision and reason, its test metrics against the baselines and
    the champion (4 significant digits), the data (`data`: its source; the digest from `tags`), and what triggered the
    run (trigger, config and run link, from `tags`). `metrics` default to the `test_*` tags."""
    tags = tags or {}
    if metrics is None:
        metrics = {}
        for k, v in tags.items():
            try:
                if k.startswith("test_"):
                    metrics[k[5:]] = float(v)
            except ValueError:
                pass
    direction = "higher" if metric in HIGHER_IS_BETTER else "lower"
    lines = [f"**Gate: {decision.label.replace('_', ' ')}** — {decision.reason}", "",
             f"Gate metric `{metric}` ({direction} is better), scored on the run's test set:", "",
             metric_table(metric, metrics, baselines or {}, decision), ""]
    about_data = [*([data] if data else []), *([f"digest `{tags['data_digest']}`"] if tags.get("data_digest") else [])]
    if about_data:
        lines += ["**Data:** " + ", ".join(about_data), ""]
    trigger = [f"`{tags.get('trigger', 'unknown')}`", *([f"config `{tags['config']}`"] if tags.get("config") else []),
               f"run `runs:/{run_id}`"]
    lines.append("**Trigger:** " + " · ".join(trigger))
    return "\n".join(lines)


def model_markdown(client: mlflow.MlflowClient, name: str, about: str | None, version: str,
                   decision: GateDecision) -> str:
    """The registered model's description: what it is (`about`), the champion now and why, the latest version."""
    champ = alias_version(client, name, CHAMPION)
    if champ is None:
        now = "**Champion:** none yet."
    elif champ == version:
        now = f"**Champion: v{champ}** — {decision.reason}"
    else:
        why = (client.get_model_version(name, champ).tags or {}).get("gate.reason", "")
        now = f"**Champion: v{champ}**" + (f" — {why}" if why else "")
    latest = f"**Latest: v{version}** ({decision.label.replace('_', ' ')}) — {decision.reason}"
    return "\n\n".join([about or DEFAULT_MODEL_DESCRIPTION, now, *([latest] if champ != version else [])])


def reconcile(client: mlflow.MlflowClient, name: str, experiment_id: str | None) -> dict[str, list[str]]:
    """Clean up what a crashed training run of model `name` left behind. Call it while holding the model's training
    lock (rnn_pipeline.locks), so that no live run owns any of it:
    - its parent run and trial runs still RUNNING are marked FAILED, tagged `failure_reason` (a parent run still
      under its provisional name `<model> (training…)` is renamed `<model> (interrupted)`);
    - versions without a gate decision (registration killed part-way) are tagged `incomplete` and lose any alias.
    Returns what was done, for the log: {"failed_runs": [...], "incomplete_versions": [...]}."""
    done: dict[str, list[str]] = {"failed_runs": [], "incomplete_versions": []}
    when = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    if experiment_id is not None:
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
        parents = {r.info.run_id for r in running if r.data.tags.get("model_name") == name}
        for r in running:
            if r.info.run_id in parents or r.data.tags.get("mlflow.parentRunId") in parents:
                client.set_tag(r.info.run_id, "failure_reason",
                               f"interrupted: its process stopped without finishing (found by the next training run "
                               f"of '{name}' at {when})")
                if r.info.run_id in parents and (r.info.run_name or "").endswith("(training…)"):
                    client.set_tag(r.info.run_id, "mlflow.runName", f"{name} (interrupted)")  # was provisional
                client.set_terminated(r.info.run_id, "FAILED")
                done["failed_runs"].append(r.info.run_id)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return done
    for v in versions:
        tags = v.tags or {}
        if DECISION_TAG in tags:
            continue
        if tags.get("incomplete") != "true":
            client.set_model_version_tag(name, v.version, "incomplete", "true")
            client.set_model_version_tag(name, v.version, "incomplete.reason",
                                         f"registration stopped before the gate decision was written (found {when}); "
                                         "never served or promoted")
            done["incomplete_versions"].append(str(v.version))
        for alias in {*(getattr(v, "aliases", None) or []),
                      *(a for a in (CHAMPION, CHALLENGER) if alias_version(client, name, a) == str(v.version))}:
            client.delete_registered_model_alias(name, alias)
    return done
