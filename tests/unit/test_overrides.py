"""Changing a run without another YAML: `rnn-pipeline train --set key=value --seed N`, and the overrides that the
monitoring flow's retrains use. In-process (typer's CliRunner, the flow replaced): no training runs here."""

import datetime
import sys
from types import SimpleNamespace

import pytest
from conftest import write_config
from typer.testing import CliRunner

from flows import cli
from rnn_pipeline.config import load_config
from rnn_pipeline.errors import ConfigError
from rnn_pipeline.overrides import parse_overrides

# --- the parser ------------------------------------------------------------------------------------------------

def test_dotted_keys_become_nested_overrides_with_yaml_values():
    got = parse_overrides(["tuning.n_trials=5", "model.hidden=64", "tuning.space.window=[96,192]",
                           "data.target_columns=[OT]", "model.bidirectional=true", "training.clip_grad_norm=null",
                           "training.lr=3e-4", "registry.model_name=my-model", "name = spaced ",
                           "split.test_end=2017-03-01", "data.path=a=b.csv", "data.text_column='1e5'"])
    assert got == {"tuning": {"n_trials": 5, "space": {"window": [96, 192]}},
                   "model": {"hidden": 64, "bidirectional": True},
                   "data": {"target_columns": ["OT"], "path": "a=b.csv", "text_column": "1e5"},  # first '=' splits
                   "training": {"clip_grad_norm": None, "lr": 3e-4},
                   "registry": {"model_name": "my-model"}, "name": "spaced",
                   "split": {"test_end": datetime.date(2017, 3, 1)}}


def test_repeated_keys_merge_and_the_last_one_wins():
    got = parse_overrides(["model.hidden=16", "model.layers=2", "model.hidden=64", "model={dropout: 0.1}",
                           "seed=1"], seed=9)
    assert got == {"model": {"hidden": 64, "layers": 2, "dropout": 0.1}, "seed": 9}  # --seed beats --set seed=
    assert parse_overrides(None) == {} and parse_overrides([], seed=0) == {"seed": 0}


@pytest.mark.parametrize("item, message", [
    ("model.hidden", "--set 'model.hidden': expected key=value"),
    ("=64", "--set '=64': empty key"),
    ("model..hidden=64", "--set 'model..hidden=64': empty part in the dotted key"),
    ("model.=64", "empty part in the dotted key"),
    ("tuning.space.window=[96,192", "--set 'tuning.space.window=[96,192': the value is not valid YAML"),
])
def test_malformed_items_are_one_clear_error(item, message):
    with pytest.raises(ConfigError) as e:
        parse_overrides(["model.layers=2", item])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("items, message", [
    (["model.hiden=64"], "--set: unknown key 'model.hiden'"),
    (["modle.hidden=64"], "--set: unknown key 'modle'"),
    (["model.hidden=abc"], "--set: model.hidden: Input should be a valid integer"),
    (["tuning.n_trials=[1, 2]"], "--set: tuning.n_trials: Input should be a valid integer"),
    (["model=64"], "--set: model: Input should be a valid dictionary"),
    (["data.target_columns=x", "data.feature_columns=x"], "--set: data: Value error, data: columns ['x'] are both"),
])
def test_unknown_keys_and_wrong_types_are_checked_by_the_config_and_name_set(items, message):
    with pytest.raises(ConfigError) as e:
        load_config("seed_sine", parse_overrides(items), overrides_source="--set")
    assert str(e.value).startswith(message)


def test_a_fault_in_the_file_itself_still_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine}\nmodel: {hidden: abc}\n")
    with pytest.raises(ConfigError, match=f"^{p}: model.hidden"):
        load_config(p, parse_overrides(["model.layers=2"]), overrides_source="--set")
    cfg = load_config(p, parse_overrides(["model.hidden=8"]), overrides_source="--set")  # --set mends it
    assert cfg.model.hidden == 8


# --- the command -----------------------------------------------------------------------------------------------

@pytest.fixture
def captured(monkeypatch):
    """training_flow replaced by a recorder; the CLI's process-wide environment defaults left alone."""
    import flows.training

    calls = []

    def fake_flow(config, overrides=None, reason="manual", wait=0.0):
        calls.append((config, overrides) if not wait else (config, overrides, wait))
        return {"fake": True}

    monkeypatch.setattr(flows.training, "training_flow", fake_flow)
    monkeypatch.setattr(flows.training, "summary_table", lambda s: "SUMMARY")
    monkeypatch.setattr(cli, "set_environment", lambda root: None)
    return calls


def test_train_passes_set_and_seed_to_the_flow_and_the_stores(tmp_path, captured):
    cfg = write_config(tmp_path, empty_store=False)
    elsewhere = tmp_path / "elsewhere"
    out = CliRunner().invoke(cli.app, ["train", "--config", str(cfg), "--set", "tuning.n_trials=5",
                                       "--set", "model.hidden=64", "--set", "tuning.space.window=[96,192]",
                                       "--set", "data.target_columns=[value]", "--set", f"stores.root={elsewhere}",
                                       "--seed", "3"])
    assert out.exit_code == 0, out.output
    assert captured == [(str(cfg), {"tuning": {"n_trials": 5, "space": {"window": [96, 192]}},
                                    "model": {"hidden": 64}, "data": {"target_columns": ["value"]},
                                    "stores": {"root": str(elsewhere)}, "seed": 3})]
    # the stores were resolved with the overrides: the new root, not the config's
    assert elsewhere.is_dir() and not (tmp_path / "state").exists()
    assert "SUMMARY" in out.output and f"summary written to {elsewhere / 'last_run.json'}" in out.output
    # the overrides merge into the YAML the way the flow loads it
    merged = load_config(cfg, captured[0][1])
    assert (merged.tuning.n_trials, merged.model.hidden, merged.seed, merged.tuning.space.window) == (5, 64, 3,
                                                                                                      [96, 192])
    assert merged.tuning.space.cell == ["gru", "rnn_tanh"]  # the rest of the file's space is kept


def test_train_without_overrides_passes_none(tmp_path, captured):
    out = CliRunner().invoke(cli.app, ["train", "--config", str(write_config(tmp_path, empty_store=False))])
    assert out.exit_code == 0, out.output
    assert captured[0][1] is None


def test_train_wait_waits_for_a_run_in_progress(tmp_path, captured):
    cfg = str(write_config(tmp_path, empty_store=False))
    assert CliRunner().invoke(cli.app, ["train", "--config", cfg, "--wait"]).exit_code == 0
    assert captured == [(cfg, None, cli.WAIT_SECONDS)]  # without --wait the flow gets 0: fail at once (above)


@pytest.mark.parametrize("args, line", [
    (["--set", "model.hidden"], "error: --set 'model.hidden': expected key=value (e.g. --set tuning.n_trials=5)"),
    (["--set", "model.hiden=64"], "error: --set: unknown key 'model.hiden'"),
    (["--set", "model.hidden=big"], "error: --set: model.hidden: Input should be a valid integer, unable to parse "
                                    "string as an integer (got 'big')"),
])
def test_a_bad_set_is_one_line_and_a_nonzero_exit(tmp_path, captured, monkeypatch, capsys, args, line):
    cfg = write_config(tmp_path, empty_store=False)
    monkeypatch.setattr(sys, "argv", ["rnn-pipeline", "train", "--config", str(cfg), *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert captured == [] and not (tmp_path / "state").exists()  # nothing ran, no store was created


def test_a_bad_seed_is_a_usage_error(tmp_path, captured):
    out = CliRunner().invoke(cli.app, ["train", "--config", str(write_config(tmp_path, empty_store=False)), "--seed", "x"])
    assert out.exit_code == 2 and captured == []


# --- monitoring retrains extend the series: the configured split times would cut the new data off ---------------

def test_monitoring_retrains_drop_the_split_times_including_test_end(tmp_path):
    from rnn_pipeline.forecasting.monitoring import ForecastingMonitor
    from rnn_pipeline.monitoring.champion import retrain_overrides

    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine}\n"
                 "split: {val_start: 100, test_start: 800, test_end: 900, val: 0.2}\n")
    cfg = load_config(p)
    champ = SimpleNamespace(monitor=ForecastingMonitor, params={"window": 20, "hidden": 8})
    merged = load_config(p, retrain_overrides(cfg, champ, tmp_path / "window.parquet"))
    s = merged.split
    assert (s.val_start, s.test_start, s.test_end, s.val) == (None, None, None, 0.2)


def test_a_reuse_retrain_keeps_every_tuned_knob_of_the_champion_forecaster(tmp_path):
    """The champion's run logs its best trial as `best.<knob>` params (strings); a 'reuse' retrain refits that
    model: architecture, normalisation, channel mode, segment, highway and loss included, not the config's."""
    from rnn_pipeline.forecasting.monitoring import ForecastingMonitor
    from rnn_pipeline.monitoring.champion import PARAM_TYPES, retrain_overrides

    p = tmp_path / "c.yaml"
    p.write_text("name: x\ndata: {builtin: seed_sine}\nmonitoring: {retrain: {tuning: reuse}}\n")
    cfg = load_config(p)
    logged = {"architecture": "direct", "norm": "last", "channels": "independent", "segment": "12",
              "highway": "True", "affine": "False", "channel_embedding": "False", "loss": "mae", "hidden": "64",
              "lr": "0.002", "window": "48", "cell": "lstm"}
    params = {k: PARAM_TYPES[k](v) for k, v in logged.items()}
    merged = load_config(p, retrain_overrides(cfg, SimpleNamespace(monitor=ForecastingMonitor, params=params),
                                              tmp_path / "window.parquet"))
    m, t = merged.model, merged.training
    assert (m.architecture, m.norm, m.channels, m.segment, m.highway, m.affine, m.channel_embedding, m.hidden,
            m.cell) == ("direct", "last", "independent", 12, True, False, False, 64, "lstm")
    assert (t.loss, t.lr, merged.features.window, merged.tuning.n_trials) == ("mae", 0.002, 48, 0)
    assert (cfg.model.architecture, cfg.model.norm, cfg.model.highway) != (m.architecture, m.norm, m.highway)
