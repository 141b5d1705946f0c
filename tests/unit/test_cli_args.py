"""The CLI's help and argument handling, in-process (typer's CliRunner; main() for the one-line errors)."""

import sys

import pytest
from typer.testing import CliRunner

from flows import cli


@pytest.mark.parametrize("cmd, options", [([], ["train", "predict", "monitor", "serve", "ui"]),
                                          (["train"], ["--config", "--set", "--seed"]),
                                          (["predict"], ["--config", "--input", "--model"]),
                                          (["ui"], ["--config", "--port"])])
def test_help_on_every_command_names_its_options(cmd, options):
    out = CliRunner().invoke(cli.app, [*cmd, "--help"])
    assert out.exit_code == 0 and "Usage" in out.output
    for option in options:
        assert option in out.output, (cmd, option)


def run_main(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rnn-pipeline", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr()


def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(f"name: x\ndata: {{builtin: seed_sine}}\nwindoww: 3\nstores: {{root: '{tmp_path / 'state'}'}}\n")
    code, out = run_main(["train", "--config", str(p)], monkeypatch, capsys)
    assert code == 2
    assert out.err.strip().splitlines() == [f"error: {p}: unknown key 'windoww'"]
    assert not (tmp_path / "state").exists()


def test_a_bad_set_override_is_one_line(tmp_path, monkeypatch, capsys):
    code, out = run_main(["train", "--config", "seed_sine", "--set", "features.window"], monkeypatch, capsys)
    assert code == 2 and len(out.err.strip().splitlines()) == 1 and "features.window" in out.err
