"""Shared fixtures: a small real sample of Telco churn, specs, and workspaces on SQLite or PostgreSQL."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import polars as pl
import pytest

from tidal.infra.workspace import Workspace
from tidal.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
TELCO = ROOT / "examples" / "churn" / "telco_customer_churn.csv"
PG_ADMIN_URL = os.environ.get("TIDAL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE = os.environ.get("TIDAL_REQUIRE_SERVICES") == "1"

CHURN_SPEC = {
    "name": "churn",
    "task": "binary",
    "target": "Churn",
    "positive_class": "Yes",
    "entity_key": "customerID",
    "features": {
        "gender": {"type": "categorical", "allowed": ["Female", "Male"]},
        "SeniorCitizen": {"type": "boolean"},
        "Partner": {"type": "categorical"},
        "tenure": {"type": "numeric", "min": 0, "max": 100, "nullable": False},
        "InternetService": {"type": "categorical"},
        "Contract": {"type": "categorical", "allowed": ["Month-to-month", "One year", "Two year"]},
        "PaymentMethod": {"type": "categorical"},
        "MonthlyCharges": {"type": "numeric", "min": 0, "nullable": False},
        "TotalCharges": {"type": "numeric", "min": 0},
    },
    "costs": {"true_positive": -20, "false_positive": 10, "true_negative": 0, "false_negative": 60},
    "training": {"num_boost_round": 200},
    "monitoring": {"window": 500, "min_samples": 50, "min_labels": 50},
    "retraining": {"min_new_labels": 200},
    "serving": {"flush_interval_s": 0.2, "reload_interval_s": 0.2},
}


@pytest.fixture
def churn_spec():
    return parse_spec(CHURN_SPEC)


@pytest.fixture
def telco_df() -> pl.DataFrame:
    return pl.read_csv(TELCO, infer_schema=False)


@pytest.fixture
def telco_csv() -> Path:
    return TELCO


def postgres_url() -> str | None:
    """A fresh PostgreSQL database for one test, or None (or a failure in CI) when the server is absent."""
    import sqlalchemy as sa

    from tidal.infra.metadata import make_engine

    try:
        admin = make_engine(PG_ADMIN_URL)
        name = f"tidal_test_{uuid.uuid4().hex[:10]}"
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001
        if REQUIRE:
            pytest.fail(f"PostgreSQL is required (TIDAL_REQUIRE_SERVICES=1) but unavailable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_postgres(url: str) -> None:
    import sqlalchemy as sa

    from tidal.infra.metadata import make_engine

    name = url.rsplit("/", 1)[1]
    admin = make_engine(PG_ADMIN_URL)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def workspace(request, tmp_path):
    """A created workspace whose metadata lives in SQLite or in a fresh PostgreSQL database."""
    url = None
    if request.param == "postgres":
        url = postgres_url()
    ws = Workspace(tmp_path / "ws", metadata_url=url).create()
    yield ws
    ws.close()
    if url:
        drop_postgres(url)


@pytest.fixture
def sqlite_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws").create()
    yield ws
    ws.close()
