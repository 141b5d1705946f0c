"""The libraries' process-wide settings for a pipeline command: quiet, local, offline environment defaults, and
the warnings and log levels that say nothing to a user. Imports nothing heavy until called."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn


def set_environment(root: Path) -> None:
    """Quiet, local defaults for the libraries, on top of the offline ones importing `flows` set (flows.OFFLINE); a
    user's own settings win."""
    defaults = {
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "rnn_pipeline",
        "PREFECT_UI_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    import logging

    logging.getLogger("rnn_pipeline").setLevel(logging.INFO)


# Warnings that say nothing to a user of this pipeline, matched anywhere in the text. MLflow's type-hint advice is
# raised each time the pyfunc class is defined (logging the model, every load) inside its own
# `warnings.catch_warnings(); simplefilter("once", UserWarning)` (mlflow.utils.annotations.filter_user_warnings_once),
# which puts a filter in front of any "ignore" one: filters cannot silence it, so it is dropped where warnings are
# shown (warnings.showwarning) and, when warnings go to logging, on the `py.warnings` logger.
NOISE = ("Add type hints to the `predict` method",)


def _is_noise(text: str) -> bool:
    return any(n in text for n in NOISE)


def _quiet_showwarning(show):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _is_noise(str(message)):
            show(message, category, filename, lineno, file, line)

    showwarning.quiets = show
    return showwarning


def quiet_libraries() -> None:
    """After the heavy imports (some of them install warning filters of their own): drop the noise that says
    nothing to a user of this pipeline. Idempotent."""
    import logging
    import warnings

    import optuna

    warnings.filterwarnings("ignore", message=".*is experimental.*")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    if not hasattr(warnings.showwarning, "quiets"):
        warnings.showwarning = _quiet_showwarning(warnings.showwarning)
    py_warnings = logging.getLogger("py.warnings")
    if not any(getattr(f, "quiets", False) for f in py_warnings.filters):
        py_warnings.addFilter(_NoiseFilter())
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial lines say more


class _NoiseFilter:
    quiets = True

    def filter(self, record) -> bool:
        return not _is_noise(record.getMessage())


def hide_from_console(marker: str) -> None:
    """Drop log records carrying `extra={marker: True}` from the console handlers (the root logger's), and only
    there: Prefect's API handler, on the flow-run logger, still sends them to the run's logs in the Prefect UI. The
    CLI uses it for lines it prints itself (the training flow's run summary). Idempotent."""
    import logging

    class _Hide(logging.Filter):
        hides = marker

        def filter(self, record: logging.LogRecord) -> bool:
            return not getattr(record, marker, False)

    for h in logging.getLogger().handlers:
        if not any(getattr(f, "hides", None) == marker for f in h.filters):
            h.addFilter(_Hide())


def stop_on_sigterm() -> None:
    """SIGTERM (a service manager, `timeout`, `kill`) stops a long-running command the way Ctrl-C does, so that its
    cleanup runs."""

    def _raise(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def stop_children(timeout: float = 20.0) -> list[int]:
    """Stop every process this one started, and theirs (a Prefect server and its workers, flow-run processes, an
    MLflow server and its workers): SIGTERM to all of them at once, up to `timeout` seconds to exit, then SIGKILL.
    The tree is listed before anything is signalled, so children re-parented by a dying parent are not missed.
    Returns the PIDs that had to be killed."""
    import psutil

    procs = psutil.Process().children(recursive=True)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


# After Ctrl-C, how long the interpreter may take to shut down before the process ends anyway. Seen in the suite: the
# interrupt landed where Optuna's per-trial heartbeat thread (a non-daemon thread, heartbeat_interval set) was never
# told to stop, and the interpreter waited for it forever after printing the message; a user who pressed Ctrl-C must
# get the prompt back.
# What was finished is already stored (trials in Optuna; a run's MLflow records are reconciled by the next run).
INTERRUPTED_EXIT_GRACE_S = 20.0


def exit_process(code: int) -> NoReturn:
    """sys.exit(code); after an interrupt (130), bounded by INTERRUPTED_EXIT_GRACE_S once the interpreter shuts down.
    The watchdog acts only when the main thread has ended (the interpreter is shutting down and stuck), so main()
    called in-process (tests, a notebook) is never cut short."""
    if code == 130:
        def hard_exit() -> None:
            if not threading.main_thread().is_alive():
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:  # a closed stream: nothing left to say
                        pass
                os._exit(code)

        timer = threading.Timer(INTERRUPTED_EXIT_GRACE_S, hard_exit)
        timer.name, timer.daemon = "rnn-pipeline-exit-watchdog", True
        timer.start()
    sys.exit(code)


WORKDIR_ENV = "RNNP_WORKDIR"  # set by `rnn-pipeline deploy --pool` on its deployments


def enter_workdir() -> None:
    """In a flow run that a work pool's worker started for `deploy --pool`: move to the folder it was deployed from,
    so that relative stores roots and paths mean what they meant there (the worker's run starts in the checkout)."""
    folder = os.environ.get(WORKDIR_ENV)
    if not folder:
        return
    if not Path(folder).is_dir():
        from rnn_pipeline.errors import PipelineError

        raise PipelineError(f"this deployment runs in {folder} ({WORKDIR_ENV}, the folder `rnn-pipeline deploy --pool` "
                            "ran in), which this worker cannot see: run the pool's workers on the machine that "
                            "deployed, or deploy again from a folder they share")
    os.chdir(folder)
