"""Who is acting, for audit trails: the name given, else the operating-system user."""

from __future__ import annotations

import getpass


def current_actor(actor: str | None = None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"
