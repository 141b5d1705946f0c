"""Fault injection for the crash tests (tests/faults, `make faults`): `point("registration")` kills this process
with SIGKILL, as `kill -9` or the OOM killer would, when RNN_PIPELINE_FAULT_AT names that point. Unset (always, outside
those tests), a point does nothing. The points: tuning (a trial is running, after one finished), final_fit, registration
(the version exists, its tags are half-written), monitoring (a batch is recorded, its retrain not yet started),
hot_swap (the service has loaded a new version and not yet swapped it in)."""

from __future__ import annotations

import os
import signal

ENV = "RNN_PIPELINE_FAULT_AT"


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
