"""The service's optional API key (`serving.api_key_env`: the NAME of an environment variable that holds the key).

With a key, every request that is not a GET, HEAD or OPTIONS (POST /predict, POST /actuals, any later endpoint that
predicts or writes) must carry it, as `Authorization: Bearer <key>` or `X-API-Key: <key>`; otherwise 401, with
`WWW-Authenticate: Bearer` and a body that names the headers (never the key). The check runs in ASGI middleware,
before the body is read or parsed, and again as the routes' security dependency, which is what declares the schemes
in OpenAPI (the Authorize button of /docs). GET /health, /metadata, /stats, /docs and /openapi.json stay open: they
read, and write nothing. Keys are compared in constant time.

A variable that is named but unset or empty stops the service at startup (never a silently open service); binding
a non-loopback interface without a key is warned about (`exposure_warning`).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping

from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from rnn_pipeline.config import ServingConfig
from rnn_pipeline.errors import PipelineError

OPEN_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPECTED = "send the key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
MISSING = f"this endpoint needs the service's API key: {EXPECTED}"
WRONG = f"the API key is not valid: {EXPECTED}"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})

bearer_scheme = HTTPBearer(auto_error=False, description="the service's API key (serving.api_key_env)")
header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False,
                             description="the service's API key (serving.api_key_env)")


def resolve_api_key(serving: ServingConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from the variable `serving.api_key_env` names; None when no variable is named (no key: open).
    Raises PipelineError, naming the variable, when it is unset or empty. Surrounding whitespace is dropped (an
    HTTP header value cannot carry it)."""
    name = serving.api_key_env
    if name is None:
        return None
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        raise PipelineError(f"serving.api_key_env names the environment variable {name}, which is unset or empty: "
                            f"set it to the service's API key (e.g. export {name}=\"$(openssl rand -hex 32)\"), or "
                            "remove serving.api_key_env to serve without a key")
    return value


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int | str | None = None, has_key: bool = False) -> str | None:
    """The warning for a service bound beyond this machine without a key; None when it is keyed or on loopback."""
    if has_key or is_loopback(host):
        return None
    where = f"{host}:{port}" if port is not None else host
    return (f"serving on {where} without an API key: anyone who can reach the port can post predictions and "
            "actuals (and actuals feed retraining). Require a key: in the config, `serving: {api_key_env: "
            "RNN_API_KEY}`, and `export RNN_API_KEY=\"$(openssl rand -hex 32)\"` before starting the service; or "
            "bind to 127.0.0.1")


class KeyCheck:
    """Compares what a request presents with the key, in constant time."""

    def __init__(self, key: str):
        self._key = key.encode("utf-8")

    def matches(self, presented: str | None) -> bool:
        if not presented:
            return False
        # Starlette decodes header bytes as latin-1: encoding back gives the bytes the client sent
        try:
            raw = presented.encode("latin-1")
        except UnicodeEncodeError:
            raw = presented.encode("utf-8")
        return hmac.compare_digest(raw, self._key)

    def problem(self, authorization: str | None, x_api_key: str | None) -> str | None:
        """None when either header carries the key; otherwise the 401's detail (MISSING or WRONG)."""
        bearer = _bearer_token(authorization)
        # both compared, whichever is given, so the time taken does not say which header held a key
        ok = self.matches(bearer) | self.matches(x_api_key)
        if ok:
            return None
        return WRONG if (bearer or x_api_key) else MISSING

    def dependency(self):
        """The routes' security dependency: declares both schemes in OpenAPI and checks the key (again)."""

        def require_api_key(bearer: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
                            api_key: str | None = Depends(header_scheme)) -> None:
            detail = self.problem(f"Bearer {bearer.credentials}" if bearer else None, api_key)
            if detail is not None:
                raise HTTPException(status_code=401, detail=detail, headers=CHALLENGE)

        return require_api_key


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class KeyGuard:
    """Pure ASGI middleware: a request that is not a GET, HEAD or OPTIONS without the key answers 401 before its
    body is read."""

    def __init__(self, app, check: KeyCheck):
        self.app, self.check = app, check

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in OPEN_METHODS:
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or []:
            if k in (b"authorization", b"x-api-key"):
                headers.setdefault(k, v.decode("latin-1"))
        detail = self.check.problem(headers.get(b"authorization"), headers.get(b"x-api-key"))
        if detail is not None:  # the body stays unread: the connection closes after the answer, as with a 413
            return await JSONResponse({"detail": detail}, status_code=401,
                                      headers={**CHALLENGE, "Connection": "close"})(scope, receive, send)
        return await self.app(scope, receive, send)
