"""The logging (ingest) service: every platform topic into ClickHouse, exactly once.

One :class:`~services.common.pipeline.Pipeline` per topic (consumer group
``<group_id>.<topic key>``): decode -> PII-protecting transform -> batch (size/time) ->
insert -> commit. On partition assignment each pipeline resumes after the last offset
already stored in its table, so an insert that landed just before a crash is not
repeated; transient ClickHouse failures pause consumption and are retried with backoff
(memory bounded by one batch per pipeline); poison messages go to the topic's
dead-letter topic (and from there into ``dead_letters``).

Clean requests and responses in the current schema skip decoding altogether: they go
to ClickHouse as the producer's Avro bytes (see :mod:`services.ingest.avro_rows`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from services.common import migrations
from services.common.clickhouse import get_client
from services.common.errors import describe
from services.common.health import HealthServer, Readiness
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.pipeline import InvalidMessage, Message, Pipeline, pipeline_readiness
from services.common.registry import SchemaRegistry
from services.ingest.avro_rows import WALKER, AvroRows, avro_rows_for
from services.ingest.settings import IngestSettings
from services.ingest.sink import ClickHouseSink
from services.ingest.transforms import Protector, Row, table_for


def _encoded(transform: Callable[[Message], Row], rows: AvroRows) -> Callable[[Message], bytes]:
    def run(msg: Message) -> bytes:
        row = transform(msg)
        try:
            return rows.encode(row)
        except (ValueError, TypeError, KeyError) as exc:  # a value the row layout cannot hold: this message's fault
            raise InvalidMessage(
                f"cannot encode a row of {rows.spec.table}: {describe(exc)}", "InvalidMessage.Mapping"
            ) from exc

    return run


def _passthrough(rows: AvroRows) -> Callable[[Any], bytes | None]:
    def run(rec: Any) -> bytes | None:
        return rows.passthrough(rec.value, rec.topic, rec.partition, rec.offset)

    return run


GOVERNED = ("retraining-triggers", "retraining-state", "model-registry")


def _governed(
    topic_key: str, transform: Callable[[Message], Row], gate: Any, metrics: Metrics
) -> Callable[[Message], Row]:
    """Only records a trusted key of the right role signed reach ClickHouse; the rest are
    dead-lettered with the reason (docs/governance.md)."""
    from services.common.governance import Refused

    def run(msg: Message) -> Row:
        try:
            signer = gate.check(topic_key, msg.value)
        except Refused as exc:
            metrics.inc("argus_governance_refused_total", topic=msg.topic, reason=exc.kind)
            raise InvalidMessage(f"refused: {exc}", f"Refused.{exc.kind}") from None
        metrics.inc("argus_governance_verified_total", topic=msg.topic, signer=signer.name)
        return transform(msg)

    return run


class IngestService:
    def __init__(self, settings: IngestSettings, registry: SchemaRegistry | None = None) -> None:
        """``registry``: the contracts to decode with (default: the ones shipped in the
        package; a test passes a newer set to play an upgraded consumer)."""
        self.settings = settings
        self.metrics = Metrics(settings.service_name)
        self.log = get_logger("argus.ingest")
        key = settings.pii.hmac_key.get_secret_value().encode() if settings.pii.hmac_key else b""
        self.protector = Protector(settings.pii.default, dict(settings.pii.tenants), key, settings.pii.time_budget_s)
        self.pipelines: list[Pipeline] = []
        for topic_key in settings.topics:
            spec = table_for(topic_key)
            transform = spec.transform(self.protector)
            if topic_key in GOVERNED:
                transform = _governed(topic_key, transform, self._gate(), self.metrics)
            rows = avro_rows_for(topic_key, spec, self.protector, registry) if settings.avro_passthrough else None
            fast_path = None
            if rows is not None:
                # clean messages in the current schema pass through as the producer wrote
                # them; the rest are decoded, protected and re-encoded in the same layout
                transform = _encoded(transform, rows)
                fast_path = _passthrough(rows)
            sink = ClickHouseSink(settings.clickhouse, spec, self.metrics, avro=rows)
            self.pipelines.append(
                Pipeline(
                    kafka=settings.kafka,
                    policy=settings.pipeline,
                    registry=registry,
                    topic_key=topic_key,
                    group_id=f"{settings.group_id}.{topic_key}",
                    service=settings.service_name,
                    transform=transform,
                    sink=sink,
                    metrics=self.metrics,
                    fast_path=fast_path,
                    resume_offsets=sink.resume_offsets,
                    logical_types=False,  # ClickHouse takes str uuids, int ms
                    consumer_overrides={"max_partition_fetch_bytes": 4 << 20, "fetch_max_bytes": 32 << 20},
                )
            )

    def _gate(self) -> Any:
        from services.common.governance import GovernanceGate, Trust, trust_path

        if not hasattr(self, "_governance_gate"):
            gov = self.settings.governance
            # no replay check: a consumer group may read a batch again after a rebalance
            self._governance_gate = GovernanceGate(Trust(trust_path(gov)), gov.allow_unsigned_artifacts, False)
        return self._governance_gate

    def migrate(self) -> list[str]:
        client = get_client(self.settings.clickhouse, database="default")
        try:
            return migrations.apply(client, self.settings.clickhouse.database)
        finally:
            client.close()

    @property
    def last_progress(self) -> float:
        return min((p.last_progress for p in self.pipelines), default=time.time())

    async def readiness(self) -> Readiness:
        parts = [await pipeline_readiness(p) for p in self.pipelines]
        return Readiness(
            ready=all(r.ready for r in parts),
            service=self.settings.service_name,
            kafka_connected=all(r.kafka_connected for r in parts),
            sink_healthy=all(r.sink_healthy for r in parts),
            assigned_partitions=[a for r in parts for a in r.assigned_partitions],
            lag={k: v for r in parts for k, v in r.lag.items()},
            committed={k: v for r in parts for k, v in r.committed.items()},
            detail="; ".join(r.detail for r in parts if r.detail),
        )

    def _drain_pii_counts(self) -> None:
        counts, self.protector.counts = self.protector.counts, type(self.protector.counts)()
        for (kind, mode), n in counts.items():
            self.metrics.inc("argus_pii_findings_total", n, kind=kind, mode=mode)

    async def run(self, stop: asyncio.Event, health: bool = True) -> None:
        if self.settings.avro_passthrough:
            # the compiled walker is several times faster; without a C compiler at install
            # time responses use the Python one (same answers), requests take the full
            # path, and the service says so
            (self.log.info if WALKER == "native" else self.log.warning)("ingest.avro_walker", walker=WALKER)
        if self.settings.apply_migrations:
            applied = await asyncio.to_thread(self.migrate)
            self.log.info("ingest.migrations", applied=applied)
        server = None
        if health:
            server = HealthServer(self.settings.health, self.metrics, lambda: self.last_progress, self.readiness)
            port = await server.start()
            self.log.info("ingest.health", port=port)
        tasks = [asyncio.create_task(p.run(stop), name=p.topic) for p in self.pipelines]

        async def pii_metrics() -> None:
            while not stop.is_set():
                self._drain_pii_counts()
                await asyncio.sleep(1)

        tasks.append(asyncio.create_task(pii_metrics()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    stop.set()
                    raise t.exception()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._drain_pii_counts()
            if server is not None:
                await server.stop()
