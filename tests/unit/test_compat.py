"""Models registered by earlier code (tests/fixtures/registered, made by make_registered_models.py before the
layout changed) still load through MLflow and answer exactly as they did: the stored pyfunc_model.py imports
rnn_pipeline.bundle.load_bundle, and the preprocess.json/safetensors formats are read by today's code (the
fixtures carry no copy of the package)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnn_pipeline import registry
from rnn_pipeline.classification.bundle import ClassifierBundle
from rnn_pipeline.forecasting.bundle import ForecastBundle

FIXTURES = Path(__file__).parents[1] / "fixtures" / "registered"


@pytest.mark.parametrize("name, kind", [("forecaster", ForecastBundle), ("direct_forecaster", ForecastBundle),
                                        ("classifier", ClassifierBundle)])
def test_old_registered_model_loads_and_predicts_the_same(name, kind):
    folder = FIXTURES / name
    assert not (folder / "code").exists()  # today's package answers, not a copy stored with the model
    model = registry.load(str(folder))
    assert isinstance(registry.bundle_of(model), kind)
    got = model.predict(pd.read_csv(folder / "input.csv"))
    expected = pd.read_csv(folder / "expected.csv")
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected) > 1
    numeric = [c for c in expected.columns if c not in ("label",)]
    np.testing.assert_allclose(got[numeric].to_numpy(float), expected[numeric].to_numpy(float), rtol=1e-5, atol=1e-6)
    if "label" in expected:
        assert got["label"].tolist() == expected["label"].tolist()
