"""Per-column affine scaling, fitted on the training rows only (sklearn's scalers) and kept as plain numbers, so a
model stores it in JSON. Forecasting scales series columns with it, classification numeric channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import MinMaxScaler, StandardScaler


@dataclass
class Scaling:
    """Per-column affine scaling z = (x - offset) / scale, stored as plain numbers (JSON) in the model."""

    offset: np.ndarray
    scale: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.offset) / self.scale

    def inverse(self, z: np.ndarray, columns: slice | list[int] = slice(None)) -> np.ndarray:
        return z * self.scale[columns] + self.offset[columns]

    def to_json(self) -> dict:
        return {"offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Scaling:
        return cls(np.asarray(d["offset"], dtype="float64"), np.asarray(d["scale"], dtype="float64"))


def fit_scaler(kind: str, train: np.ndarray) -> Scaling:
    """Fit on the training rows only (sklearn's scalers), then keep just their parameters."""
    n_cols = train.shape[1]
    if kind == "none":
        return Scaling(np.zeros(n_cols), np.ones(n_cols))
    if kind == "standard":
        s = StandardScaler().fit(train)
        return Scaling(s.mean_.copy(), s.scale_.copy())
    if kind == "minmax":
        s = MinMaxScaler().fit(train)  # z = x * scale_ + min_  =>  offset = -min_/scale_, scale = 1/scale_
        return Scaling(-s.min_ / s.scale_, 1.0 / s.scale_)
    raise ValueError(f"unknown scaler '{kind}'")
