"""Running the HTTP server on uvicorn; SIGINT/SIGTERM shut it down gracefully (logs flushed; SIGTERM exits 0)."""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
from typing import Any

import uvicorn

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
    previous = _exit_cleanly_on(signal.SIGTERM)
    try:
        uvicorn.run(app, host=host or spec.serving.host, port=port or spec.serving.port, log_level=log_level,
                    access_log=False, timeout_graceful_shutdown=10, loop=loop, http=http)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_cleanly_on(signum: int) -> Any:
    """Make ``signum`` raise SystemExit(0); the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(_signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    return signal.signal(signum, stop)
