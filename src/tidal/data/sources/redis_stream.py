"""Redis Stream source: a consumer group, acknowledged only after each batch commits.

``read()`` first replays this consumer's pending entries (read before a crash but never
acknowledged), then reads new ones. Each message is one row whose fields are the columns.
A batch's id follows from the stream and its first and last message ids, so a replayed
batch (same pending entries, same ``batch_size``) is recognised by the ingester and is
not applied twice; ``commit()`` then acknowledges exactly its ids.

The group is created at the start of the stream, so messages already in it are read too.
Only this consumer's own pending entries are replayed: renaming the consumer strands the
old name's (see ``XPENDING`` / ``XAUTOCLAIM``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from tidal.data.sources.base import Batch, digest, register_source


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


@register_source("redis_stream")
class RedisStreamSource:
    """Messages of one stream read through a consumer group, ``batch_size`` at a time."""

    def __init__(self, config: Any, base: Path) -> None:
        self.url = config.url
        self.stream = config.stream
        self.group = config.group
        self.consumer = config.consumer
        self.batch_size = config.batch_size
        self.block_ms = config.block_ms
        self.trust = config.trust
        self.name = config.name or f"redis:{config.stream}"
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            import redis

            client = redis.Redis.from_url(self.url)
            try:
                client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._client = client
        return self._client

    def _read(self, last_id: str, *, block: bool) -> list[tuple[bytes, dict | None]]:
        block_ms = self.block_ms if block and self.block_ms > 0 else None  # BLOCK 0 would wait forever
        resp = self._connect().xreadgroup(self.group, self.consumer, {self.stream: last_id},
                                          count=self.batch_size, block=block_ms)
        if not resp:
            return []
        if isinstance(resp, dict):  # RESP3: {stream: [[entries]]}
            return list(next(iter(resp.values()))[0])
        return list(resp[0][1])  # RESP2: [[stream, entries]]

    def _batch(self, entries: list[tuple[bytes, dict | None]]) -> Batch | None:
        ids = [_text(i) for i, _ in entries]
        # a pending entry whose message was trimmed away has no fields: nothing to replay
        gone = {i for i, (_, fields) in zip(ids, entries) if not fields}
        if gone:
            self._client.xack(self.stream, self.group, *gone)
        rows = [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries if fields]
        if not rows:
            return None
        columns = list(dict.fromkeys(k for row in rows for k in row))
        frame = pl.DataFrame(rows, schema={c: pl.String for c in columns})
        sha = digest("redis_stream", self.stream, ids[0], ids[-1])
        return Batch(batch_id=f"b-{sha[:16]}", frame=frame, source=self.name, content_sha256=sha,
                     position={"ids": [i for i in ids if i not in gone], "last_id": ids[-1]})

    def read(self, state: dict[str, Any]) -> Iterator[Batch]:
        last = "0"
        while entries := self._read(last, block=False):  # pending: read before, never acknowledged
            last = _text(entries[-1][0])
            if (batch := self._batch(entries)) is not None:
                yield batch
        while entries := self._read(">", block=True):
            if (batch := self._batch(entries)) is not None:
                yield batch

    def commit(self, batch: Batch, state: dict[str, Any]) -> dict[str, Any]:
        self._connect().xack(self.stream, self.group, *batch.position["ids"])
        return {"last_id": batch.position["last_id"]}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
