"""The CLI's surface: `--version`, boolean options shown as flags in every command's help, MLflow's type-hint advice
silenced however MLflow raises it, log lines the CLI prints itself kept off the console, and an exit after Ctrl-C that
a stuck library thread cannot hold up."""

import logging
import re
import subprocess
import sys
import warnings
from importlib.metadata import version

import click
import pytest
import typer
from conftest import REPO
from typer.testing import CliRunner

from flows import cli, runtime


def _commands() -> list[list[str]]:
    group = typer.main.get_command(cli.app)
    return [[], *([name] for name in group.list_commands(click.Context(group)))]


def test_version_prints_the_installed_version_and_exits_0(monkeypatch, capsys):
    out = CliRunner().invoke(cli.app, ["--version"])
    assert out.exit_code == 0 and out.output == f"rnn-pipeline {version('rnn-pipeline')}\n"
    monkeypatch.setattr(sys, "argv", ["rnn-pipeline", "--version"])
    cli.main()  # returns: exit status 0
    assert capsys.readouterr().out == f"rnn-pipeline {version('rnn-pipeline')}\n"


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: " ".join(c) or "rnn-pipeline")
def test_help_shows_boolean_options_as_flags(cmd):
    out = CliRunner().invoke(cli.app, [*cmd, "--help"], env={"COLUMNS": "140"}, terminal_width=140)
    assert out.exit_code == 0, out.output
    assert not re.search(r"<bool>|BOOLEAN|\bbool\b", out.output), out.output
    assert re.search(r"--help\s+Show this message", out.output), out.output
    if cmd == []:
        assert re.search(r"--debug\s+Show full tracebacks", out.output), out.output
        assert re.search(r"--version\s+Print the version", out.output), out.output
    if cmd == ["train"]:
        assert re.search(r"--wait\s+If another training run", out.output), out.output
    if cmd == ["serve"]:
        assert re.search(r"--access-log\s+--no-access-log\s+Log every request", out.output), out.output


def test_the_type_hint_advice_is_dropped_even_under_mlflows_once_filter(recwarn):
    """MLflow raises it inside catch_warnings() + simplefilter("once", UserWarning), in front of any "ignore"
    filter: quiet_libraries drops it where warnings are shown."""
    from mlflow.utils.annotations import filter_user_warnings_once

    shown = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *a, **k: shown.append(str(message))
        warnings.simplefilter("default")
        runtime.quiet_libraries()
        runtime.quiet_libraries()  # idempotent: one wrapper

        @filter_user_warnings_once
        def define_a_pyfunc_class():
            warnings.warn("\x1b[33mAdd type hints to the `predict` method to enable data validation\x1b[0m",
                          UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)

        define_a_pyfunc_class()
        define_a_pyfunc_class()
    assert shown and set(shown) == {"something else"}  # other warnings still show
    record = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "x: Add type hints to the `predict` "
                               "method to enable data validation", None, None)
    assert not logging.getLogger("py.warnings").filter(record)  # when warnings are routed to logging


def test_hide_from_console_drops_marked_records_from_the_root_handlers_only():
    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    root, console, api = logging.getLogger(), Keep(), Keep()
    flow = logging.getLogger("rnnp.test.flow_runs")  # like prefect.flow_runs: its own (API) handler, propagating
    root.addHandler(console)
    flow.addHandler(api)
    flow.setLevel(logging.INFO)
    try:
        runtime.hide_from_console("run_summary")
        runtime.hide_from_console("run_summary")
        assert sum(getattr(f, "hides", None) == "run_summary" for f in console.filters) == 1
        flow.info("the table", extra={"run_summary": True})
        flow.info("a plain line")
    finally:
        root.removeHandler(console)
        flow.removeHandler(api)
    assert console.lines == ["a plain line"]
    assert api.lines == ["the table", "a plain line"]  # the Prefect UI still gets the summary


def test_after_ctrl_c_a_stuck_shutdown_still_ends_the_process():
    """A non-daemon thread that never ends (as a library thread interrupted mid-call can be) once held `train` after
    Ctrl-C past its message: the process ends with 130 after the grace period all the same."""
    code = ("import threading, flows.runtime as r; r.INTERRUPTED_EXIT_GRACE_S = 0.5; "
            "threading.Thread(target=threading.Event().wait).start(); r.exit_process(130)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 130, out.stderr[-2000:]


def test_the_exit_watchdog_never_ends_a_process_whose_main_thread_goes_on():
    """main() called in-process (tests, a notebook): the interrupt's exit is an ordinary SystemExit, and its watchdog
    leaves the process alone."""
    import threading

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "INTERRUPTED_EXIT_GRACE_S", 0.05)
        with pytest.raises(SystemExit) as e:
            runtime.exit_process(130)
    assert e.value.code == 130
    for t in [t for t in threading.enumerate() if t.name == "rnn-pipeline-exit-watchdog"]:
        t.join(timeout=30)  # it ran, and we are still here
        assert not t.is_alive()
