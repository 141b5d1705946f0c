import pytest

from rnn_pipeline.config import PipelineConfig, builtin_configs, load_config
from rnn_pipeline.errors import ConfigError


def test_builtins_load_and_are_addressable_by_name():
    assert {"seed_sine", "greensboro_weather"} <= set(builtin_configs())
    cfg = load_config("seed_sine")
    assert cfg.data.builtin == "seed_sine" and cfg.features.window == 50 and cfg.tuning.n_trials >= 20
    assert load_config("greensboro_weather").data.feature_columns


def test_defaults_fill_everything_but_name_and_data(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {path: d.csv}\n")
    cfg = load_config(p)
    assert cfg.features.scaler == "standard" and cfg.registry.margin == 0.0 and cfg.training.threads == 1
    assert cfg.model_name == "x" and cfg.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize("text, fragment", [
    ("name: x\ndata: {path: d.csv}\nbogus: 1\n", "unknown key 'bogus'"),
    ("name: x\ndata: {path: d.csv, colour: red}\n", "unknown key 'data.colour'"),
    ("name: x\ndata: [unclosed\n", "malformed YAML at line"),
    ("- a\n- b\n", "expected a mapping"),
    ("data: {path: d.csv}\n", "missing required key 'name'"),
    ("name: x\ndata: {path: d.csv}\nfeatures: {window: 0}\n", "features.window"),
    ("name: x\ndata: {path: d.csv, builtin: seed_sine}\n", "exactly one of 'builtin' or 'path'"),
    ("name: x\ndata: {path: d.csv}\ntuning: {space: {cell: [lstm, transformer]}}\n", "tuning.space.cell"),
    ("name: x\ndata: {path: d.csv}\nsplit: {val: 0.5, test: 0.45}\n", "at least 10% for training"),
    ("name: x\ndata: {path: d.csv}\ntraining: {ensemble: 0}\n", "training.ensemble"),
    ("name: x\ntask: classification\ndata: {builtin: japanese_vowels}\ntraining: {ensemble: 3}\n",
     "training.ensemble: forecasting only"),
    ("name: x\ntask: classification\ndata: {builtin: japanese_vowels}\ntraining: {ensemble_trials: 2}\n",
     "training.ensemble_trials: forecasting only"),
    ("name: x\ndata: {path: d.csv}\ntraining: {ensemble_trials: 0}\n", "training.ensemble_trials"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert fragment in msg and str(p) in msg and "\n" not in msg


def test_unknown_config_name_lists_builtins():
    with pytest.raises(ConfigError, match="built-ins: .*seed_sine"):
        load_config("no_such_config")


def test_digest_ignores_where_state_lives():
    a = PipelineConfig.model_validate({"name": "a", "data": {"builtin": "seed_sine"}, "stores": {"root": "/x"}})
    b = PipelineConfig.model_validate({"name": "a", "data": {"builtin": "seed_sine"}, "stores": {"root": "/y"}})
    c = PipelineConfig.model_validate({"name": "a", "data": {"builtin": "seed_sine"}, "seed": 1})
    assert a.digest() == b.digest() != c.digest()
