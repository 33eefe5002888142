"""The ClickHouse sink of one table: batched inserts with clickhouse-connect, transient
failures surfaced as :class:`TransientError` (the pipeline retries with backoff), and
the per-partition resume point (what is already stored) for exactly-once rows."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from services.common.clickhouse import get_client
from services.common.metrics import Metrics
from services.common.pipeline import TransientError
from services.common.settings import ClickHouseSettings
from services.ingest.avro_rows import AvroRows
from services.ingest.transforms import Row, TableSpec

# ClickHouse errors worth retrying: the server is overloaded or restarting, not the data wrong.
# 86: an HTTP source answered an error (the key service of the sealing dictionaries).
_TRANSIENT_CODES = {"86", "159", "202", "209", "210", "241", "252", "425", "999", "1002", "3", "394"}


def _is_transient(exc: DatabaseError) -> bool:
    text = str(exc)
    return any(f"Code: {c}." in text or f"code: {c}," in text for c in _TRANSIENT_CODES) or "Connection" in text


class ClickHouseSink:
    def __init__(
        self, settings: ClickHouseSettings, spec: TableSpec, metrics: Metrics, avro: AvroRows | None = None
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.avro = avro  # rows arrive Avro-encoded: one container block per insert, ClickHouse decodes it
        self.metrics = metrics
        self.database = settings.database
        self._client = None

    def _get(self):  # noqa: ANN202 - clickhouse-connect Client
        if self._client is None:
            self._client = get_client(self.settings)
        return self._client

    def _insert(self, rows: list[Row] | list[bytes]) -> None:
        table = f"{self.database}.{self.spec.table}"
        try:
            if self.avro is not None:
                self._get().raw_insert(
                    table,
                    column_names=self.avro.insert_columns,
                    insert_block=self.avro.block(rows),
                    settings={"async_insert": 0},
                    fmt="Avro",
                )
            else:
                self._get().insert(table, rows, column_names=self.spec.insert_columns, settings={"async_insert": 0})
        except OperationalError as exc:
            self._client = None  # reconnect next time
            raise TransientError(f"ClickHouse unreachable: {exc}") from exc
        except DatabaseError as exc:
            if _is_transient(exc):
                raise TransientError(str(exc)) from exc
            raise

    async def __call__(self, rows: list[Row]) -> None:
        await asyncio.to_thread(self._insert, rows)
        self.metrics.inc("argus_rows_inserted_total", len(rows), table=self.spec.table)

    def _stored(self, topic: str, partitions: list[int]) -> dict[int, int]:
        result = self._get().query(
            f"SELECT _partition, max(_offset) + 1 FROM {self.database}.{self.spec.table} "
            "WHERE _topic = {t:String} AND _partition IN {p:Array(UInt16)} GROUP BY _partition",
            parameters={"t": topic, "p": partitions},
        )
        return {int(p): int(o) for p, o in result.result_rows}

    async def resume_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        by_topic: dict[str, list[int]] = {}
        for tp in tps:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        delay = 0.5
        while True:
            try:
                for topic, parts in by_topic.items():
                    for p, off in (await asyncio.to_thread(self._stored, topic, parts)).items():
                        out[TopicPartition(topic, p)] = off
                return out
            except OperationalError:
                self._client = None
                await asyncio.sleep(delay)  # ClickHouse down at assignment: wait, never guess
                delay = min(delay * 2, 10.0)
