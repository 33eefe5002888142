"""Every golden example through its table's transform (as snuba does with Sentry's
examples), and the PII detector and policies."""

from __future__ import annotations

from collections import Counter

import pytest

from services.common.codec import to_json
from services.common.pii import PiiPolicy, find_pii, scrub
from services.common.pipeline import InvalidMessage, Message
from services.common.registry import default_registry, get_codec
from services.ingest.transforms import TABLES, Protector, table_for

REG = default_registry()
CASES = [
    (key, p, rec)
    for spec in TABLES.values()
    for key in spec.topics
    for items in REG.examples(key).values()
    for p, rec in items
]


def as_message(key: str, record: dict, offset: int = 7) -> Message:
    codec = get_codec(key)
    return Message(
        topic="argus." + key,
        partition=1,
        offset=offset,
        key=None,
        raw=b"",
        timestamp_ms=0,
        value=codec.decode(codec.encode(record)),
    )


@pytest.mark.parametrize("key,path,record", CASES, ids=[f"{k}/{p.name}" for k, p, _ in CASES])
def test_every_golden_example_maps_to_a_full_row(key, path, record) -> None:
    spec = table_for(key)
    row = spec.transform(Protector(PiiPolicy(), {}, b""))(as_message(key, record))
    assert len(row) == len(spec.columns)
    assert row[-3:] == ("argus." + key, 1, 7)


def test_every_registry_topic_has_a_table() -> None:
    for key in REG.topics:
        assert table_for(key).table


def test_mapping_errors_become_invalid_messages() -> None:
    spec = table_for("feedback")
    msg = Message(topic="t", partition=0, offset=0, key=None, raw=b"", timestamp_ms=0, value={"feedback_id": "x"})
    with pytest.raises(InvalidMessage):
        spec.transform(Protector(PiiPolicy(), {}, b""))(msg)


CORPUS = {
    "EMAIL": ["alice@example.com", "j.doe+tag@mail.co.uk"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
    "IP": ["192.168.10.24", "2001:db8::8a2e:370:7334"],
    "SSN": ["123-45-6789"],
    "NATIONAL_ID": ["AB 12 34 56 C", "12345678Z", "1 84 12 76 451 089 46"],
    "SECRET": [
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-abcdefghijklmnopqrstuvwx1234",
        "ghp_" + "a1B2" * 9,
        "api_key=9f8e7d6c5b4a3210",
    ],
    "PHONE": ["+1 (415) 555-0132", "+44 20 7946 0958", "06 12 34 56 78"],
}


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in CORPUS.items() for v in vs])
def test_detector_finds_each_kind(kind, value) -> None:
    text = f"Hello, please use {value} for this."
    found = [(f.kind, text[f.start : f.end]) for f in find_pii(text)]
    assert any(k == kind and value in t or t in value for k, t in found), found
    for policy in (PiiPolicy(mode="redact"), PiiPolicy(mode="hash")):
        out = scrub(text, policy, b"k").text
        assert value not in out


def test_ordinary_text_is_left_alone() -> None:
    for text in ("What is 12 plus 34?", "Order #48213 arrived in 2024.", "Version 1.2.3 is out", "Call me at noon"):
        assert find_pii(text) == [], text


def test_policies_hash_joins_drop_and_no_text() -> None:
    a = scrub("from bob@example.com", PiiPolicy(mode="hash"), b"key").text
    b = scrub("to bob@example.com", PiiPolicy(mode="hash"), b"key").text
    assert a.split()[-1] == b.split()[-1] and "bob" not in a  # equal values, equal tokens
    assert scrub("from bob@example.com", PiiPolicy(mode="drop")).text is None
    assert scrub("nothing here", PiiPolicy(mode="drop")).text == "nothing here"
    none = scrub("nothing here", PiiPolicy(store_text=False))
    assert none.text is None and none.dropped
    with pytest.raises(ValueError, match="HMAC"):
        scrub("bob@example.com", PiiPolicy(mode="hash"), b"")


def test_protector_counts_per_kind_and_tenant_policy() -> None:
    p = Protector(PiiPolicy(), {"clinic": PiiPolicy(store_text=False)}, b"")
    pii: Counter = Counter()
    assert p("call +1 (415) 555-0132 or bob@example.com", "acme", pii) == "call [PHONE] or [EMAIL]"
    assert pii == {"PHONE": 1, "EMAIL": 1}
    assert p("no pii", "clinic", Counter()) is None
    record = dict(REG.examples("inference-requests")[1][0][1])
    record["messages"] = [{"role": "user", "content": "my card is 4111 1111 1111 1111"}]
    row = table_for("inference-requests").transform(p)(as_message("inference-requests", record))
    cols = table_for("inference-requests").columns
    assert "4111" not in row[cols.index("prompt")] and row[cols.index("pii_counts")] == {"CARD": 1}
    assert to_json(row[0]) == record["request_id"]


def test_values_clickhouse_would_refuse_are_dead_lettered_not_inserted() -> None:
    """Plain decoding keeps uuids as strings: a malformed one must fail the message,
    not the batch's insert."""
    codec = get_codec("inference-responses")
    record = dict(REG.examples("inference-responses")[1][1][1], request_id="not-a-uuid")
    msg = Message(
        topic="t",
        partition=0,
        offset=1,
        key=None,
        raw=b"",
        timestamp_ms=0,
        value=codec.decode_plain(codec.encode(record)),
    )
    with pytest.raises(InvalidMessage, match="request_id is not a UUID"):
        table_for("inference-responses").transform(Protector(PiiPolicy(), {}, b""))(msg)
    record = dict(REG.examples("inference-responses")[1][1][1], input_tokens=-3)
    msg.value = codec.decode_plain(codec.encode(record))
    with pytest.raises(InvalidMessage, match="input_tokens"):
        table_for("inference-responses").transform(Protector(PiiPolicy(), {}, b""))(msg)


def test_plain_decoding_matches_rich_decoding() -> None:
    for key in REG.topics:
        codec = get_codec(key)
        for items in REG.examples(key).values():
            for _, rec in items:
                data = codec.encode(rec)
                assert to_json(codec.decode_plain(data)) == to_json(codec.decode(data))
