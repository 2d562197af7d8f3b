"""Fixtures for the source tests: a live Redis (skipped, or failed in CI, when absent) and small specs."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import CHURN_SPEC, REQUIRE, TELCO

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    """The local Redis URL, or a skip (a failure when TIDAL_REQUIRE_SERVICES=1) when it is not running."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        if REQUIRE:
            pytest.fail(f"Redis is required (TIDAL_REQUIRE_SERVICES=1) but unavailable: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_stream():
    """(client, key) of a fresh stream key that is deleted afterwards."""
    import redis

    client = redis.Redis.from_url(redis_url())
    key = f"tidal_test_{uuid.uuid4().hex[:10]}"
    yield client, key
    client.delete(key)
    client.close()


def telco_messages(n: int, offset: int = 0) -> list[dict[str, str]]:
    """``n`` rows of the Telco sample as stream messages (every field as text)."""
    import polars as pl

    columns = [CHURN_SPEC["entity_key"], CHURN_SPEC["target"], *CHURN_SPEC["features"]]
    df = pl.read_csv(TELCO, infer_schema=False).select(columns).slice(offset, n)
    return [{k: v or "" for k, v in row.items()} for row in df.iter_rows(named=True)]
