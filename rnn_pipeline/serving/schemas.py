"""The service's request and response bodies (pydantic): what OpenAPI publishes and FastAPI validates before a
model sees anything. Requests are strict: unknown fields, JSON booleans or strings for numbers, NaN and Infinity are
refused with 422."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Number = Annotated[float, Strict()]  # a JSON number: true/false and "1.5" are refused, NaN/Infinity too


class SeriesInput(_Strict):
    id: str | int | None = Field(None, description="a panel model (many series): the series this history belongs to "
                                             "(GET /metadata: id_column, n_series)")
    time: list[str] | None = Field(None, description="a model reading calendar features (GET /metadata: calendar): "
                                                     "the timestamps of the history's steps, oldest first (ISO 8601)")
    history: dict[str, list[Number]] = Field(
        ..., description="the recent history, oldest first: one list per input column of the model (its targets "
                         "and features), all of the same length, at least the model's window (GET /metadata: "
                         "input_columns, window); /docs' example is one for the served model")


class PredictRequest(_Strict):
    """Exactly one of `series` (forecasting), `texts` (text classification) or `sequences` (numeric sequence
    classification: a list of steps per sequence, each step a list of the model's channel values)."""

    series: list[SeriesInput] | None = Field(None, min_length=1)
    texts: list[str] | None = Field(None, min_length=1)
    sequences: list[list[list[Number]]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("series", "texts", "sequences") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'series', 'texts' or 'sequences'"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def size(self) -> int:
        """How many series, texts or sequences the request holds."""
        return len(self.series or self.texts or self.sequences)


class ModelRef(BaseModel):
    """The model version that answered; name, version and alias are left out when it has none (a model loaded from a
    path or runs:/ URI has no name, one loaded by version no alias)."""

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    uri: str


class Prediction(BaseModel):
    prediction_id: str
    forecast: dict[str, list[float]] | None = Field(None, description="forecasting: per target, the next H values "
                                                                        "in original units")
    intervals: dict[str, dict[str, dict[str, list[float]]]] | None = Field(
        None, description="forecasting: per level ('80', '95'), the lower ('lo') and upper ('hi') bounds of the "
                          "prediction interval, per target, the next H values")
    quantiles: dict[str, dict[str, list[float]]] | None = Field(
        None, description="forecasting with a quantile model (model.quantiles): per level ('10', '50', '90'), per "
                          "target, the next H values of that quantile")
    label: str | None = None
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class Actual(_Strict):
    prediction_id: str = Field(..., min_length=1, max_length=64)
    values: dict[str, list[Number]] | None = Field(None, description="forecasting: per target, the H actual values")
    label: str | None = Field(None, min_length=1, max_length=200, description="classification: the true label")

    @model_validator(mode="after")
    def _one(self):
        if (self.values is None) == (self.label is None):
            raise ValueError("give exactly one of 'values' (forecasting) or 'label' (classification)")
        return self


class ActualsRequest(_Strict):
    actuals: list[Actual] = Field(..., min_length=1)


class ActualsResponse(BaseModel):
    recorded: int


class Problem(BaseModel):
    """Every error the service answers (400, 401, 404, 409, 413, 503, and a 422 about the content): one message."""

    detail: str


class ValidationIssue(BaseModel):
    """One problem with the request's shape or types, as the service reports it (at most 20)."""

    loc: list[str | int] = Field(..., description="where: e.g. ['body', 'series', 0, 'history', 'value', 3]")
    msg: str
    type: str
    input: str = Field(..., description="the offending input, repr()'d and cut to 80 characters")


class Invalid(BaseModel):
    """422: a body of the wrong shape or types (a list of issues), or a request the model cannot answer (one message:
    a missing column, too short a history, texts sent to a forecaster, a forecast that is not finite, ...)."""

    detail: str | list[ValidationIssue]
