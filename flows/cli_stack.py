"""`rnn-pipeline stack up|status|down`: the server-backed stack started natively (rnn_pipeline.stack). flows/cli.py
adds it to its typer app with `register`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_FOLDER = ".rnn_pipeline/stack"
Folder = Annotated[Path, typer.Option("--folder", envvar="RNNP_STACK_FOLDER",
                                      help="Where the stack keeps its state, logs and artifacts.")]


def register(app: typer.Typer, cls, group_cls) -> None:
    """Add `stack up|status|down` to `app`; `cls`, `group_cls`: the CLI's command and group classes (flags shown as
    flags in --help)."""
    stack = typer.Typer(no_args_is_help=True, cls=group_cls, help="The server-backed stack: MLflow and Prefect servers on "
                                                   "PostgreSQL and a process work pool (see README, 'Scaling out').")
    stack.command("up", cls=cls)(up)
    stack.command("status", cls=cls)(status)
    stack.command("down", cls=cls)(down)
    stack.command("env", cls=cls)(env)
    app.add_typer(stack, name="stack")


def up(folder: Folder = Path(DEFAULT_FOLDER),
       db: Annotated[Optional[str], typer.Option("--db", envvar="RNNP_STACK_DB", help="PostgreSQL server URL "
                                                 "without a database (default postgresql://postgres@127.0.0.1:5432)")]
       = None,
       workers: Annotated[int, typer.Option(help="Process workers polling the work pool.")] = 2,
       mlflow_port: Annotated[int, typer.Option(envvar="RNNP_STACK_MLFLOW_PORT", help="The MLflow server's port.")]
       = 5000,
       prefect_port: Annotated[int, typer.Option(envvar="RNNP_STACK_PREFECT_PORT",
                                                 help="The Prefect server's port (API and UI).")] = 4200,
       pool: Annotated[str, typer.Option(help="The work pool's name.")] = "rnn-pipeline",
       prefix: Annotated[str, typer.Option(envvar="RNNP_STACK_PREFIX",
                                           help="Prefix of the databases it creates (<prefix>mlflow, ...).")]
       = "rnnp_",
       artifacts: Annotated[Optional[str], typer.Option(help="Where the MLflow server keeps artifacts: a folder "
                                                        "(default <folder>/artifacts) or s3://bucket/path.")] = None):
    """Start the MLflow server (PostgreSQL backend, serving artifacts), the Prefect server (PostgreSQL) and a process
    work pool with its workers; print how to point a config and a shell at them."""
    import shlex

    from rnn_pipeline import stack

    state = stack.up(folder, db or stack.DEFAULT_DB, workers, mlflow_port,
                     prefect_port, pool, prefix, artifacts, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"stack up: MLflow {state.mlflow_url}, Prefect {state.prefect_url} (UI and API), pool {state.pool!r} "
               f"with {workers} worker(s); state and logs in {state.folder}")
    typer.echo("point a config at it:\n  stores: " + json.dumps(state.stores()))
    where = "" if folder == Path(DEFAULT_FOLDER) else f" --folder {shlex.quote(str(folder))}"
    typer.echo("or point a shell at it (a config that names no stores then uses these):\n"
               f"  eval \"$(rnn-pipeline stack env{where})\"")


def status(folder: Folder = Path(DEFAULT_FOLDER),
           as_json: Annotated[bool, typer.Option("--json", help="Print the whole status as JSON.")] = False):
    """Each part's health (process, HTTP health check, workers online); exit code 1 when anything is down."""
    from rnn_pipeline import stack

    s = stack.status(folder)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    elif not s["parts"]:
        typer.echo(f"no stack running from {folder}")
    else:
        typer.echo(f"postgres: {s['postgres']}")
        for name, p in s["parts"].items():
            ok = p.get("healthy", p["alive"])
            typer.echo(f"{name:<10} {'ok' if ok else 'DOWN'} (pid {p['pid']}{', alive' if p['alive'] else ', gone'})")
    raise typer.Exit(0 if s["running"] else 1)


def down(folder: Folder = Path(DEFAULT_FOLDER),
         drop: Annotated[bool, typer.Option("--drop", help="Also drop the stack's databases.")] = False):
    """Stop every process `stack up` started (workers first); with --drop, remove its databases."""
    from rnn_pipeline import stack

    stopped = stack.down(folder, drop, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"stack down: {len(stopped)} process(es) stopped" + (", databases dropped" if drop else ""))


def env(folder: Folder = Path(DEFAULT_FOLDER)):
    """Print `export` lines that point a shell at the running stack: `eval "$(rnn-pipeline stack env)"`. Then
    MLFLOW_TRACKING_URI, PREFECT_API_URL, RNNP_OPTUNA_URL and RNNP_MONITORING_URL name its servers and databases, and
    a config that names no stores of its own trains, predicts and monitors against them."""
    import shlex

    from rnn_pipeline import stack
    from rnn_pipeline.errors import PipelineError

    state = stack.read_state(folder)
    if state is None or not any(stack.ours(p) for p in state.processes.values()):
        raise PipelineError(f"no stack is running from {folder} (rnn-pipeline stack up)")
    typer.echo("\n".join(f"export {k}={shlex.quote(v)}" for k, v in state.env().items()))
