"""Erasure by crypto-shredding, its signed receipt and its check, and subject access.

``erase`` (``argus privacy erase``):

1. resolves the subject to its pseudonym (the key service; ``subject_id`` in every table
   that holds its texts) and counts its rows;
2. destroys the subject's key: from the next query on, every text of the subject reads
   as NULL everywhere, because ClickHouse asks the key service for keys on every read
   (a direct dictionary), and no other copy of the key exists. It then checks that
   nothing of the subject is readable and records how long that took;
3. deletes the rows (``ALTER TABLE … DELETE``, waited for): what is left of them was
   unreadable already, this only tidies up;
4. writes a receipt signed with Ed25519: subject (tenant and pseudonym, never the user id
   in clear), tables and row counts, key ids destroyed, the times of each step, and when
   the raw copies in Kafka expire by retention (Argus cannot delete single records from a
   log; the retention of each topic that carries the subject's messages is stated).

``verify`` (``argus privacy verify``) re-checks a receipt: the signature against the
trusted keys, that none of its key ids exists any more, and that no row written before
the erasure is readable or left. ``export`` (``argus privacy export``) returns everything
stored about a subject, decrypted, one JSON object per row.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Callable, Iterator

from services.common.clickhouse import check_database
from services.common.signing import sign
from services.common.subject_keys import ENSURE_DICTIONARY, SEALED, KeyServiceClient, sealed_columns, texts

RECEIPT_VERSION = 1
# the topics whose messages carry a subject's texts (and their dead-letter topics)
SUBJECT_TOPICS = ("inference-requests", "inference-responses", "inference-shadow-responses", "feedback")


class ErasureError(RuntimeError):
    pass


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _written_at(table: str) -> str:
    return "inserted_at" if table == "dead_letters" else "ingested_at"


def _readable(table: str) -> str:
    cols = texts(table)
    # a metadata value of an erased subject opens to NULL (its key stays)
    return " OR ".join(
        "arrayExists(v -> v IS NOT NULL, mapValues(metadata))" if c == "metadata" else f"{c} IS NOT NULL" for c in cols
    )


def _counts(client: Any, db: str, sid: str, before: float | None = None) -> dict[str, dict[str, int]]:
    out = {}
    for table in SEALED:
        where = "subject_id = {sid:String}"
        params: dict[str, Any] = {"sid": sid}
        if before is not None:
            where += f" AND {_written_at(table)} <= fromUnixTimestamp64Milli({{t:Int64}}, 'UTC')"
            params["t"] = int(before * 1000)
        rows, readable_rows = client.query(
            f"SELECT count(), countIf({_readable(table)}) FROM {db}.{table} WHERE {where}", parameters=params
        ).result_rows[0]
        out[table] = {"rows": int(rows), "readable": int(readable_rows)}
    return out


def topic_retention(registry: Any = None) -> list[dict[str, Any]]:
    """The topics that carry a subject's messages, with their retention (ms, None: forever)."""
    from services.common.registry import default_registry

    reg = registry or default_registry()
    out = []
    for key in SUBJECT_TOPICS:
        spec = reg.topics[key]
        for s in (spec, reg.topics.get(spec.dead_letter_topic or "")):
            if s is None:
                continue
            value = int(s.config.get("retention.ms", "-1"))
            out.append({"topic": s.name, "retention_ms": None if value < 0 else value})
    return out


def erase(
    client: Any,
    db: str,
    keys: KeyServiceClient,
    tenant: str,
    subject: str,
    *,
    actor: str,
    signing_key: Any,
    registry: Any = None,
    clock: Callable[[], float] = time.time,
    unreadable_timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Erase one subject (see the module doc); returns the signed receipt."""
    check_database(db)
    requested = clock()
    sid = keys.resolve(tenant, subject)["subject_id"]
    before = _counts(client, db, sid)
    destroyed = keys.destroy(tenant, subject)
    keys_destroyed = clock()
    # the insert path's cached copy of the key goes too (reads never cache it)
    client.command(f"SYSTEM RELOAD DICTIONARY {db}.{ENSURE_DICTIONARY}")
    deadline = keys_destroyed + unreadable_timeout_s
    while True:
        after = _counts(client, db, sid, before=keys_destroyed)
        if not any(c["readable"] for c in after.values()):
            break
        if clock() > deadline:
            raise ErasureError(
                f"texts of the subject still readable {unreadable_timeout_s:.0f} s after its key was destroyed"
            )
        time.sleep(0.05)
    unreadable = clock()
    for table in SEALED:
        client.command(
            f"ALTER TABLE {db}.{table} DELETE WHERE subject_id = {{sid:String}}",
            parameters={"sid": sid},
            settings={"mutations_sync": 2},
        )
    left = _counts(client, db, sid, before=keys_destroyed)
    deleted = clock()
    if any(c["rows"] for c in left.values()):
        raise ErasureError(f"rows of the subject left after the deletes: {left}")
    kafka = topic_retention(registry)
    longest = max((t["retention_ms"] for t in kafka if t["retention_ms"] is not None), default=0)
    forever = [t["topic"] for t in kafka if t["retention_ms"] is None]
    payload = {
        "kind": "argus.erasure-receipt",
        "version": RECEIPT_VERSION,
        "receipt_id": str(uuid.uuid4()),
        "database": db,
        "subject": {"tenant": tenant, "subject_id": sid},
        "requested_by": actor,
        "key_ids_destroyed": sorted(destroyed["key_ids"]),
        "tables": {
            t: {
                "rows_before": before[t]["rows"],
                "readable_before": before[t]["readable"],
                "rows_deleted": before[t]["rows"],
            }
            for t in SEALED
        },
        "times": {
            "requested_at": _iso(requested),
            "keys_destroyed_at": _iso(keys_destroyed),
            "unreadable_at": _iso(unreadable),
            "rows_deleted_at": _iso(deleted),
        },
        "unreadable_after_ms": round((unreadable - requested) * 1000),
        "kafka": {
            "topics": kafka,
            "raw_copies_expire_by": None if forever else _iso(keys_destroyed + longest / 1000),
            "kept_forever": forever,
            "note": "Kafka logs cannot delete single records; the subject's raw messages expire by retention",
        },
    }
    return sign(payload, signing_key)


def verify(client: Any, db: str, keys: KeyServiceClient, payload: dict[str, Any]) -> list[str]:
    """What is wrong with an (already signature-checked) receipt's claims now: empty
    when every key id is gone and nothing written before the erasure is readable or left."""
    check_database(db)
    problems = []
    if payload.get("kind") != "argus.erasure-receipt" or payload.get("version") != RECEIPT_VERSION:
        return ["not an Argus erasure receipt of a version this release knows"]
    sid = payload["subject"]["subject_id"]
    status = keys.status(sid)
    if status.get("key_id") in set(payload["key_ids_destroyed"]):
        problems.append(f"key {status['key_id']} of the subject still exists")
    gone = {d["key_id"] for d in status.get("destroyed", [])}
    missing = set(payload["key_ids_destroyed"]) - gone
    if missing:
        problems.append(f"the key service has no record of destroying {sorted(missing)}")
    destroyed_at = dt.datetime.fromisoformat(payload["times"]["keys_destroyed_at"].replace("Z", "+00:00")).timestamp()
    for table, c in _counts(client, db, sid, before=destroyed_at).items():
        if c["readable"]:
            problems.append(f"{table}: {c['readable']} rows of the subject readable")
        if c["rows"]:
            problems.append(f"{table}: {c['rows']} rows of the subject left")
    return problems


def export(client: Any, db: str, keys: KeyServiceClient, tenant: str, subject: str) -> Iterator[dict[str, Any]]:
    """Every row stored about a subject, texts decrypted (sealed bytes left out)."""
    check_database(db)
    sid = keys.resolve(tenant, subject)["subject_id"]
    for table in SEALED:
        sealed = ", ".join(sealed_columns(table))
        result = client.query(
            f"SELECT * EXCEPT ({sealed}), {', '.join(texts(table))} FROM {db}.{table} FINAL "
            "WHERE subject_id = {sid:String}",
            parameters={"sid": sid},
        )
        names = result.column_names
        for row in result.result_rows:
            yield {"table": table, **dict(zip(names, row))}
