"""The config sections about where state lives and how the pipeline runs once trained: stores, monitoring and
retraining, serving. `PipelineConfig` (config.py) holds them; import them from there or from here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):  # the base of every section (config.py's and config_data.py's too): unknown keys are errors
    model_config = ConfigDict(extra="forbid")


class StoresConfig(_Strict):
    """Where state lives. None means the embedded default under `root`."""

    root: str = ".rnn_pipeline"
    mlflow_uri: str | None = None
    optuna_url: str | None = None
    monitoring_url: str | None = Field(None, description="SQLAlchemy URL of the monitoring store "
                                                         "(default: sqlite file monitoring.db under root)")


class RetrainConfig(_Strict):
    """What the monitoring flow retrains on when a batch is judged `drift` or `degraded`."""

    enabled: bool = True
    policy: Literal["reference+new", "recent"] = Field(
        "reference+new", description="reference+new: the champion's training data plus every batch since; "
                                     "recent: only the most recent `recent_points` of that stream")
    recent_points: int = Field(2000, ge=10, description="points kept by the 'recent' policy")
    tuning: Literal["reuse", "search"] = Field(
        "reuse", description="reuse: refit the champion's hyperparameters on the new data (fast); "
                             "search: run the config's Optuna search on the new data")
    n_trials: int | None = Field(None, ge=1, description="with tuning=search: trials instead of tuning.n_trials")


class MonitoringConfig(_Strict):
    """The monitoring flow: new batches -> Evidently drift + the champion's error -> verdict -> retrain."""

    source: Literal["files", "inference_log"] = Field(
        "files", description="where a pass takes its current data: batch files in `incoming`, or the predictions "
                             "(and actuals) the service and predict-batch wrote to the inference log since the last "
                             "pass")
    incoming: str | None = Field(None, description="folder of new batch files (CSV/Parquet, the training schema); "
                                                   "default <root>/incoming/<name>; relative to the config's folder")
    drift_method: Literal["wasserstein", "ks", "psi", "jensenshannon", "kl_div", "anderson", "cramer_von_mises",
                          "energy", "hellinger", "mannw", "ed", "es", "t_test", "empirical_mmd"] = Field(
        "wasserstein", description="Evidently stat test per window feature, fixed at every batch size")
    drift_threshold: float | Literal["auto"] | None = Field(
        "auto", description="per-feature threshold of the method; 'auto' (wasserstein): calibrated per feature on the "
                            "reference at the batch's size; None: Evidently's default for the method")
    drift_calibration: float = Field(1.5, gt=0, description="with drift_threshold 'auto': how many times the largest "
                                                            "distance of a reference block from the reference")
    drift_share: float = Field(0.5, gt=0, le=1, description="verdict 'drift' when this share of features drifted")
    error_ratio: float = Field(1.5, gt=1, description="verdict 'degraded' when the champion's MSE on the batch is "
                                                      "this many times its MSE on its own test windows")
    min_windows: int = Field(10, ge=1, description="a batch giving fewer scoreable windows (classification: labelled "
                                                   "items) is judged on drift only")
    accuracy_drop: float = Field(0.1, gt=0, lt=1, description="classification: verdict 'degraded' when the champion's "
                                                              "accuracy on a labelled batch is this far below its test "
                                                              "accuracy")
    interval_seconds: int | None = Field(3600, ge=1, description="deploy: run the monitoring flow this often")
    cron: str | None = Field(None, description="deploy: a cron schedule for monitoring instead of the interval")
    training_cron: str | None = Field(None, description="deploy: also retrain from the config on this cron")
    lock_ttl_seconds: int = Field(600, ge=60, description="a monitoring lock whose heartbeat (refreshed every quarter "
                                  "of this) stopped this long ago is stale and taken over")
    keep_reports: int | None = Field(50, ge=1, description="after each pass keep the newest this many HTML reports "
                                     "of the model in <root>/reports/<name>/ and delete older ones (their store rows "
                                     "keep the path); null keeps every report")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @model_validator(mode="after")
    def _threshold(self):
        t = self.drift_threshold
        if t == "auto" and self.drift_method != "wasserstein":
            raise ValueError("drift_threshold 'auto' is calibrated for drift_method 'wasserstein'; give a number "
                             f"(or null for Evidently's default) for '{self.drift_method}'")
        if isinstance(t, (int, float)) and t <= 0:
            raise ValueError("drift_threshold must be > 0")
        return self


class ServingConfig(_Strict):
    """`rnn-pipeline serve`: the HTTP service around the champion, and the inference log it writes."""

    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 exposes the service to the network)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: a free one)")
    poll_seconds: float = Field(30.0, gt=0, description="how often the service checks whether the alias it serves "
                                                        "moved to another version (hot swap)")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="a larger request body is refused with 413")
    max_items: int = Field(1000, ge=1, description="most series, texts or sequences (or actuals) in one request "
                                                   "(413 beyond)")
    max_steps: int = Field(10_000, ge=1, description="most steps in one history or sequence (422 beyond)")
    max_text_chars: int = Field(100_000, ge=1, description="longest text in characters (422 beyond)")
    threads: int = Field(1, ge=1, description="torch CPU threads in the service (1 is fastest for small RNNs)")
    keep_alive_seconds: float = Field(65.0, gt=0, description="how long an idle keep-alive connection stays open "
                                                              "(longer than a proxy's idle timeout, usually 60 s)")
    log_predictions: bool = Field(True, description="write every prediction and actual to the inference log "
                                                    "(the monitoring store)")
    log_flush_seconds: float = Field(0.2, gt=0, description="the inference log is written in the background, in "
                                                            "batches, at least this often")
    batch_chunk: int = Field(10_000, ge=1, description="predict-batch: items scored and logged per chunk")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="the NAME of an environment variable holding the service's API key "
                                                "(not the key): POST /predict and /actuals then need "
                                                "'Authorization: Bearer <key>' or 'X-API-Key: <key>' (401 without); "
                                                "unset or empty stops the service at startup. None: no key")
