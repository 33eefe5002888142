"""The broker-failure drill: three KRaft brokers (three JVMs), ingest writing requests and
responses to ClickHouse, and brokers SIGKILLed under load.

Producers publish requests and responses (acks=all, idempotent) at a fixed rate to topics
with the registry's replication (3 copies, min.insync.replicas 2) while ingest (one
process, its own consumer group) writes them to ClickHouse. A quarter of the way in, a
broker that is not the active controller is SIGKILLed; at half way it is restarted; then
the active controller (the KRaft quorum's leader) is SIGKILLed, and restarted at three
quarters. Afterwards every acknowledged event must be in ClickHouse exactly once:

- lost rows: events the producer had acknowledged that no row holds (target 0);
- duplicated rows: rows beyond one per event id, counted without ``FINAL`` (target 0);
- the longest pause in inserts between each kill and the restart that follows it (read
  from ClickHouse's own ``ingested_at``), against the longest pause before any kill.

``python -m bench.run failover``; figures in bench/RESULTS.md. Plaintext listeners: the
drill is about replication and recovery, and three TLS brokers beside ingest and
ClickHouse would leave the two cores here no room for the load.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from bench.common import Result
from bench.ingest_bench import _event, _request, spawn_ingest

REPO = Path(__file__).resolve().parents[1]


def run(n: int = 100_000, rate: int = 2_000) -> list[Result]:
    from services.common.settings import StackSettings
    from services.common.subject_keys import KeyServiceRef
    from services.stack.clickhouse_http import spawn
    from services.stack.credentials import clickhouse_password, clickhouse_users_file
    from services.stack.kafka_local import KafkaCluster, free_port
    from services.stack.manager import KeyServiceLocal

    home = Path(tempfile.mkdtemp(prefix="argus-bench-failover-"))
    cluster = KafkaCluster(home=home, libs_dir=REPO / ".argus/kafka/libs", secure=False)
    cluster.start()
    stack = StackSettings(home=home, keys_port=free_port())
    keys = KeyServiceLocal(stack)
    keys.start()
    ch_port = free_port()
    ch = spawn(home / "ch", ch_port, clickhouse_users_file(home), trust_ca=keys.ca_file)

    def dsn(user: str) -> str:
        return f"http://{user}:{clickhouse_password(home, user).get_secret_value()}@127.0.0.1:{ch_port}/argus"

    try:
        return asyncio.run(
            _drill(cluster, dsn("argus_admin"), dsn("argus_ingest"), KeyServiceRef.local(stack), n, rate)
        )
    finally:
        ch.terminate()
        ch.wait(30)
        keys.stop()
        cluster.stop()


async def _drill(cluster, admin_dsn: str, ingest_dsn: str, ref, n: int, rate: int) -> list[Result]:  # noqa: ANN001
    from services.common import migrations
    from services.common.clickhouse import get_client
    from services.common.kafka import ensure_topics, make_producer
    from services.common.registry import get_codec

    kafka = cluster.client_settings()
    assert kafka.replication == "registry"
    keys = ["inference-requests", "inference-responses"]
    await ensure_topics(kafka, keys=[k for key in keys for k in (key, key + "-dlq")])
    migrations.apply(get_client(admin_dsn.rsplit("/", 1)[0] + "/default"), "argus", keys=ref)
    client = get_client(admin_dsn)
    ingest = spawn_ingest(kafka, ingest_dsn, keys, "bench-failover")
    codecs = {k: get_codec(k) for k in keys}
    producer = make_producer(kafka, linger_ms=20, request_timeout_ms=60_000, retry_backoff_ms=200)
    await producer.start()
    acked: dict[str, set[str]] = {k: set() for k in keys}
    failed = 0
    events: list[tuple[str, float]] = []
    pending: set[asyncio.Future] = set()

    def delivered(key: str, rid: str):  # noqa: ANN202
        def done(fut: asyncio.Future) -> None:
            nonlocal failed
            pending.discard(fut)
            if fut.exception() is None:
                acked[key].add(rid)
            else:
                failed += 1

        return done

    # ingest up and writing before the clock starts: one event per topic, then wait for its row
    for i, key in enumerate(keys):
        rec = (_request if key == "inference-requests" else _event)(n + i, int(time.time() * 1000))
        await producer.send_and_wait(kafka.topic(key), codecs[key].encode(rec), key=rec["request_id"].encode())
        acked[key].add(rec["request_id"] if key == "inference-requests" else rec["response_id"])
    warm = time.monotonic()
    while client.query("SELECT count() FROM argus.inference_responses").result_rows[0][0] < 1:
        if time.monotonic() - warm > 180:
            raise RuntimeError("ingest wrote nothing within 3 minutes")
        await asyncio.sleep(0.5)

    leader_at_start = cluster.controller_leader()
    victim = next(node.node_id for node in cluster.nodes if node.node_id != leader_at_start)
    plan = {
        n // 4: ("kill", victim),
        n // 2: ("restart", victim),
        (5 * n) // 8: ("kill", "leader"),
        (3 * n) // 4: ("restart", "leader"),
    }
    killed_leader = None
    t0 = time.perf_counter()
    try:
        for i in range(n):
            if i in plan:
                action, who = plan[i]
                role = "the controller leader" if who == "leader" else "a follower controller"
                if who == "leader":
                    who = killed_leader = killed_leader or cluster.controller_leader()
                # off the event loop: the producer keeps sending while a broker starts
                await asyncio.to_thread(cluster.kill if action == "kill" else cluster.restart, who)
                events.append((f"{action} broker {who} ({role})", time.time()))
            due = t0 + i / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            key = keys[i % 2]
            rec = (_request if key == "inference-requests" else _event)(i, int(time.time() * 1000))
            fut = await producer.send(kafka.topic(key), codecs[key].encode(rec), key=rec["request_id"].encode())
            pending.add(fut)
            fut.add_done_callback(
                delivered(key, rec["request_id"] if key == "inference-requests" else rec["response_id"])
            )
        await producer.flush()
        if pending:
            await asyncio.wait(pending, timeout=120)
        want = sum(len(v) for v in acked.values())
        deadline = time.monotonic() + 600
        tables = {
            "inference-requests": ("inference_requests", "request_id"),
            "inference-responses": ("inference_responses", "response_id"),
        }

        def stored() -> int:
            return sum(client.query(f"SELECT count() FROM argus.{t}").result_rows[0][0] for t, _ in tables.values())

        while stored() < want and time.monotonic() < deadline:
            await asyncio.sleep(1)
        lost = dup = 0
        for key, (table, id_col) in tables.items():
            ids = {str(r[0]) for r in client.query(f"SELECT {id_col} FROM argus.{table}").result_rows}
            lost += len(acked[key] - ids)
            total, uniq = client.query(f"SELECT count(), uniqExact({id_col}) FROM argus.{table}").result_rows[0]
            dup += total - uniq
        inserts = [
            r[0].timestamp()
            for r in client.query(
                "SELECT DISTINCT ingested_at FROM (SELECT ingested_at FROM argus.inference_requests "
                "UNION ALL SELECT ingested_at FROM argus.inference_responses) ORDER BY ingested_at"
            ).result_rows
        ]
    finally:
        await producer.stop()
        ingest.terminate()
        ingest.wait(60)
    first_kill = next(t for name, t in events if name.startswith("kill"))
    baseline_gap = max((b - a for a, b in zip(inserts, inserts[1:]) if b < first_kill), default=0.0)
    out = [
        Result(
            "failover",
            f"rows lost, {n:,} events, two brokers SIGKILLed in turn (one the controller leader)",
            float(lost),
            "acknowledged events",
            float(want),
            "rows",
            "0 lost",
        ),
        Result(
            "failover",
            "rows duplicated (count without FINAL minus distinct ids)",
            float(dup),
            "acknowledged events",
            float(want),
            "rows",
            "0 duplicated",
            False,
        ),
        Result(
            "failover",
            "producer sends that failed after retries (not acknowledged, not counted above)",
            float(failed),
            "events sent",
            float(n),
            "events",
            "(informational)",
            False,
        ),
    ]
    for k, (name, at) in enumerate(events):
        if not name.startswith("kill"):
            continue
        until = events[k + 1][1] if k + 1 < len(events) else at + 120  # up to the restart
        after = [t for t in inserts if at <= t <= until]
        gap = max((b - a for a, b in zip([at, *after], after)), default=until - at)
        out.append(
            Result(
                "failover",
                f"longest pause in inserts after '{name}'",
                gap * 1000,
                "longest pause before any kill",
                baseline_gap * 1000,
                "ms",
                "(recovery time)",
                False,
            )
        )
    return out
