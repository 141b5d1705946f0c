"""One pydantic tree for a pipeline run, loaded from YAML. Every knob has a default; unknown keys are errors.

A config is addressed by path, or by the name of a built-in one shipped in ``rnn_pipeline/configs``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rnn_pipeline.config_data import WORD_PATTERN, DataConfig, FeatureConfig, SplitConfig  # noqa: F401
from rnn_pipeline.config_ops import MonitoringConfig, RetrainConfig, ServingConfig, StoresConfig, _Strict  # noqa: F401
from rnn_pipeline.errors import ConfigError
from rnn_pipeline.overrides import given_by, merge

Cell = Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]
Optimizer = Literal["adam", "adamw", "rmsprop", "sgd"]
Pooling = Literal["last", "mean"]
Architecture = Literal["direct", "segment"]
Norm = Literal["none", "revin", "last"]
Channels = Literal["mixed", "independent"]
Loss = Literal["mse", "mae", "huber"]
GateMetric = Literal["mse", "mae", "rmse", "crps", "accuracy", "f1_macro", "f1_weighted", "log_loss"]
FORECAST_METRICS = ("mse", "mae", "rmse", "crps")
HIGHER_IS_BETTER = ("accuracy", "f1_macro", "f1_weighted")
# the baselines every evaluation logs, which `registry.floor` may name
FORECAST_BASELINES = ("persistence", "seasonal_naive", "ridge", "ridge_last")
TEXT_BASELINES = ("majority", "tfidf_logreg")
SEQUENCE_BASELINES = ("majority", "summary_logreg")


class ModelConfig(_Strict):
    cell: Cell = "gru"
    hidden: int = Field(32, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    architecture: Architecture = Field(
        "segment", description="forecasting: 'direct' (the cell over every step, a linear head) or 'segment' (the "
                               "cell over segments of `segment` steps, every output segment decoded at once)")
    norm: Norm = Field("revin", description="forecasting: per-window normalisation removed before the network and "
                                            "restored after it: 'revin' (window mean/std), 'last' (last value), 'none'")
    affine: bool = Field(False, description="forecasting, norm 'revin': a learnable per-channel scale and shift")
    channels: Channels = Field(
        "independent", description="forecasting, several targets: 'mixed' (all columns into one network) or "
                                   "'independent' (one shared network per target channel, plus the features)")
    channel_embedding: bool = Field(True, description="forecasting, channels 'independent': a learned vector per "
                                                      "target channel")
    segment: int = Field(24, ge=1, description="forecasting, architecture 'segment': W, steps per segment (at most "
                                               "the window)")
    highway: bool = Field(False, description="forecasting: add a linear map of the (normalised) window to the output "
                                             "(LSTNet's highway), started at its Ridge fit on the training windows, "
                                             "so the recurrent part learns what the linear forecast leaves")
    quantiles: list[float] = Field(default_factory=list, description=(
        "forecasting: quantile levels the network outputs beside its point forecast, trained with the pinball loss "
        "(the point forecast keeps the training loss), e.g. [0.1, 0.5, 0.9]; predictions gain "
        "`<target>_h<k>_q<level>` columns"))
    series_embedding: int = Field(0, ge=0, description=(
        "panels: a learned vector of this many values per series, an extra input of the global model (0: none), "
        "so that it can tell the series apart"))
    bidirectional: bool = Field(False, description="classification: read sequences both ways")
    pooling: Pooling = Field("last", description="classification: last valid state, or mean over valid steps")
    embedding_dim: int = Field(64, ge=1, description="text with encoding 'embedding'")


    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v):
        bad = [q for q in v if not 0 < q < 1]
        if bad:
            raise ValueError(f"quantile levels lie strictly between 0 and 1: {bad}")
        return sorted(set(v))


class TrainingConfig(_Strict):
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    optimizer: Optimizer = "adam"
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(20, ge=1, description="early stopping: epochs without validation improvement")
    max_seconds: float | None = Field(1800.0, gt=0, description="stop the final fit after the epoch that passes this "
                                                                "long (its best epoch so far is kept; logged); null: "
                                                                "no limit")
    lr_patience: int = Field(5, ge=1, description="ReduceLROnPlateau patience")
    lr_factor: float = Field(0.5, gt=0, lt=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    loss: Loss = Field("mse", description="forecasting: the training loss (validation and early stopping use the MSE)")
    loss_steps: Literal["last", "all"] = Field(
        "last", description="'all' also trains every step's forecast after the burn-in (denser signal, no leak; "
                            "a direct model with norm 'none' only, others train on the last step)")
    burn_in: float = Field(0.5, ge=0, lt=1, description="share of the window not scored when loss_steps='all'")
    ensemble: int = Field(1, ge=1, le=20, description="forecasting: the final model is the mean of this many fits of "
                                                      "the best parameters (seeds seed, seed+1, ...); trials fit one")
    ensemble_trials: int | None = Field(
        None, ge=1, le=10, description="forecasting: the final model mixes fits of the best trials' parameters (this "
                                       "many distinct ones, the best first), weighted by greedy forward selection on "
                                       "validation; 1 = the best trial alone. Default: 3 (classification: 1)")
    threads: int = Field(1, ge=1, description="torch CPU threads; 1 is fastest and stable for small RNNs")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    noise_std: float = Field(0.0, ge=0, description="classification, numeric sequences: Gaussian jitter (in scaled "
                                                    "units) added to the inputs of every training batch")
    imbalance: Literal["class_weights", "weighted_sampler", "none"] = Field(
        "class_weights", description="classification: weight the loss by inverse class frequency, or sample "
                                     "batches with inverse-frequency weights")


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError(f"range low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(_Strict):
    low: int
    high: int
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError(f"range low {self.low} > high {self.high}")
        return self


class SearchSpace(_Strict):
    """Each knob: a list (categorical) or a range. A knob left out keeps the model/training default."""

    cell: list[Cell] | None = None
    hidden: IntRange | list[int] | None = None
    layers: IntRange | list[int] | None = None
    dropout: FloatRange | list[float] | None = None
    lr: FloatRange | list[float] | None = None
    batch_size: list[int] | None = None
    window: IntRange | list[int] | None = None
    optimizer: list[Optimizer] | None = None
    bidirectional: list[bool] | None = None
    pooling: list[Pooling] | None = None
    embedding_dim: IntRange | list[int] | None = None
    architecture: list[Architecture] | None = None
    norm: list[Norm] | None = None
    affine: list[bool] | None = None
    channels: list[Channels] | None = None
    segment: IntRange | list[int] | None = None
    loss: list[Loss] | None = None
    highway: list[bool] | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())


class TuningConfig(_Strict):
    n_trials: int = Field(20, ge=0, description="finished (complete or pruned) trials the study should hold")
    n_startup_trials: int | None = Field(None, ge=1, description="random trials before TPE models the space "
                                                                 "(default: a quarter of n_trials, 2 to 10)")
    trial_seconds: float | None = Field(600.0, gt=0, description="stop a trial's training after this long (its best "
                                                                 "epoch so far counts; logged when it happens); null: "
                                                                 "no limit")
    progress_seconds: float = Field(15.0, gt=0, description="log a running trial's progress this often")
    timeout_seconds: float | None = Field(None, gt=0, description="stop starting new trials after this long")
    pruner: Literal["median", "hyperband", "none"] = "median"
    max_epochs: int = Field(60, ge=1, description="epochs per trial (the final fit uses training.max_epochs)")
    patience: int = Field(10, ge=1)
    workers: int = Field(0, ge=0, description="tuning workers: flow runs on the Prefect work pool `work_pool` that "
                                              "share the study (on a server store, stores.optuna_url) with the "
                                              "training run; 0: the training run tunes alone, in-process")
    work_pool: str = Field("rnn-pipeline", description="the work pool the tuning workers run on (rnn-pipeline "
                                                       "stack up starts one)")
    space: SearchSpace = Field(default_factory=SearchSpace, description="forecasting: left out entirely, a default "
                                                                         "space is searched (see tune.default_space)")


class EvaluationConfig(_Strict):
    season: int | Literal["auto"] | None = Field(
        "auto", description="season length in steps for the seasonal-naive baseline (and the MASE scale); 'auto': "
                            "read from a datetime time column (hourly -> 24, 30 min -> 48, 15 min -> 96, "
                            "10 min -> 144, daily -> 7) when two seasons of training rows exist; null: none")
    ridge_alphas: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    plots: bool = Field(True, description="log the evaluation plots (PNG) with the run; false saves about a second "
                                          "of CPU per run")
    intervals: list[float] = Field(default_factory=lambda: [0.8, 0.95], description=(
        "forecasting: prediction intervals at these levels (split conformal: each horizon step's and target's "
        "absolute validation errors); the model answers `<target>_h<k>_lo<level>`/`_hi<level>` beside each "
        "forecast and the run reports their test coverage and width; [] switches them off"))
    interval_method: Literal["conformal", "quantiles"] = Field("conformal", description=(
        "forecasting: 'conformal' (the point forecast +- the calibrated half-width) or 'quantiles' (a quantile "
        "model's own quantiles at (1 - level) / 2 and (1 + level) / 2: model.quantiles must hold them)"))

    @field_validator("intervals")
    @classmethod
    def _intervals(cls, v):
        if any(not 0 < x < 1 for x in v):
            raise ValueError("interval levels lie strictly between 0 and 1 (0.8 for an 80% interval)")
        return sorted(set(v))

    @field_validator("season", mode="before")
    @classmethod
    def _season(cls, v):
        if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("steps per season (an int >= 1), 'auto' or null")


class BacktestConfig(_Strict):
    """Rolling-origin backtesting (forecasting): forecasts from `origins` points of the test period, `step` steps
    apart, the last one H steps before its end, beside the baselines from the same origins."""

    origins: int = Field(0, ge=0, description="how many forecast origins (0: no backtest in the training flow)")
    step: int | None = Field(None, ge=1, description="steps between origins (default: H, so that the forecasts tile "
                                                     "the end of the test period)")
    refit: int = Field(0, ge=0, description="0: the trained model forecasts from every origin; k: the best trial's "
                                            "parameters are refitted on everything before the origin at origins "
                                            "1, 1 + k, 1 + 2k, ... (single series)")
    gate: bool = Field(False, description="the gate (and its floor) scores the backtest mean over the origins instead "
                                          "of the test windows (needs refit 0: the champion is scored the same way)")
    workers: int = Field(0, ge=0, description="refits: 0 or 1 fits them one after another in the training process; "
                                              "n >= 2 maps them over a local Dask cluster of n processes (one torch "
                                              "thread each) through Prefect's Dask task runner")
    dask_address: str | None = Field(None, description="refits on the Dask scheduler at this address "
                                                        "(tcp://host:8786) instead of a local cluster")

    @model_validator(mode="after")
    def _gate(self):
        if self.gate and (self.origins == 0 or self.refit):
            raise ValueError("backtest.gate needs origins > 0 and refit 0 (the champion is scored from the same "
                             "origins without refitting)")
        if (self.workers > 1 or self.dask_address) and not self.refit:
            raise ValueError("backtest.workers / backtest.dask_address fan out the refits: set backtest.refit (a "
                             "backtest without refits only forecasts, which takes less than starting workers)")
        return self

    @property
    def fans_out(self) -> bool:
        """Refits go to Dask (backtest.workers >= 2, or a scheduler's address)."""
        return bool(self.refit and (self.workers > 1 or self.dask_address))


class RegistryConfig(_Strict):
    model_name: str | None = Field(None, description="registered model name (default: the config's name)")
    metric: GateMetric | None = Field(None, description="gate metric (default: mse for forecasting, f1_macro for "
                                                        "classification); crps: a quantile model's CRPS from its "
                                                        "quantiles, a point forecast's (baselines too) its MAE")
    margin: float = Field(0.0, ge=0, lt=1, description="the challenger must beat the champion by this share (of the "
                                                       "champion's error, or for accuracy/F1 of its shortfall from 1)")
    floor: list[str] | None = Field(
        None, description="baselines a version must beat (strictly, on the gate metric, on the test windows) to "
                          "become champion; None: persistence and the seasonal naive (when there is a season) for "
                          "forecasting, majority for classification; [] switches the floor off")


class PipelineConfig(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["forecasting", "classification"] = "forecasting"
    seed: int = 42
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    stores: StoresConfig = Field(default_factory=StoresConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    # Set by load_config: the folder relative data paths resolve against. Not part of the YAML.
    base_dir: str = Field(".", exclude=True)

    @model_validator(mode="after")
    def _across_sections(self):
        problems = [*self._task(), *self._floor()]  # every one of them, not just the first
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _task(self) -> list[str]:
        m = self.registry.metric
        problems = []
        if self.task == "classification":
            if m in FORECAST_METRICS:
                problems.append(f"registry.metric '{m}' is a forecasting metric; classification gates on accuracy, "
                                "f1_macro, f1_weighted or log_loss")
            forecast_only = [k for k in ("window", "architecture", "norm", "affine", "channels", "segment", "loss")
                             if getattr(self.tuning.space, k) is not None]
            if forecast_only:
                problems.append(f"tuning.space.{forecast_only[0]}: a forecasting setting; classification reads "
                                "whole sequences")
            if self.training.ensemble > 1:
                problems.append("training.ensemble: forecasting only (a classifier is one network)")
            if (self.training.ensemble_trials or 1) > 1:
                problems.append("training.ensemble_trials: forecasting only (a classifier is one network)")
            if self.backtest.origins:
                problems.append("backtest: forecasting only (a classifier has no forecast origins)")
        else:
            if m is not None and m not in FORECAST_METRICS:
                problems.append(f"registry.metric '{m}' is a classification metric; forecasting gates on mse, mae, "
                                "rmse or crps")
            if m == "crps" and self.backtest.gate:
                problems.append("registry.metric crps with backtest.gate: the backtest scores point forecasts only "
                                "(gate on the test windows, or on mse, mae or rmse)")
            if self.evaluation.interval_method == "quantiles" and self.evaluation.intervals:
                from rnn_pipeline.forecasting.intervals import quantile_pairs

                try:
                    quantile_pairs(self.evaluation.intervals, self.model.quantiles)
                except ValueError as e:
                    problems.append(f"evaluation.interval_method quantiles: {e}")
            if self.model.series_embedding and not self.data.id_column:
                problems.append("model.series_embedding: a panel setting (data.id_column); one series needs none")
            if self.backtest.refit and self.data.id_column:
                problems.append("backtest.refit: single series only for now (a panel backtests its trained model: "
                                "refit 0)")
        return problems

    def _floor(self) -> list[str]:
        problems = []
        unknown = [b for b in self.registry.floor or [] if b not in self.baselines]
        if unknown:
            problems.append(f"registry.floor: unknown baseline '{unknown[0]}' for this {self.task} config "
                            f"(one of {', '.join(self.baselines)})")
        if "seasonal_naive" in (self.registry.floor or []) and self.evaluation.season is None:
            problems.append("registry.floor lists seasonal_naive but evaluation.season is null (no season)")
        return problems

    @property
    def baselines(self) -> tuple[str, ...]:
        """The baselines the evaluation logs for this config (the seasonal naive only when there is a season)."""
        if self.task == "forecasting":
            return FORECAST_BASELINES
        return TEXT_BASELINES if self.data.text_column else SEQUENCE_BASELINES

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def gate_metric(self) -> str:
        return self.registry.metric or ("f1_macro" if self.task == "classification" else "mse")

    def max_window(self) -> int:
        w = self.tuning.space.window
        if w is None or self.tuning.n_trials == 0:
            return self.features.window
        return max(w) if isinstance(w, list) else w.high

    def digest(self) -> str:
        """A short stable hash of what shapes a tuning trial: the study name carries it, so that raising n_trials,
        changing the time budget, the final fit, evaluation or registry settings resumes the same study."""
        d = self.model_dump(mode="json", exclude={"stores": True, "registry": True, "evaluation": True, "name": True,
                                                  "monitoring": True, "serving": True,
                                                  "tuning": {"n_trials", "timeout_seconds", "progress_seconds"},
                                                  "training": {"max_epochs", "patience", "threads", "device"}})
        for key in ("freq", "timezone"):  # added later: left unset, the digest (and the study name) stays as it was
            if d["data"].get(key) is None:
                d["data"].pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def builtin_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("rnn_pipeline.configs").iterdir() if p.name.endswith(".yaml"))


def _is_field(part) -> bool:
    """Whether a part of a validation error's location is a key or list index, not the tag pydantic gives a member
    of a union ('list[int]', 'function-after[_order(), IntRange]')."""
    return isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and not part[:1].isupper())


def _problems(err: ValidationError) -> list[tuple[tuple, str]]:
    """Every problem in a ValidationError as (location, text), in pydantic's order: a value that fits no member of
    a union is one problem (its members' complaints joined), a check across keys may give several (one a line)."""
    grouped: dict[tuple, list[dict]] = {}
    for e in err.errors():
        loc = tuple(e["loc"])
        cut = next((i for i, part in enumerate(loc) if not _is_field(part)), len(loc))
        grouped.setdefault(loc[:cut] if cut < len(loc) else loc, []).append(e)
    out = []
    for loc, errors in grouped.items():
        where = ".".join(str(x) for x in loc) or "(top level)"
        e = errors[0]
        if len(errors) > 1:  # the members of a union
            msgs = list(dict.fromkeys(x["msg"].removeprefix("Value error, ") for x in errors))
            out.append((loc, f"{where}: {'; or '.join(msgs)} (got {e.get('input')!r})"))
        elif e["type"] == "extra_forbidden":
            out.append((loc, f"unknown key '{where}'"))
        elif e["type"] == "missing":
            out.append((loc, f"missing required key '{where}'"))
        elif e["type"] == "value_error" and not loc:  # a check across sections: its message names the keys
            out += [(loc, line) for line in e["msg"].removeprefix("Value error, ").splitlines()]
        elif e["type"] == "value_error" and "\n" in e["msg"]:  # a section's checks: each line names its keys
            out += [(loc, line) for line in e["msg"].removeprefix("Value error, ").splitlines()]
        elif e["type"] == "value_error" and not isinstance(e.get("input"), (dict, list)):  # one key's check
            out.append((loc, f"{where}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})"))
        else:
            out.append((loc, f"{where}: {e['msg']} (got {e.get('input')!r})"))
    return out


def _format_validation_error(source: str, err: ValidationError, overrides: dict | None = None,
                             overrides_source: str | None = None) -> str:
    """One line for one problem; for several, a count on the first line and then each problem on its own line.
    A problem in a setting the overrides gave names `overrides_source` (e.g. '--set') instead of the file."""
    problems = _problems(err)

    def origin(loc):
        return overrides_source if overrides and overrides_source and given_by(loc, overrides) else source

    if len(problems) == 1:
        loc, text = problems[0]
        return f"{origin(loc)}: {text}"
    origins = {origin(loc) for loc, _ in problems}
    if len(origins) == 1:
        return f"{origins.pop()}: {len(problems)} problems:\n" + "\n".join(f"  {text}" for _, text in problems)
    return f"{source}: {len(problems)} problems:\n" + "\n".join(
        f"  {text}" + (f" (from {overrides_source})" if origin(loc) != source else "") for loc, text in problems)


def load_config(ref: str | Path, overrides: dict | None = None, overrides_source: str | None = None) -> PipelineConfig:
    """Load a config by path, or by built-in name (``seed_sine``), with optional `overrides` deep-merged into the
    YAML before validation (the monitoring flow retrains this way on new data; the CLI's --set too). Raises
    ConfigError naming every problem: one line for one, else a count and then one line each; a problem names
    `overrides_source` (e.g. '--set') instead of the file when the setting at fault came from the overrides."""
    ref = str(ref)
    path = Path(ref)
    if path.is_file():
        text, source, base = path.read_text(), str(path), path.resolve().parent
    elif ref in builtin_configs():
        text = resources.files("rnn_pipeline.configs").joinpath(f"{ref}.yaml").read_text()
        source, base = f"built-in config '{ref}'", Path.cwd()
    else:
        raise ConfigError(f"config '{ref}' is neither a file nor a built-in config "
                          f"(built-ins: {', '.join(builtin_configs())})")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    if overrides:
        raw = merge(raw, overrides)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:  # every problem, one a line, not only the first
        raise ConfigError(_format_validation_error(source, e, overrides, overrides_source)) from None
    cfg.base_dir = str(base)
    return cfg
