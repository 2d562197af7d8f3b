"""Bearer-token protection of the data and admin routes."""

from __future__ import annotations

import hmac
import os

from fastapi import Request

from tidal.errors import ServiceDisabled, Unauthorized


def require_bearer(request: Request, env_name: str, what: str) -> None:
    """Check the request's bearer token against the environment variable ``env_name``.

    Unset variable: 503 (the routes are off until configured); missing or wrong token: 401.
    """
    expected = os.environ.get(env_name)
    if not expected:
        raise ServiceDisabled(f"{what} is disabled: the environment variable {env_name} is not set",
                              fix=f"set {env_name} to a secret token in the server's environment and restart it")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token",
                           fix=f"send the header 'Authorization: Bearer <token>' with the value of {env_name}")
