"""tidal's one error hierarchy.

Every error tidal raises on purpose is a :class:`TidalError`. Each member also subclasses
the builtin it refines, carries structured fields, and knows the HTTP status it maps to,
so the server and the CLI translate errors in one place each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: where (a field path), what, and how to fix it."""

    location: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}" if self.location else self.message
        return f"{text} (fix: {self.fix})" if self.fix else text

    def as_dict(self) -> dict[str, str]:
        return {"field": self.location, "problem": self.message, "fix": self.fix}


class TidalError(Exception):
    """Root of every error tidal raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, problems: list[Problem] | None = None, fix: str = "",
                 **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [])
        self.fix = fix
        self.details = details

    def __str__(self) -> str:
        lines = [self.message]
        lines += [f"  - {p}" for p in self.problems]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)

    def to_body(self) -> dict[str, Any]:
        """The one JSON error shape every HTTP error uses."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.problems:
            body["problems"] = [p.as_dict() for p in self.problems]
        if self.fix:
            body["fix"] = self.fix
        return {"error": body}


class SpecError(TidalError, ValueError):
    """The spec file is missing, malformed or inconsistent."""

    status_code = 400
    code = "invalid_spec"


class DataValidationError(TidalError, ValueError):
    """Input data cannot be read or does not fit the spec's schema."""

    status_code = 422
    code = "invalid_data"


class RequestValidationError(DataValidationError):
    """An HTTP request body does not fit its contract."""

    code = "invalid_request"


class NotFound(TidalError, LookupError):
    """Something named does not exist."""

    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    """No model version matches (or none is in production yet)."""

    code = "model_not_found"


class BundleIntegrityError(TidalError, OSError):
    """A model bundle's files do not match its manifest: tampered, truncated or foreign."""

    status_code = 500
    code = "bundle_integrity"


class StateError(TidalError, RuntimeError):
    """The operation is not possible in the workspace's current state."""

    status_code = 409
    code = "conflict"


class ApprovalRequired(StateError):
    """A promotion needs a person's approval that the version does not have (or it was rejected)."""

    code = "approval_required"


class NotReady(TidalError, RuntimeError):
    """The server has no model to serve yet."""

    status_code = 503
    code = "not_ready"


class InvalidArgument(TidalError, ValueError):
    """An argument of an API call or a command is not acceptable (e.g. a malformed tuning budget)."""

    status_code = 400
    code = "invalid_argument"


class PayloadTooLarge(TidalError, ValueError):
    """A request body is larger than the endpoint accepts."""

    status_code = 413
    code = "payload_too_large"


class ServiceDisabled(TidalError, RuntimeError):
    """A route is switched off until it is configured (e.g. its token is not set)."""

    status_code = 503
    code = "disabled"


class Unauthorized(TidalError, PermissionError):
    """A protected endpoint was called without the right token."""

    status_code = 401
    code = "unauthorized"


class Gone(TidalError, LookupError):
    """An API version that was retired: its clients must move to the newest."""

    status_code = 410
    code = "api_retired"
