"""The CLI's long-running commands: `serve` (the model over HTTP) and `ui` (the MLflow UI). flows/cli.py registers
them on its typer app with `register`; like its other commands they load the config through its `_load` and quiet
the libraries with its `quiet_libraries` (looked up on that module when a command runs, so patching it there works).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Optional

import typer

from flows.runtime import stop_children, stop_on_sigterm

_cli: ModuleType | None = None  # the CLI module (flows.cli, or __main__ under `python -m flows.cli`), set by register


def register(app: typer.Typer, cli: ModuleType) -> None:
    """Add `serve` and `ui` to `app`, the typer app of `cli`."""
    global _cli
    _cli = cli
    app.command()(serve)
    app.command()(ui)


def serve(config: Annotated[str, typer.Option("--config", "-c", help="Config naming the model, its stores and the "
                                                "serving limits.")] = "seed_sine",
          model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model URI; default "
                                                       "models:/<name>@champion (an alias is followed: hot swap).")]
          = None,
          host: Annotated[Optional[str], typer.Option(help="Interface to bind; default serving.host "
                                                      "(127.0.0.1).")] = None,
          port: Annotated[Optional[int], typer.Option(help="Port; default serving.port (8000); 0 picks a free "
                                                      "one.")] = None,
          access_log: Annotated[bool, typer.Option(help="Log every request (uvicorn's access log).")] = False):
    """Serve the model over HTTP (FastAPI + uvicorn): POST /predict, POST /actuals, GET /health, /metadata, /stats
    and the OpenAPI docs at /docs. Predictions and actuals go to the inference log in the monitoring store. With
    serving.api_key_env, the POSTs need the API key that environment variable holds."""
    cfg, st = _cli._load(config)
    from rnn_pipeline.serving.auth import exposure_warning, resolve_api_key

    host = host or cfg.serving.host
    api_key = resolve_api_key(cfg.serving)  # a named variable that is unset or empty stops here, before the model loads
    if warning := exposure_warning(host, cfg.serving.port if port is None else port, api_key is not None):
        typer.echo(f"warning: {warning}", err=True)
    import mlflow
    import torch
    import uvicorn

    from rnn_pipeline import registry
    from rnn_pipeline.serving import inference_log
    from rnn_pipeline.serving.app import create_app
    from rnn_pipeline.serving.holder import ModelHolder, settle_gc

    _cli.quiet_libraries()
    mlflow.set_tracking_uri(st.mlflow_uri)
    mlflow.set_registry_uri(st.mlflow_uri)
    torch.set_num_threads(cfg.serving.threads)
    s = cfg.serving
    uri = model or registry.champion_uri(cfg.model_name)
    holder = ModelHolder(uri, s.poll_seconds)
    served = holder.load()
    store = inference_log.InferenceLog(st.monitoring_url) if s.log_predictions else None
    api = create_app(holder, s, store, fallback=str(st.root / "inference_log.failed.jsonl"))
    port = s.port if port is None else port
    port = port or _free_port()
    follows = f", following alias '{holder.alias}' every {s.poll_seconds:g}s" if holder.alias else ""
    typer.echo(f"serving {served.name or uri} v{served.version} ({uri}{follows}) on http://{host}:{port} "
               f"(docs: http://{host}:{port}/docs)")
    typer.echo(f"inference log: {st.monitoring_url}" if store else "inference log: off (serving.log_predictions)")
    typer.echo(f"API key: required on POST /predict and /actuals (from ${s.api_key_env})" if api_key
               else "API key: none (serving.api_key_env)")
    settle_gc()
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=access_log,
                timeout_keep_alive=s.keep_alive_seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui(config: Annotated[str, typer.Option("--config", "-c", help="Config whose stores to show.")] = "seed_sine",
       port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 5000,
       workers: Annotated[int, typer.Option(min=1, help="Server worker processes: 1 serves one person; MLflow's "
                                                         "own default, 4, suits a shared UI.")] = 1):
    """Open the MLflow UI on this pipeline's tracking store, bound to 127.0.0.1."""
    cfg, st = _cli._load(config)
    if port:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                typer.echo(f"port {port} is in use; picking a free one", err=True)
                port = 0
    port = port or _free_port()
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    cmd = [exe, "ui", "--backend-store-uri", st.mlflow_uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    if st.artifact_location:
        cmd += ["--default-artifact-root", st.artifact_location]
    typer.echo(f"MLflow UI: http://127.0.0.1:{port}  (tracking {st.mlflow_uri}; Ctrl-C stops it)")
    view = _runs_view(st.mlflow_uri, cfg.name)
    if view:
        typer.echo(f"  runs of '{cfg.name}', with the pipeline's columns: http://127.0.0.1:{port}/{view}")
    stop_on_sigterm()
    # MLflow's job runner (a second server process) runs GenAI jobs (judges, scorers) that this pipeline never starts
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # its workers in their own group, stopped below
    code = 0
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_children()
    raise typer.Exit(code)


def _runs_view(uri: str, experiment: str) -> str | None:
    """The address fragment of the experiment's saved runs view (tracking.save_runs_view), when it has one."""
    import mlflow

    from rnn_pipeline.tracking import VIEW_TAG, view_fragment

    try:
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # a store that is not there yet: the UI still starts
        return None
    return view_fragment(exp.experiment_id) if exp is not None and VIEW_TAG in (exp.tags or {}) else None
