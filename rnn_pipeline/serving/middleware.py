"""The service's ASGI middleware and counters: a request body over the limit is refused with 413 before any of it
is parsed, whether its size is declared (Content-Length) or only seen as it streams in; every response is counted
by status, and the latency of the last /predict calls is kept (GET /stats)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from fastapi import HTTPException
from fastapi.responses import JSONResponse


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    requests: int = 0
    by_status: dict = field(default_factory=dict)
    predictions: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=5000))

    def count(self, status: int, path: str, seconds: float) -> None:
        self.requests += 1
        key = f"{status // 100}xx"
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if path == "/predict" and status == 200:
            self.latencies.append(seconds * 1000)

    def summary(self) -> dict:
        lat = np.asarray(self.latencies)
        pct = ({f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)} if len(lat) else {})
        up = time.time() - self.started
        return {"uptime_s": round(up, 1), "requests": self.requests, "responses": dict(self.by_status),
                "predictions": self.predictions, "requests_per_s": round(self.requests / up, 2) if up > 0 else None,
                "predict_latency_ms": {"last_n": len(lat), **pct}}


class _TooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes an HTTPException from body reading on as the response."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes (serving.max_body_bytes)")


class Guard:
    """Pure ASGI middleware: refuses bodies over the limit with 413 (declared or streamed), counts responses by
    status and keeps the latency of the last /predict calls (GET /stats)."""

    def __init__(self, app, max_body_bytes: int, stats: Stats):
        self.app, self.max, self.stats = app, max_body_bytes, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_problem(send, 400, "Content-Length is not a number", self.stats)
            if size > self.max:
                return await _send_problem(send, 413, f"request body of {size} bytes exceeds the limit of "
                                                      f"{self.max} bytes (serving.max_body_bytes)", self.stats)
        seen, started, status = 0, False, 500

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max:
                    raise _TooLarge(self.max)
            return message

        async def watched_send(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _TooLarge as e:  # raised outside FastAPI's body parsing
            if not started:
                return await _send_problem(send, 413, e.detail, self.stats)
            raise
        self.stats.count(status, scope["path"], time.perf_counter() - t0)


async def _send_problem(send, status: int, detail: str, stats: Stats) -> None:
    body = JSONResponse({"detail": detail}, status_code=status).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
    stats.count(status, "", 0.0)
