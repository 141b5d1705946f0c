"""The model the service answers with, swapped whole when the alias it follows moves (hot swap).

When the service follows an alias (`models:/<name>@champion`), a thread checks it every `poll_seconds`; a new
version is loaded and warmed up completely before one assignment swaps it in, and each request uses the model it
started with, so no request ever sees a half-loaded model. A version that fails to load is reported (GET /health)
while the one already loaded keeps answering.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from rnn_pipeline import faults
from rnn_pipeline.classification.bundle import ClassifierBundle
from rnn_pipeline.errors import RegistryError
from rnn_pipeline.forecasting.bundle import ForecastBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One fully loaded model version; replaced as a whole, never mutated."""

    uri: str
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    bundle: ForecastBundle | ClassifierBundle
    signature: dict | None
    loaded_at: str

    @property
    def ref(self) -> dict:
        return {"name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri}


_ALIAS = re.compile(r"^models:/([^/@]+)@([^/@]+)$")
_VERSION = re.compile(r"^models:/([^/@]+)/(\d+)$")


def parse_uri(uri: str) -> tuple[str | None, str | None, str | None]:
    """models:/name@alias -> (name, alias, None); models:/name/3 -> (name, None, '3'); anything else: no name."""
    if m := _ALIAS.match(uri):
        return m.group(1), m.group(2), None
    if m := _VERSION.match(uri):
        return m.group(1), None, m.group(2)
    return None, None, None


def settle_gc() -> None:
    """Collect once, then freeze what is left (torch, MLflow, pandas, the model: ~500k long-lived objects) out of
    the collector's sight: otherwise every full collection rescans them and stalls all requests ~200 ms."""
    gc.collect()
    gc.freeze()


class ModelHolder:
    """The model the service answers with. Follows an alias when the URI names one."""

    def __init__(self, uri: str, poll_seconds: float = 30.0, client=None):
        import mlflow

        self.uri, self.poll_seconds = uri, poll_seconds
        self.name, self.alias, self.version = parse_uri(uri)
        self.client = client or mlflow.MlflowClient()
        self.current: Served | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self.last_poll: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _resolve(self) -> str | None:
        if self.alias is None:
            return self.version
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as e:
            raise RegistryError(f"model '{self.name}' has no version with alias '{self.alias}': "
                                f"{e.message.splitlines()[0]}") from None

    def _load(self, version: str | None) -> Served:
        from rnn_pipeline import registry

        uri = f"models:/{self.name}/{version}" if self.name and version else self.uri
        model = registry.load(uri)
        bundle = registry.bundle_of(model)
        bundle.warm_up()  # a model that cannot answer is never swapped in
        sig = model.metadata.signature
        sig = {k: json.loads(v) for k, v in sig.to_dict().items() if v} if sig is not None else None
        return Served(self.uri, self.name, version, self.alias, model.metadata.run_id, bundle, sig,
                      datetime.now(UTC).isoformat(timespec="seconds"))

    def load(self) -> Served:
        """The first load: errors go to the caller (the service does not start without a model)."""
        self.current = self._load(self._resolve())
        return self.current

    def check(self) -> bool:
        """One poll: load and swap in the version the alias points at now, if it moved. True when swapped."""
        self.last_poll = datetime.now(UTC).isoformat(timespec="seconds")
        version = self._resolve()
        if self.current is not None and version == self.current.version:
            return False
        new = self._load(version)  # fully loaded and warmed up before anyone sees it
        faults.point("hot_swap")
        old, self.current = self.current, new
        self.swaps += 1
        log.info("model %s: now serving version %s (was %s)", self.name, new.version, old and old.version)
        del old
        settle_gc()
        return True

    def start_polling(self) -> None:
        if self.alias is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="model-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
                self.last_error = None
            except Exception as e:  # keep serving the model we have; say why the new one is not served
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("model poll failed (still serving version %s): %s",
                          self.current and self.current.version, self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
