"""Erasure by crypto-shredding on the real broker, ClickHouse engine and key service:
a subject's requests, responses, feedback and dead letters across tenants; ``argus
privacy erase`` makes all of it unreadable at once (a copy of the data taken before
included), leaves every other subject as it was, and its signed receipt verifies;
``argus privacy export`` returns exactly what is stored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from services.common.audit import check_submission
from services.common.clickhouse import get_client
from services.common.governance import Trust, ensure_identity
from services.common.pii import PiiPolicy
from services.common.signing import create_key, load_key, public_key_b64
from services.common.subject_keys import SEALED, KeyServiceClient, texts
from services.ingest.settings import PiiSettings
from tests.conftest import REPO
from tests.integration.helpers import migrate_up_to, read_topic
from tests.integration.test_ingest import NOW, as_user, count, ingest_settings, produce, response, run_ingest

# Names and postal addresses: no detector finds them (docs/privacy.md); erasure must.
SECRET = "Margaret Hilda Roberts of 10 Downing Street"


def _request(rid: str, tenant: str, user: str | None, text: str) -> dict:
    return {
        "request_id": rid,
        "created_at": NOW(),
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "system", "content": f"context: {text}"}, {"role": "user", "content": text}],
        "tenant": tenant,
        "user": user,
        "metadata": {"address": text},
    }


def _dump(client, db: str) -> str:  # noqa: ANN001
    """Every row of every table and view, texts decrypted, as the admin sees them."""
    out = []
    for table, engine in client.query(
        f"SELECT name, engine FROM system.tables WHERE database = '{db}' AND engine NOT IN ('Dictionary')"
    ).result_rows:
        if engine == "MaterializedView":
            continue
        opened = [c for c in SEALED.get(table, ()) if c not in ("user", "subject")]
        out.append(
            client.raw_query(f"SELECT {', '.join(['*', *opened])} FROM {db}.{table} FORMAT TSV").decode(
                errors="replace"
            )
        )
    return "\n".join(out)


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "privacy", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_erasure_makes_a_subject_unreadable_everywhere_and_only_that_subject(
    kafka_settings, clickhouse_settings, clickhouse_users, governance: Path, tmp_path: Path
) -> None:
    target = ("acme", "alice")
    others = [("globex", "alice"), ("acme", "bob"), ("acme", None)]
    requests, responses, feedback = [], [], []
    for n, (tenant, user) in enumerate([target, *others]):
        for k in range(3):
            rid = str(uuid.uuid4())
            text = f"{SECRET} #{tenant}-{user}-{k}" if (tenant, user) == target else f"other {n}-{k} {tenant}"
            requests.append(_request(rid, tenant, user, text))
            responses.append(dict(response(k, tenant=tenant, request_id=rid, output=f"re: {text}"), user=user))
            feedback.append(
                {
                    "feedback_id": str(uuid.uuid4()),
                    "request_id": rid,
                    "tenant": tenant,
                    "user": user,
                    "kind": "thumbs",
                    "score": 0.0,
                    "comment": f"about {text}",
                    "source": "user",
                    "created_at": NOW(),
                }
            )
    # a dead letter of the subject (request_id is not a UUID): decoded, protected, sealed
    bad = _request("not-a-uuid", *target, f"{SECRET} in a dead letter")
    await produce(kafka_settings, "inference-requests", [*requests, bad])
    await produce(kafka_settings, "inference-responses", responses)
    await produce(kafka_settings, "feedback", feedback)

    db = clickhouse_settings.database
    client = get_client(clickhouse_settings)
    await run_ingest(
        ingest_settings(
            kafka_settings,
            as_user(clickhouse_settings, clickhouse_users),
            topics=("inference-requests", "inference-responses", "feedback", "inference-requests-dlq"),
            pii=PiiSettings(tenants={"acme": PiiPolicy(keep_user=True)}),  # acme keeps its users' ids, sealed
        ),
        lambda: (
            count(client, f"{db}.inference_requests") >= len(requests)
            and count(client, f"{db}.inference_responses") >= len(responses)
            and count(client, f"{db}.feedback") >= len(feedback)
            and count(client, f"{db}.dead_letters") >= 1
        ),
        clickhouse_settings,
    )
    before = _dump(client, db)
    assert before.count(SECRET) >= 3 * 4 + 1  # prompt, system prompt, metadata, output, comment; the dead letter
    other_rows = {
        t: client.query(
            f"SELECT {', '.join(['subject_id', *texts(t)])} FROM {db}.{t} WHERE subject_id != {{s:String}} ORDER BY ALL",
            parameters={"s": ""},
        ).result_rows
        for t in SEALED
    }
    sid = client.query(
        f"SELECT DISTINCT subject_id FROM {db}.feedback WHERE position(comment, {{s:String}}) > 0",
        parameters={"s": SECRET},
    ).result_rows
    assert len(sid) == 1
    sid = sid[0][0]
    assert not client.query(f"SELECT count() FROM {db}.inference_requests WHERE user = 'alice'").result_rows[0][0]
    kept = "SELECT tenant, user_id, count() FROM ({}) WHERE user_id IS NOT NULL GROUP BY ALL ORDER BY ALL".format(
        " UNION ALL ".join(
            f"SELECT tenant, user_id FROM {db}.{t}" for t in ("inference_requests", "inference_responses", "feedback")
        )
    )
    assert client.query(kept).result_rows == [("acme", "alice", 9), ("acme", "bob", 9)]

    # a copy of the requests' data parts taken before the erasure (ClickHouse's FREEZE)
    client.command(f"ALTER TABLE {db}.inference_requests FREEZE WITH NAME 'pre_erasure'")
    (path,) = client.query(
        f"SELECT data_paths[1] FROM system.tables WHERE database = '{db}' AND name = 'inference_requests'"
    ).result_rows[0]

    env = {
        **os.environ,
        **kafka_settings.as_env("ARGUS_CLI_"),  # the erasure goes into the audit trail
        "ARGUS_CLI_CLICKHOUSE__DSN": clickhouse_settings.dsn.get_secret_value(),
        "ARGUS_CLI_PRIVACY_SIGNING_KEY": str(tmp_path / "operator.pem"),
    }
    public = create_key(tmp_path / "operator.pem")
    (tmp_path / "operator.pub").write_text(public_key_b64(public))
    exported = _cli(env, "export", "--tenant", "acme", "--user", "alice", "--out", str(tmp_path / "alice.jsonl"))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in (tmp_path / "alice.jsonl").read_text().splitlines()]
    by_table = {t: [r for r in rows if r["table"] == t] for t in SEALED}
    assert {t: len(v) for t, v in by_table.items()} == {
        "inference_requests": 3,
        "inference_responses": 3,
        "feedback": 3,
        "dead_letters": 1,  # the dead letter belongs to the user of the record it holds
    }
    assert sorted(r["prompt"] for r in by_table["inference_requests"]) == sorted(
        f"user: {SECRET} #acme-alice-{k}" for k in range(3)
    )
    assert all(r["metadata"]["address"].startswith(SECRET) for r in by_table["inference_requests"])
    assert {r["user_id"] for t in ("inference_requests", "feedback") for r in by_table[t]} == {"alice"}

    receipt = tmp_path / "receipt.json"
    refused = _cli(env, "erase", "--tenant", "acme", "--user", "alice", "--by", "dpo@acme", "--as", "nobody")
    assert refused.returncode == 1 and "cannot sign as nobody" in refused.stderr  # no key: nothing is erased
    ensure_identity(governance, "privacy.operator", ["operator"])
    args = ("--tenant", "acme", "--user", "alice", "--by", "dpo@acme", "--as", "privacy.operator")
    erased = _cli(env, "erase", *args, "--receipt", str(receipt))
    assert erased.returncode == 0, erased.stderr
    doc = json.loads(receipt.read_text())
    p = doc["payload"]
    assert p["subject"] == {"tenant": "acme", "subject_id": sid} and len(p["key_ids_destroyed"]) == 1
    assert p["tables"]["inference_requests"]["rows_deleted"] == 3 and p["tables"]["dead_letters"]["rows_deleted"] == 1
    assert p["kafka"]["raw_copies_expire_by"] and "alice" not in receipt.read_text()
    print(f"erasure: unreadable {p['unreadable_after_ms']} ms after the command")
    assert p["unreadable_after_ms"] < 5000
    # the erasure is in the audit trail, signed by the operator: the receipt's digest, never the user
    (sub,) = [e for e in await read_topic(kafka_settings, "audit") if e["action"] == "privacy.erased"]
    assert sub["writer"] == "privacy.operator" and sub["subject"] == sid and sub["chain_seq"] == 0
    assert sub["detail"]["receipt_id"] == p["receipt_id"] and sub["detail"]["rows_deleted"] == str(
        sum(t["rows_deleted"] for t in p["tables"].values())
    )
    assert check_submission(sub, Trust(governance / "trust.yaml")) is None
    assert "alice" not in json.dumps(sub)

    after = _dump(client, db)
    assert SECRET not in after and "acme-alice" not in after
    assert client.query(kept).result_rows == [("acme", "bob", 9)]
    for t in SEALED:  # everyone else: same rows, same content
        assert client.query(
            f"SELECT {', '.join(['subject_id', *texts(t)])} FROM {db}.{t} WHERE subject_id != {{s:String}} ORDER BY ALL",
            parameters={"s": ""},
        ).result_rows == [r for r in other_rows[t] if r[0] != sid]
    assert count(client, f"{db}.inference_log") == len(responses) - 3

    pub = str(tmp_path / "operator.pub")
    ok = _cli(env, "verify", str(receipt), "--public-key", pub)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    forged = dict(doc, payload=dict(p, tables={**p["tables"], "feedback": {"rows_deleted": 0}}))
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    assert _cli(env, "verify", str(tmp_path / "forged.json"), "--public-key", pub).returncode == 1
    stranger = tmp_path / "stranger.pem"
    create_key(stranger)
    (tmp_path / "stranger.pub").write_text(public_key_b64(load_key(stranger).public_key()))
    assert _cli(env, "verify", str(receipt), "--public-key", str(tmp_path / "stranger.pub")).returncode == 1

    # the copy taken before: attached to a new table, its parts are there, and unreadable
    client.command(f"CREATE TABLE {db}.restored AS {db}.inference_requests")
    (restored,) = client.query(
        f"SELECT data_paths[1] FROM system.tables WHERE database = '{db}' AND name = 'restored'"
    ).result_rows[0]
    data_root = Path(path).parents[2]  # <data>/store/<3 hex>/<uuid>/
    shadow = data_root / "shadow" / "pre_erasure" / Path(path).relative_to(data_root)
    for part in [d for d in shadow.iterdir() if d.is_dir()]:
        shutil.copytree(part, Path(restored) / "detached" / part.name)
        client.command(f"ALTER TABLE {db}.restored ATTACH PART '{part.name}'")
    total, readable, theirs = client.query(
        f"SELECT countIf(subject_id = {{s:String}}), countIf(subject_id = {{s:String}} AND (prompt IS NOT NULL "
        "OR system_prompt IS NOT NULL OR arrayExists(v -> v IS NOT NULL, mapValues(metadata)))), "
        "countIf(subject_id != {s:String} AND prompt IS NOT NULL) "
        f"FROM {db}.restored",
        parameters={"s": sid},
    ).result_rows[0]
    assert total == 3 and readable == 0 and theirs == 9
    assert SECRET not in _dump(client, db)
    client.close()


def test_retention_per_tenant_removes_one_tenants_old_rows_and_keeps_the_others(clickhouse_settings) -> None:
    from services.common import migrations
    from services.common.retention import Policy, expire_texts

    db = clickhouse_settings.database
    admin = get_client(clickhouse_settings, database="default")
    policy = Policy.parse(
        {
            "families": {"inference": {"days": 90, "tables": {"inference_requests": "created_at"}}},
            "tenants": {"clinic": {"inference": 2}},
        }
    )
    migrations.apply(admin, db, retention_policy=policy)
    rows = [
        [str(uuid.uuid4()), f"now64(3) - INTERVAL {age} DAY", tenant, f"{tenant} {age}"]
        for tenant in ("clinic", "acme")
        for age in (1, 5)
    ]
    values = ", ".join(
        f"('{rid}', {at}, 'm', '{tenant}', NULL, '{text}', 1, 1, '_t', 0, {i})"
        for i, (rid, at, tenant, text) in enumerate(rows)
    )
    admin.command(
        f"INSERT INTO {db}.inference_requests (request_id, created_at, model, tenant, user_in, prompt_in, "
        f"message_count, prompt_chars, _topic, _partition, _offset) VALUES {values}"
    )
    admin.command(f"OPTIMIZE TABLE {db}.inference_requests FINAL")
    kept = sorted(r[0] for r in admin.query(f"SELECT prompt FROM {db}.inference_requests").result_rows)
    assert kept == ["acme 1", "acme 5", "clinic 1"]  # the clinic's 5-day-old row is past its 2 days
    assert migrations.apply(admin, db, retention_policy=policy) == []
    assert admin.query(f"SELECT count() FROM {db}.retention_applied").result_rows[0][0] == 1  # applied once

    # texts go before their rows: 3 days, the clinic's after 1 (rows and metrics stay)
    texts = Policy.parse(
        {
            "families": {"inference": {"days": 90, "tables": {"inference_requests": "created_at"}}},
            "texts": {"days": 3},
            "tenants": {"clinic": {"texts": 1, "inference": 2}},
        }
    )
    assert expire_texts(admin, db, texts, now=time.time() + 60)["inference_requests"] == 2
    left = admin.query(
        f"SELECT tenant, prompt_chars, prompt FROM {db}.inference_requests ORDER BY tenant, created_at DESC"
    ).result_rows
    assert left == [("acme", 1, "acme 1"), ("acme", 1, None), ("clinic", 1, None)]
    assert expire_texts(admin, db, texts, now=time.time() + 60)["inference_requests"] == 0  # nothing left to clear
    admin.close()


async def test_sealed_texts_read_in_a_block_that_mixes_them_with_nulls(
    kafka_settings, clickhouse_settings, clickhouse_users
) -> None:
    """Answers that did not fail (an output, no error message), then answers that did (no
    output, an error message), of the same subjects, written in two inserts and merged
    into one part: every text opens, every missing one is NULL. Without migration 0015 this
    fails ("Invalid IV size 0": tryDecrypt ran on the NULLs' empty defaults), as the demo's
    deadline-exceeded answers did."""
    ok = [response(i, tenant="mixed", output=f"answer {i}") for i in range(30)]
    failed = [
        dict(
            response(i, tenant="mixed", status="error"),
            request_id=str(uuid.uuid4()),
            error_type="DeadlineExceeded",
            error_message=f"deadline exceeded {i}",
        )
        for i in range(10)
    ]
    db = clickhouse_settings.database
    client = get_client(clickhouse_settings)

    def stored() -> int:
        return client.query(f"SELECT count() FROM {db}.inference_responses WHERE tenant = 'mixed'").result_rows[0][0]

    settings = ingest_settings(
        kafka_settings, as_user(clickhouse_settings, clickhouse_users), topics=("inference-responses",)
    )
    for batch, total in ((ok, len(ok)), (failed, len(ok) + len(failed))):  # two inserts, two parts
        await produce(kafka_settings, "inference-responses", batch)
        await run_ingest(settings, lambda total=total: stored() >= total, clickhouse_settings)
    client.command(f"OPTIMIZE TABLE {db}.inference_responses FINAL")  # merged: NULLs and texts in one block
    rows = client.query(
        f"SELECT output, error_message FROM {db}.inference_responses WHERE tenant = 'mixed'"
    ).result_rows
    assert sorted(r[0] for r in rows if r[0] is not None) == sorted(f"answer {i}" for i in range(30))
    assert sorted(r[1] for r in rows if r[1] is not None) == sorted(f"deadline exceeded {i}" for i in range(10))
    assert all((r[0] is None) != (r[1] is None) for r in rows)


def test_metadata_sealed_value_by_value_before_0016_still_opens_expires_and_erases(
    clickhouse_settings, key_service, tmp_path: Path
) -> None:
    """Requests written at migration 0015 hold each metadata value sealed on its own under
    a clear key; later ones the whole map as one sealed text (no key in clear). After
    0016 both open through ``metadata``, ``expire-texts`` clears both, and a destroyed
    subject key leaves neither readable, for that subject only."""
    from services.common import migrations
    from services.common.retention import Policy, expire_texts

    db = clickhouse_settings.database
    admin = get_client(clickhouse_settings, database="default")
    migrate_up_to(admin, db, 15, tmp_path)

    def insert(rows: list[tuple[str, str, str]], first: int) -> None:
        values = ", ".join(
            f"('{uuid.uuid4()}', now64(3), 'm', 'acme', '{user}', 'hello', map('app', 'chat', '{key}', '{value}'), "
            f"1, 5, '_t', 0, {first + i})"
            for i, (user, key, value) in enumerate(rows)
        )
        admin.command(
            f"INSERT INTO {db}.inference_requests (request_id, created_at, model, tenant, user_in, prompt_in, "
            f"metadata_in, message_count, prompt_chars, _topic, _partition, _offset) VALUES {values}"
        )

    insert([("alice", "home", "12 Elm Road"), ("bob", "home", "3 Oak Lane")], 0)
    assert migrations.apply(admin, db) == ["0016_sealed_metadata_as_one_text"]
    insert([("alice", "office", "1 Main Street"), ("bob", "office", "9 Pine Court")], 2)

    def metadata() -> list:
        return admin.query(f"SELECT user, _offset, metadata FROM {db}.inference_requests ORDER BY _offset").result_rows

    got = metadata()
    assert [m for _, _, m in got] == [
        {"app": "chat", "home": "12 Elm Road"},
        {"app": "chat", "home": "3 Oak Lane"},
        {"app": "chat", "office": "1 Main Street"},
        {"app": "chat", "office": "9 Pine Court"},
    ]
    stored = admin.query(
        f"SELECT mapKeys(metadata_ct), metadata_json_ct IS NOT NULL FROM {db}.inference_requests ORDER BY _offset"
    ).result_rows
    assert stored == [(["app", "home"], False), (["app", "home"], False), ([], True), ([], True)]
    raw = admin.raw_query(f"SELECT * FROM {db}.inference_requests WHERE _offset >= 2 FORMAT TSV").decode(
        errors="replace"
    )
    assert "office" not in raw and "Main Street" not in raw  # keys sealed with the values

    # a destroyed key: that subject's metadata opens to nothing, old rows and new
    KeyServiceClient(key_service).destroy("acme", "alice")
    alice = got[0][0]
    assert [(u == alice, m) for u, _, m in metadata()] == [
        (True, {"app": None, "home": None}),  # 0015's rows keep their keys in clear, values unreadable
        (False, {"app": "chat", "home": "3 Oak Lane"}),
        (True, {}),
        (False, {"app": "chat", "office": "9 Pine Court"}),
    ]

    # texts past their days: both forms cleared, the rows stay
    policy = Policy.parse(
        {"families": {"inference": {"days": 90, "tables": {"inference_requests": "created_at"}}}, "texts": {"days": 1}}
    )
    assert expire_texts(admin, db, policy, now=time.time() + 2 * 86400)["inference_requests"] == 4
    assert [m for _, _, m in metadata()] == [{}, {}, {}, {}]
    assert admin.query(
        f"SELECT countIf(notEmpty(metadata_ct) OR metadata_json_ct IS NOT NULL), count() FROM {db}.inference_requests"
    ).result_rows == [(0, 4)]
    admin.close()
