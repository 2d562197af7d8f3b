"""Running the HTTP server on uvicorn; SIGINT/SIGTERM shut it down gracefully (logs flushed; SIGTERM exits 0)."""

from __future__ import annotations

import importlib.util
import sys

import uvicorn

from tidal.infra.signals import sigterm_raises
from tidal.infra.workspace import Workspace
from tidal.serving.app import create_app
from tidal.spec import Spec


def serve(spec: Spec, ws: Workspace, *, host: str | None = None, port: int | None = None,
          log_level: str = "warning") -> None:
    app = create_app(spec, ws)
    # background threads (log flush, model reload) hand the GIL back to the event loop within
    # 0.5 ms instead of Python's default 5 ms: a request never waits behind them for long
    sys.setswitchinterval(0.0005)
    # uvloop's event loop and httptools' HTTP parser (C) when installed; else asyncio's and h11 (pure Python)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it
    # found: this one makes that a clean exit (status 0), as a server asked to stop expects
    with sigterm_raises(lambda: SystemExit(0)):
        uvicorn.run(app, host=host or spec.serving.host, port=port or spec.serving.port, log_level=log_level,
                    access_log=False, timeout_graceful_shutdown=10, loop=loop, http=http)
