"""Running the HTTP server on uvicorn; SIGINT/SIGTERM shut it down gracefully (logs flushed)."""

from __future__ import annotations

import uvicorn

from tidal.infra.workspace import Workspace
from tidal.serving.app import create_app
from tidal.spec import Spec


def serve(spec: Spec, ws: Workspace, *, host: str | None = None, port: int | None = None,
          log_level: str = "warning") -> None:
    app = create_app(spec, ws)
    uvicorn.run(app, host=host or spec.serving.host, port=port or spec.serving.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=10)
