"""SIGTERM turned into a Python exception for the length of a block, so that cleanup code runs."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_raises(exception: Callable[[], BaseException]) -> Iterator[None]:
    """Within the block, SIGTERM raises ``exception()`` (outside the main thread, where signals
    cannot be handled, nothing changes); the previous handler comes back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(_signum: int, _frame: Any) -> None:
        raise exception()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
