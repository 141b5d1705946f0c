"""`rnn-pipeline`: the command line. Settings are resolved here, once; heavy imports wait until a command runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows import cli_services, cli_stack
from flows.runtime import exit_process, hide_from_console, quiet_libraries, set_environment, stop_children, stop_on_sigterm


class _Command(typer.core.TyperCommand):
    """A command whose boolean options read as flags in --help (`--wait`, `--access-log / --no-access-log`, `--help`)
    instead of `--wait <bool>`: a flag takes no value, so it shows none."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class _Group(typer.core.TyperGroup, _Command):
    """The root command (its --debug, --version and --help are flags too)."""


class _App(typer.Typer):
    """Every command is a _Command, including those flows/cli_services.py adds."""

    def command(self, *args, cls=None, **kwargs):
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(add_completion=False, no_args_is_help=True, cls=_Group,
           help="Train, register and serve recurrent neural networks on sequence data.")
STATE = {"debug": False}
WAIT_SECONDS = 24 * 3600  # train --wait: how long to wait for another training run of the same model


def _load(config: str, overrides: dict | None = None):
    from rnn_pipeline import stores
    from rnn_pipeline.config import load_config

    cfg = load_config(config, overrides, overrides_source="--set")
    st = stores.resolve(cfg.stores, os.environ)
    stores.ensure(st)
    set_environment(st.root)
    return cfg, st


def _one_line_pipeline_errors() -> None:
    """Prefect logs every failed task with its traceback; for our own errors (bad input, bad config) the message
    says it all, so the traceback is dropped (`--debug` keeps it)."""
    import logging

    from rnn_pipeline.errors import PipelineError

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, PipelineError) and not STATE["debug"]:
                record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(_Filter())


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("rnn-pipeline")
        except PackageNotFoundError:  # run from a checkout that was never installed
            v = "unknown (not installed)"
        typer.echo(f"rnn-pipeline {v}")
        raise typer.Exit()


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
          version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    STATE["debug"] = debug


@app.command("train-many")
def train_many(config: Annotated[list[str], typer.Option("--config", "-c", help="A config to train (repeat for each; "
                                                          "each trains its own model into its own stores).")],
               set_: Annotated[Optional[list[str]], typer.Option(
                   "--set", help="Override one setting in every config, as train's --set (repeatable).")] = None,
               runner: Annotated[str, typer.Option(help="dask (in parallel: a local cluster, or --dask-address), "
                                                   "ray (a local Ray instead, with prefect-ray installed) or "
                                                   "sequential (one after another, for comparison).")] = "dask",
               workers: Annotated[int, typer.Option(help="Processes of the local Dask cluster.")] = 2,
               dask_address: Annotated[Optional[str], typer.Option(
                   "--dask-address", help="A running Dask scheduler (tcp://host:8786) instead of a local cluster.")]
               = None):
    """Train several configs at once, each a training run of its own, fanned out over Prefect's Dask task runner;
    prints one line per config (a failed config does not stop the others)."""
    from rnn_pipeline.overrides import parse_overrides

    if runner not in ("dask", "ray", "sequential"):
        raise typer.BadParameter(f"--runner {runner!r}: dask, ray or sequential")
    if dask_address and runner != "dask":
        raise typer.BadParameter(f"--dask-address is a Dask scheduler's: not for --runner {runner}")
    overrides = parse_overrides(set_, None)
    for c in config:
        _load(c, overrides)  # every config checked before anything starts
    from flows import fanout
    from flows.deploy import config_parameter

    _one_line_pipeline_errors()
    quiet_libraries()
    hide_from_console("run_summary")
    rows = fanout.run([config_parameter(c) for c in config], overrides or None, runner, workers, dask_address)
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['config']}: FAILED ({r['error']})")
        else:
            typer.echo(f"{r['config']}: {r['model_name']} v{r['model_version']} "
                       f"{'promoted' if r['promoted'] else 'not promoted'}, {r['headline']} {r['score']:.6g}, "
                       f"{r['wall_seconds']:.1f}s (pid {r['pid']})")
    if any("error" in r for r in rows):
        raise typer.Exit(1)


@app.command()
def train(config: Annotated[str, typer.Option("--config", "-c", help="Config file path, or a built-in name "
                                                "(seed_sine, greensboro_weather, japanese_vowels, "
                                                "rotten_tomatoes).")] = "seed_sine",
          set_: Annotated[Optional[list[str]], typer.Option(
              "--set", help="Override one setting: a dotted key and a YAML value, e.g. --set tuning.n_trials=5 "
                            "--set 'tuning.space.window=[96,192]' (repeatable; later ones win).")] = None,
          seed: Annotated[Optional[int], typer.Option("--seed", help="The run's seed (the config's `seed`).")]
          = None,
          wait: Annotated[bool, typer.Option("--wait", help="If another training run of the same model is in "
                                                          "progress, wait for it instead of exiting.")] = False):
    """Run the training flow: ingest, validate, preprocess, tune, train, evaluate, register and gate. One training run
    per model at a time: a second one exits naming the run in progress, or waits for it with --wait."""
    from rnn_pipeline.overrides import parse_overrides

    overrides = parse_overrides(set_, seed)
    cfg, st = _load(config, overrides)
    from flows.training import summary_table, training_flow

    _one_line_pipeline_errors()
    quiet_libraries()
    # the flow logs its run summary for Prefect (the run's logs, deployments); here it is printed once, below
    hide_from_console("run_summary")
    try:
        summary = training_flow(config, overrides or None, wait=WAIT_SECONDS if wait else 0.0)
        typer.echo(summary_table(summary))
        typer.echo(f"summary written to {st.last_run_file}")
    except KeyboardInterrupt:
        typer.echo(f"interrupted: finished trials are kept in {st.optuna_url}; run the same command to resume",
                   err=True)
        raise typer.Exit(130) from None


@app.command()
def predict(input: Annotated[Optional[Path], typer.Option("--input", "-i", help="CSV or Parquet in the training "
                                                          "format. Forecasting: history rows (the model's input "
                                                          "columns, optionally grouped by window_id). "
                                                          "Classification: one text per row, or one row per "
                                                          "sequence step; or a .json list of texts, or of "
                                                          "sequences (lists of steps, each a list of channel "
                                                          "values).")] = None,
            text: Annotated[Optional[list[str]], typer.Option("--text", "-t", help="Text classification: a raw "
                                                              "text to classify (repeatable).")] = None,
            model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model URI; default "
                                                         "models:/<name>@champion.")] = None,
            config: Annotated[str, typer.Option("--config", "-c", help="Config naming the model and its stores.")]
            = "seed_sine",
            output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write predictions here (.csv or "
                                                          ".parquet) instead of printing them.")] = None):
    """Forecast the next H steps (original units) from the last L rows of each history; or classify texts and
    sequences (the label and every class's probability)."""
    cfg, st = _load(config)
    import mlflow
    import pandas as pd

    from rnn_pipeline import registry
    from rnn_pipeline.bundle import labelled
    from rnn_pipeline.errors import DataValidationError
    from rnn_pipeline.serving import batch

    quiet_libraries()
    if (input is None) == (not text):
        raise DataValidationError("give either --input FILE or --text (text models only)")
    mlflow.set_tracking_uri(st.mlflow_uri)
    mlflow.set_registry_uri(st.mlflow_uri)
    uri = model or registry.champion_uri(cfg.model_name)
    loaded = registry.load(uri)
    bundle = registry.bundle_of(loaded)
    source = str(input) if input is not None else "--text"
    if text and bundle.reads != "texts":
        raise DataValidationError(f"--text needs a text classifier; {uri} reads {bundle.reads}")
    # validate and coerce here (ints, string ids), so that MLflow's schema check sees clean columns
    data = batch.read_input(str(input))[0] if input is not None else pd.DataFrame({bundle.text_column: text})
    ids, inputs = batch.model_inputs(bundle, data, source)
    if hasattr(bundle, "labelled"):
        out = bundle.labelled(loaded.predict(bundle.inputs_frame(inputs, ids)), ids)
    else:  # a model registered by earlier code (its own copy of the bundle classes answers)
        out = labelled(loaded.predict(bundle.inputs_frame(inputs)), bundle.id_column, ids)
    if output is None:
        typer.echo(out.to_csv(index=False, float_format="%.8g"), nl=False)
    elif output.suffix.lower() in (".parquet", ".pq"):
        out.to_parquet(output, index=False)
    else:
        out.to_csv(output, index=False)


@app.command()
def backtest(config: Annotated[str, typer.Option("--config", "-c", help="Config file path, or a built-in name.")]
             = "seed_sine",
             model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model URI; default "
                                                          "models:/<name>@champion.")] = None,
             origins: Annotated[Optional[int], typer.Option(min=1, help="Forecast origins (default: backtest.origins, "
                                                                   "else 5).")] = None,
             step: Annotated[Optional[int], typer.Option(min=1, help="Steps between origins (default: "
                                                                "backtest.step, else H).")] = None):
    """Rolling-origin backtest of a registered model: forecasts from n origins of the test period beside the
    baselines from the same origins; per-origin and mean figures printed and logged as an MLflow run."""
    cfg, st = _load(config)
    from flows.backtest import backtest_flow
    from rnn_pipeline.forecasting.backtest import table

    _one_line_pipeline_errors()
    quiet_libraries()
    s = backtest_flow(config, model, origins, step)
    key = s["headline"]
    typer.echo(f"{s['model_name']} v{s['model_version']}: " + table(s, key))
    cols = ["origin", "time", *[f"{m}_{key}" for m in s["models"]]]
    typer.echo("  " + "  ".join(f"{c:>14}" for c in cols))
    for o in s["origins"]:
        typer.echo("  " + "  ".join(f"{o[c]:>14.4f}" if isinstance(o[c], float) else f"{str(o[c]):>14}" for c in cols))
    typer.echo(f"logged as MLflow run {s['mlflow_run_id']} ({s['seconds']:.1f} s)")


@app.command("predict-batch")
def predict_batch(input: Annotated[str, typer.Option("--input", "-i", help="A CSV, Parquet or JSON file in the "
                                                     "training format (as `predict` reads it), a file:// or "
                                                     "http(s):// URL of one, or with --table a database URL.")],
                  output: Annotated[Path, typer.Option("--output", "-o", help="Predictions file: Parquet, or CSV "
                                                       "when it ends in .csv.")],
                  config: Annotated[str, typer.Option("--config", "-c", help="Config naming the model and its "
                                                      "stores.")] = "seed_sine",
                  model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model URI; default "
                                                               "models:/<name>@champion.")] = None,
                  table: Annotated[Optional[str], typer.Option(help="Read this table from the database at "
                                                               "--input (a SQLAlchemy URL).")] = None):
    """Score a file, URL or table with the model through the batch-prediction flow: predictions with their
    prediction ids and model version go to --output, and every prediction to the inference log."""
    cfg, st = _load(config)
    from flows.batch import batch_prediction_flow

    _one_line_pipeline_errors()
    quiet_libraries()
    s = batch_prediction_flow(config, input, str(output), model, table)
    typer.echo(f"{s['n_predictions']} predictions of {s['model_name']} v{s['model_version']} written to "
               f"{s['output']} in {s['seconds']:.1f} s"
               + (f"; logged to {s['inference_log']}" if s["logged"] else ""))


@app.command()
def actuals(input: Annotated[Path, typer.Option("--input", "-i", help="CSV or Parquet: prediction_id plus 'label' "
                                                "(classification) or the forecast columns <target>_h<k> holding the "
                                                "actual values (as predict-batch writes them).")],
            config: Annotated[str, typer.Option("--config", "-c", help="Config naming the model and its stores.")]
            = "seed_sine"):
    """Record actual values or labels for earlier predictions (from the service or predict-batch) in the inference
    log, all or none; monitoring then scores the predictions against them."""
    cfg, st = _load(config)
    from rnn_pipeline.serving import batch, inference_log

    frame, name = batch.read_input(str(input))
    items = inference_log.actuals_from_frame(frame, str(input))
    store = inference_log.InferenceLog(st.monitoring_url)
    try:
        n = store.add_actuals(cfg.model_name, items, source=f"file:{name}", where=f"{input}, row {{n}}")
    finally:
        store.dispose()
    typer.echo(f"recorded {n} actual(s) for {cfg.model_name} in {st.monitoring_url}")


@app.command()
def monitor(config: Annotated[str, typer.Option("--config", "-c", help="Config file path, or a built-in name.")]
            = "seed_sine",
            training_deployment: Annotated[Optional[str], typer.Option(
                help="Retrain through this Prefect deployment ('<flow>/<deployment>') instead of in-process.")]
            = None,
            source: Annotated[Optional[str], typer.Option(
                help="Where the current data comes from: 'files' (the incoming folder) or 'inference_log' (what "
                     "the service and predict-batch logged since the last pass). Default: monitoring.source.")]
            = None):
    """Run the monitoring flow once: judge every new batch in the incoming folder (or the inference log's new
    predictions and actuals); retrain on drift or degradation."""
    cfg, st = _load(config)
    from flows.monitoring import incoming_folder, monitoring_flow

    _one_line_pipeline_errors()
    quiet_libraries()
    try:
        if source not in (None, "files", "inference_log"):
            raise typer.BadParameter(f"--source must be 'files' or 'inference_log', not '{source}'")
        summary = monitoring_flow(config, training_deployment, source)
    except KeyboardInterrupt:
        typer.echo("interrupted: judged batches are recorded; run the same command to go on", err=True)
        raise typer.Exit(130) from None
    if summary["skipped"]:
        typer.echo(f"skipped: {summary['skipped']}")
        return
    if not summary["batches"]:
        typer.echo("not enough new predictions or actuals in the inference log to judge"
                   if summary["source"] == "inference_log" else f"no new batches in {incoming_folder(cfg, st)}")
        return
    from rnn_pipeline.monitoring.champion import monitor_class

    for b in summary["batches"]:
        share = "-" if b["drift_share"] is None else f"{b['drift_share']:.2f}"
        score = monitor_class(cfg.task).score_text(b)
        typer.echo(f"{b['batch']}: {b['verdict']} (drifted share {share}, {score}) -> {b['action']}"
                   + (f"; champion v{b['new_champion_version']}" if b["action"].startswith("retrain") else ""))


@app.command()
def history(config: Annotated[str, typer.Option("--config", "-c", help="Config file path, or a built-in name.")]
            = "seed_sine",
            output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the rows here "
                                                          "(.csv or .parquet).")] = None):
    """Show the monitoring store's history for the config's model: one row per judged batch."""
    cfg, st = _load(config)
    from rnn_pipeline.monitoring.record import history_table
    from rnn_pipeline.monitoring.store import MonitoringStore

    store = MonitoringStore(st.monitoring_url)
    frame = store.history(cfg.model_name)
    store.dispose()
    if frame.empty:
        typer.echo(f"no monitoring history for model '{cfg.model_name}' in {st.monitoring_url}")
        return
    typer.echo(history_table(frame, cfg.task))
    if output is not None:
        frame.to_parquet(output, index=False) if output.suffix.lower() in (".parquet", ".pq") else \
            frame.to_csv(output, index=False)


@app.command()
def deploy(config: Annotated[str, typer.Option("--config", "-c", help="Config file path, or a built-in name.")]
           = "seed_sine",
           port: Annotated[int, typer.Option(help="Port of the local Prefect server started when PREFECT_API_URL "
                                                  "is not set.")] = 4200,
           pool: Annotated[Optional[str], typer.Option(
               help="Deploy on this work pool of the Prefect server at PREFECT_API_URL (the stack's: rnn-pipeline) "
                    "and return; its workers run the flows.")] = None):
    """Keep the pipeline running: serve the monitoring deployment (on the config's interval or cron) and the
    training deployment (on demand, and on monitoring.training_cron) until Ctrl-C. Without PREFECT_API_URL a local
    Prefect server is started on 127.0.0.1 for the schedules (its UI shows the runs). With --pool, the same two
    deployments go to that work pool (README, 'Scaling out') and the command returns."""
    cfg, st = _load(config)
    from flows import deploy as dep

    if pool is not None:
        _one_line_pipeline_errors()
        quiet_libraries()
        names = dep.deploy_to_pool(config, cfg, st, pool)
        every = cfg.monitoring.cron or f"every {cfg.monitoring.interval_seconds}s"
        typer.echo(f"deployed on pool '{pool}': {names[0]} ({every}) and {names[1]} "
                   f"({cfg.monitoring.training_cron or 'on demand'}); batches go to {_incoming(cfg, st)}")
        typer.echo(f"run one now: prefect deployment run '{names[0]}' --watch")
        return

    stop_on_sigterm()  # SIGTERM stops like Ctrl-C: the server and every flow-run process too

    _one_line_pipeline_errors()
    quiet_libraries()
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(f"starting a local Prefect server on 127.0.0.1:{port} (database in {st.root / 'prefect-server'}, log in "
                   f"{st.root / 'prefect-server.log'})")
        server, api = dep.start_server(st.root / "prefect-server", port, st.root / "prefect-server.log")
        os.environ["PREFECT_API_URL"] = api
        typer.echo(f"Prefect UI: http://127.0.0.1:{port}")
    mon, trn = dep.deployment_names(cfg)
    every = cfg.monitoring.cron or f"every {cfg.monitoring.interval_seconds}s"
    typer.echo(f"serving {dep.MONITORING_FLOW}/{mon} ({every}) and {dep.TRAINING_FLOW}/{trn} "
               f"({cfg.monitoring.training_cron or 'on demand'}); batches go to {_incoming(cfg, st)}; Ctrl-C stops")
    try:
        dep.serve(config, cfg)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            dep.stop_server(server)
            typer.echo("stopped the local Prefect server")
        killed = stop_children()  # flow runs still going, and anything else started from here
        if killed:
            typer.echo(f"killed {len(killed)} process(es) that did not stop within 20 s: {killed}", err=True)


def _incoming(cfg, st):
    from flows.monitoring import incoming_folder

    return incoming_folder(cfg, st)


@app.command()
def demo(batch_size: Annotated[int, typer.Option(help="Points per batch.")] = 250,
         stationary: Annotated[int, typer.Option(help="Batches before the regime shift.")] = 10,
         shifted: Annotated[int, typer.Option(help="Batches after it.")] = 6):
    """The whole loop, hands-free, on the seed series: a champion, stationary batches, a regime shift, drift,
    retraining and the gate. Prints the timeline and writes .rnn_pipeline/demo_timeline.json."""
    cfg, st = _load("seed_sine_demo")
    from flows.demo import run_demo

    _one_line_pipeline_errors()
    quiet_libraries()
    run_demo("seed_sine_demo", batch_size=batch_size, stationary=stationary, shifted=shifted, echo=typer.echo)


cli_services.register(app, sys.modules[__name__])  # serve, ui (after the commands above: --help lists them in order)
cli_stack.register(app, _Command, _Group)  # stack up | status | down


def main() -> None:
    from rnn_pipeline.errors import PipelineError

    try:
        code = app(standalone_mode=False)  # click returns the code of a typer.Exit here instead of raising it
        if isinstance(code, int) and code:
            exit_process(code)
    except PipelineError as e:
        if STATE["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        exit_process(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        exit_process(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        exit_process(130)
    except Exception as e:  # click usage errors come through here in standalone_mode=False
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if STATE["debug"]:
            raise
        typer.echo(f"error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
