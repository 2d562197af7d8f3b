"""The metadata database: batches, runs, model versions, stage history, approvals, monitor results, alerts.

SQLAlchemy Core over a SQLite file in WAL mode by default, or any ``postgresql://`` URL.
JSON payloads are stored as text so both backends behave the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from tidal.errors import NotFound

meta = sa.MetaData()

batches = sa.Table(
    "batches", meta,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("content_sha256", sa.String(64), nullable=False, index=True),
    sa.Column("rows_total", sa.Integer, nullable=False),
    sa.Column("rows_accepted", sa.Integer, nullable=False),
    sa.Column("rows_quarantined", sa.Integer, nullable=False),
    sa.Column("events_version", sa.Integer),
    sa.Column("report", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

runs = sa.Table(
    "runs", meta,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("data_versions", sa.Text, nullable=False),
    sa.Column("code_version", sa.String(64), nullable=False),
    sa.Column("spec_sha256", sa.String(64), nullable=False),
    sa.Column("artifact", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
)

model_versions = sa.Table(
    "model_versions", meta,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("bundle_path", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

stage_events = sa.Table(
    "stage_events", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("from_stage", sa.String(16)),
    sa.Column("to_stage", sa.String(16), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# a person's sign-off (or refusal) of a model version; the newest decision per version is its status
approvals = sa.Table(
    "approvals", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.Integer, nullable=False, index=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

monitor_results = sa.Table(
    "monitor_results", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_version", sa.Integer),
    sa.Column("n_predictions", sa.Integer, nullable=False),
    sa.Column("n_labels", sa.Integer, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

alerts = sa.Table(
    "alerts", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("model_version", sa.Integer),
    sa.Column("resolved", sa.Boolean, nullable=False, default=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

source_state = sa.Table(
    "source_state", meta,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

quarantine_decisions = sa.Table(
    "quarantine_decisions", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False, unique=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

contracts = sa.Table(
    "contracts", meta,
    sa.Column("api", sa.String(16), primary_key=True),
    sa.Column("contract", sa.Text, nullable=False),
    sa.Column("from_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

_JSON_COLUMNS = {"params", "metrics", "data_versions", "report", "result", "details", "state", "contract"}


def now() -> datetime:
    return datetime.now(timezone.utc)


def _decode(row: sa.Row) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in _JSON_COLUMNS & out.keys():
        out[key] = json.loads(out[key])
    for key, value in out.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            out[key] = value.replace(tzinfo=timezone.utc)
    return out


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if k in _JSON_COLUMNS:
            v = json.dumps(v, default=str)
        elif isinstance(v, datetime) and v.tzinfo is not None:
            v = v.astimezone(timezone.utc)  # SQLite keeps no offset: store every instant in UTC
        out[k] = v
    return out


def make_engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    return engine


class MetadataStore:
    """Typed access to the metadata tables; every write is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create(self) -> None:
        meta.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # generic helpers -------------------------------------------------------------------
    def insert(self, table: sa.Table, values: dict[str, Any]) -> Any:
        with self.engine.begin() as conn:
            res = conn.execute(table.insert().values(**_encode(values)))
            return res.inserted_primary_key[0] if res.inserted_primary_key else None

    def update(self, table: sa.Table, where: sa.ColumnElement, values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.update().where(where).values(**_encode(values)))

    def select(self, query: sa.Select) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [_decode(r) for r in conn.execute(query)]

    def one(self, query: sa.Select, what: str) -> dict[str, Any]:
        rows = self.select(query.limit(1))
        if not rows:
            raise NotFound(f"{what} not found")
        return rows[0]

    # batches ---------------------------------------------------------------------------
    def batch_by_content(self, sha256: str) -> dict[str, Any] | None:
        rows = self.select(sa.select(batches).where(batches.c.content_sha256 == sha256).limit(1))
        return rows[0] if rows else None

    # source positions ------------------------------------------------------------------
    def source_state(self, source: str) -> dict[str, Any]:
        rows = self.select(sa.select(source_state).where(source_state.c.source == source))
        return rows[0]["state"] if rows else {}

    def save_source_state(self, source: str, state: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(source_state.update().where(source_state.c.source == source)
                                .values(state=json.dumps(state), updated_at=now())).rowcount
            if not done:
                conn.execute(source_state.insert().values(source=source, state=json.dumps(state), updated_at=now()))

    # model versions --------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        return self.select(sa.select(model_versions).order_by(model_versions.c.version))

    def version(self, version: int) -> dict[str, Any]:
        return self.one(sa.select(model_versions).where(model_versions.c.version == version),
                        f"model version {version}")

    def production(self) -> dict[str, Any] | None:
        return self.in_stage("production")

    def in_stage(self, stage: str) -> dict[str, Any] | None:
        rows = self.select(sa.select(model_versions).where(model_versions.c.stage == stage))
        return rows[0] if rows else None

    def set_stages(self, changes: list[tuple[int, str | None, str]], *, actor: str, reason: str,
                   also: Sequence[tuple[sa.Table, sa.ColumnElement | None, dict[str, Any]]] = ()) -> None:
        """Apply several stage changes and their audit entries in one transaction, with ``also``:
        rows to insert (``where`` None) or update in the same transaction (e.g. a new API contract)."""
        with self.engine.begin() as conn:
            for table, where, values in also:
                conn.execute(table.insert().values(**_encode(values)) if where is None
                             else table.update().where(where).values(**_encode(values)))
            for version, old, new in changes:
                conn.execute(model_versions.update().where(model_versions.c.version == version)
                             .values(stage=new))
                conn.execute(stage_events.insert().values(
                    version=version, from_stage=old, to_stage=new, actor=actor, reason=reason, at=now()))

    def stage_history(self) -> list[dict[str, Any]]:
        return self.select(sa.select(stage_events).order_by(stage_events.c.id))

    # approvals -------------------------------------------------------------------------
    def record_approval(self, version: int, decision: str, *, actor: str, reason: str) -> dict[str, Any]:
        """Record an approval or rejection; it settles the open approval alerts of that version (one transaction)."""
        at = now()
        with self.engine.begin() as conn:
            conn.execute(approvals.insert().values(version=version, decision=decision, actor=actor, reason=reason,
                                                   at=at))
            conn.execute(alerts.update().where(alerts.c.kind == "approval", alerts.c.model_version == version,
                                               alerts.c.resolved.is_(False)).values(resolved=True))
        return self.approvals(version)[-1]

    def approvals(self, version: int | None = None) -> list[dict[str, Any]]:
        """Approval decisions, oldest first (of one version, or all)."""
        query = sa.select(approvals).order_by(approvals.c.id)
        if version is not None:
            query = query.where(approvals.c.version == version)
        return self.select(query)
