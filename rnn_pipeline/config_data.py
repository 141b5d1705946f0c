"""The config's data sections: where the data comes from and how it is read and checked (`data`), what the model
sees of it (`features`), and how it is split (`split`). `PipelineConfig` (config.py) holds them; import them from
there or from here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rnn_pipeline.config_ops import _Strict

# The word tokenizer: runs of letters/digits (with an inner apostrophe: don't, it's), or one punctuation mark.
WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]"


class DataConfig(_Strict):
    """Where the data comes from and what its columns mean.

    Forecasting: one series, `time_column` + `target_columns` (+ `feature_columns`); a panel of many series adds
    `id_column` (a long table: one row per series and time step).
    Classification: either text (one row per text: `text_column` + `label_column`) or numeric sequences as a long
    table (one row per step: `sequence_column`, optional `step_column`, the `channel_columns`, `label_column`)."""

    builtin: str | None = Field(None, description="name of a built-in dataset (seed_sine, greensboro_weather, "
                                                  "sand_point_weather, miami_weather, weather_panel, "
                                                  "japanese_vowels, "
                                                  "rotten_tomatoes)")
    path: str | None = Field(None, description="CSV or Parquet file; relative paths resolve against the config's folder")
    time_column: str = "time"
    target_columns: list[str] = Field(default_factory=lambda: ["value"])
    feature_columns: list[str] = Field(default_factory=list)
    id_column: str | None = Field(None, description="forecasting: the column naming each series of a panel (a long "
                                                    "table, one row per series and time step): one global model is "
                                                    "trained across the series (see README, 'Many series')")
    static_columns: list[str] = Field(default_factory=list, description=(
        "panels: per-series covariates (the same value on every row of a series: size, region code, latitude), "
        "extra inputs scaled over all series together (a per-series scaler would erase them)"))
    missing: Literal["error", "interpolate", "ffill"] = Field(
        "error", description="forecasting: blank values, and gaps in the time steps, are refused ('error'), or filled "
                             "('interpolate', 'ffill': gap rows are added on the regular grid, and how many values "
                             "were filled becomes a data warning)")
    freq: str | None = Field(None, description="forecasting: the time step of a datetime time column as a pandas offset "
                                               "alias ('h', '15min', 'D', 'MS'; default: read from the column); a "
                                               "larger step is a gap, any other irregular step an error")
    timezone: str | None = Field(None, description="forecasting: the time zone of timestamps given without a UTC "
                                                   "offset ('UTC', 'Europe/Berlin'): they are localized to it, ones "
                                                   "with an offset converted to it (default: none; a column mixing "
                                                   "the two kinds is an error)")
    label_column: str = Field("label", description="classification: the class of each text or sequence")
    text_column: str | None = Field(None, description="classification: set for text (one row per text)")
    sequence_column: str = Field("sequence_id", description="numeric sequences: the id grouping a sequence's rows")
    step_column: str | None = Field("step", description="numeric sequences: orders the rows of a sequence "
                                                         "(None: file order)")
    channel_columns: list[str] = Field(default_factory=list, description="numeric sequences: the channels "
                                                                         "(default: every other column)")
    split_column: str | None = Field(None, description="classification: a column of train/val/test fixing the split "
                                                       "(rows marked train may also give the validation share)")
    outliers: Literal["warn", "error", "ignore"] = Field(
        "warn", description="forecasting: a value more than `outlier_threshold` robust deviations from its column's "
                            "training median is logged as a warning, refused, or ignored")
    outlier_threshold: float = Field(25.0, gt=0, description="robust deviations: |x - median| / max(1.4826 MAD, "
                                                             "IQR / 1.349) over the training split (the std when "
                                                             "both are 0)")

    @field_validator("target_columns", "feature_columns", "channel_columns", "static_columns", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("freq")
    @classmethod
    def _freq(cls, v):
        if v is None:
            return v
        import warnings

        import pandas as pd

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated aliases ('H', 'T') still work
                pd.tseries.frequencies.to_offset(v)
        except ValueError:
            raise ValueError("not a pandas offset alias such as 'h', '15min', 'D' or 'MS'") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v):
        if v is None:
            return v
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (give an IANA name such as 'UTC' or 'Europe/Berlin')") from None
        return v

    @model_validator(mode="after")
    def _one_source(self):
        problems = []  # every one of them, not just the first
        if (self.builtin is None) == (self.path is None):
            problems.append("data: give exactly one of 'builtin' or 'path'")
        if not self.target_columns:
            problems.append("data.target_columns: at least one target column is needed")
        if self.id_column is not None and self.id_column in {*self.target_columns, *self.feature_columns,
                                                             self.time_column}:
            problems.append(f"data.id_column '{self.id_column}' is also the time, a target or a feature column")
        if self.static_columns and self.id_column is None:
            problems.append("data.static_columns: per-series covariates need a panel (data.id_column)")
        both = set(self.static_columns) & {*self.target_columns, *self.feature_columns, self.time_column,
                                           *([self.id_column] if self.id_column else [])}
        if both:
            problems.append(f"data.static_columns {sorted(both)} are also the time, id, target or feature columns")
        clash = set(self.target_columns) & set(self.feature_columns)
        if clash:
            problems.append(f"data: columns {sorted(clash)} are both target and feature")
        if problems:
            raise ValueError("\n".join(problems))
        return self


class FeatureConfig(_Strict):
    window: int = Field(50, ge=1, description="L: past steps fed to the model (tuned if tuning.space.window is set)")
    horizon: int = Field(1, ge=1, description="H: future steps predicted at once (direct multi-output)")
    scaler: Literal["standard", "minmax", "none"] = "standard"
    calendar: list[Literal["hour", "dayofweek", "dayofyear", "month"]] = Field(
        default_factory=list, description="forecasting: known-future covariates from the timestamps (a datetime time "
                                          "column): each cycle's phase as sine and cosine inputs (cal_<cycle>_sin, "
                                          "_cos); a request sends its rows' times")
    max_windows_per_series: int | None = Field(None, ge=1, description="panels: at most this many training windows "
                                                                      "per series, spread evenly over its training "
                                                                      "split (None: all)")
    # classification
    max_length: int | None = Field(None, ge=1, description="classification: longest sequence kept, in steps or "
                                                            "tokens (None: the longest training sequence)")
    too_long: Literal["truncate", "error"] = Field("truncate", description="a longer sequence: cut to max_length "
                                                                           "(counted and logged) or refused")
    truncate_side: Literal["pre", "post"] = Field("post", description="truncation drops steps at the start (pre) "
                                                                      "or at the end (post)")
    padding: Literal["pre", "post"] = Field("post", description="where padding goes in a batch (masked either way)")
    tokenizer: Literal["word", "bpe"] = Field("word", description="text: regex words, or BPE sub-words "
                                                                  "(tokenizers library) trained on the training texts")
    lowercase: bool = True
    token_pattern: str = Field(WORD_PATTERN, description="text, word tokenizer: the regex a token matches")
    min_freq: int = Field(2, ge=1, description="text: a token seen fewer times in training is <unk>")
    max_vocab: int = Field(20000, ge=10, description="text: vocabulary size cap (incl. <pad>, <unk>; for BPE, the "
                                                     "merges' target size)")
    encoding: Literal["embedding", "onehot", "integer"] = Field(
        "embedding", description="text: how a token enters the RNN: a learned embedding, a one-hot vector, or its "
                                 "integer index as one scaled number (the seed's three options)")


class SplitConfig(_Strict):
    """Chronological split. Fractions count windows of the configured window length (the seed's convention:
    the test set is the last `test` share of the windows); or give `val_start`/`test_start` as timestamps
    (or time values), which then win. `test_end` (exclusive) ends the evaluation period: rows at or after it are
    not used at all (with fractions, the fractions apply to the rows before it). A monitoring retrain extends the
    series with new data, so it drops all three times and splits the new window by the fractions."""

    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    val_start: str | float | date | datetime | None = None
    test_start: str | float | date | datetime | None = None
    test_end: str | float | date | datetime | None = Field(
        None, description="forecasting: rows at or after this time are dropped before the split (the test windows' "
                          "targets all lie in [test_start, test_end))")

    @model_validator(mode="after")
    def _fractions(self):
        if self.val + self.test >= 0.9:
            raise ValueError("split: val + test must leave at least 10% for training")
        return self

