from __future__ import annotations

import datetime
import io
import struct

import avro.io
import avro.schema
import pytest

from services.common.codec import SerializationError, fill_defaults, split_wire, to_json, wire_header
from services.common.registry import default_registry, get_codec

REG = default_registry()
EXAMPLES = [
    (key, version, path, record)
    for key in sorted(REG.topics)
    for version, items in REG.examples(key).items()
    for path, record in items
]


@pytest.mark.parametrize("key,version,path,record", EXAMPLES, ids=[f"{k}/{v}/{p.name}" for k, v, p, _ in EXAMPLES])
def test_every_golden_example_round_trips_in_wire_format(key, version, path, record) -> None:
    codec = get_codec(key, version)
    data = codec.encode(record)
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == codec.schema_id
    decoded = get_codec(key).decode(data)
    spec = REG.topic(key)
    assert to_json(decoded) == to_json(fill_defaults(REG.schema_json(spec.schema, spec.version), record))


def test_codec_is_parsed_once_and_cached() -> None:
    assert get_codec("inference-requests") is get_codec("inference-requests")


def test_wire_header_layout() -> None:
    assert wire_header(258) == b"\x00\x00\x00\x01\x02"
    schema_id, body = split_wire(b"\x00\x00\x00\x00\x07abc")
    assert schema_id == 7 and bytes(body) == b"abc"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "shorter than the 5-byte wire header"),
        (b'{"a": 1}', "magic byte"),
        (b"\x00\x00\x00\x03\xe7" + b"\x02", "unknown schema id 999"),
        (None, "no value"),
    ],
)
def test_bad_bytes_give_a_clear_serialization_error(data, reason) -> None:
    with pytest.raises(SerializationError, match=reason):
        get_codec("feedback").decode(data)


def test_truncated_body_is_an_error_not_a_partial_record() -> None:
    codec = get_codec("feedback")
    record = REG.examples("feedback")[1][0][1]
    data = codec.encode(record)
    with pytest.raises(SerializationError):
        codec.decode(data[:-6])


def test_message_of_another_schema_with_trailing_bytes_is_rejected() -> None:
    # a feedback body sent under the alert schema id must not decode "successfully"
    feedback = get_codec("feedback").encode(REG.examples("feedback")[1][0][1])
    alert_id = get_codec("alerts").schema_id
    with pytest.raises(SerializationError):
        get_codec("feedback").decode(wire_header(alert_id) + feedback[5:])


def test_encoding_an_invalid_record_names_the_problem() -> None:
    record = dict(REG.examples("inference-requests")[1][0][1])
    record["messages"] = "not a list"
    with pytest.raises(SerializationError, match="inference_request.v1"):
        get_codec("inference-requests").encode(record)
    del record["messages"]
    with pytest.raises(SerializationError):
        get_codec("inference-requests").encode(record)


def test_a_second_avro_implementation_reads_and_writes_the_same_bytes() -> None:
    """Apache Avro's own Python implementation (not fastavro) against our codec."""
    codec = get_codec("inference-requests")
    schema = avro.schema.parse(REG.schema_file("inference_request", 1).read_text())
    record = REG.examples("inference-requests")[1][0][1]
    # theirs -> ours
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", codec.schema_id))
    theirs_in = fill_defaults(REG.schema_json("inference_request", 1), record)
    for field in ("created_at", "deadline"):  # Apache Avro wants datetimes for timestamp-millis
        theirs_in[field] = datetime.datetime.fromtimestamp(theirs_in[field] / 1000, tz=datetime.timezone.utc)
    avro.io.DatumWriter(schema).write(theirs_in, avro.io.BinaryEncoder(buf))
    assert to_json(codec.decode(buf.getvalue())) == to_json(
        fill_defaults(REG.schema_json("inference_request", 1), record)
    )
    # ours -> theirs
    ours = codec.encode(record)
    theirs = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(ours[5:])))
    assert theirs["request_id"] == record["request_id"] and theirs["tenant"] == record["tenant"]


def test_plain_decoding_of_another_writer_version_keeps_plain_types(tmp_path) -> None:
    """A message from a producer on a newer schema version (one more field) reads, with
    ``decode_plain``, exactly as one written with the current version would: uuids as
    strings, timestamps as epoch milliseconds (ingest writes those to ClickHouse)."""
    import json
    import shutil

    import yaml

    from services.common.codec import from_json
    from services.common.registry import SCHEMAS_DIR, SchemaRegistry

    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS_DIR, root)
    v2 = json.loads((root / "avro" / "inference_request.v1.avsc").read_text())
    v2["fields"].append({"name": "priority", "type": ["null", "string"], "default": None})
    (root / "avro" / "inference_request.v2.avsc").write_text(json.dumps(v2))
    ids = yaml.safe_load((root / "avro" / "ids.yaml").read_text()) | {"inference_request.v2": 9901}
    (root / "avro" / "ids.yaml").write_text(yaml.safe_dump(ids))
    reg = SchemaRegistry(root)
    record = {
        "request_id": "6f1c2a8e-0b7d-4c55-9a43-1d2e3f405162",
        "created_at": 1764000000000,
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tenant": "acme",
        "priority": "high",
    }
    newer = reg.codec("inference-requests", version=2).encode(from_json(v2, record))
    current = reg.codec("inference-requests")
    plain = current.decode_plain(newer)
    same = current.decode_plain(
        current.encode(
            from_json(reg.schema_json("inference_request", 1), {k: v for k, v in record.items() if k != "priority"})
        )
    )
    assert plain == same
    assert plain["request_id"] == record["request_id"] and plain["created_at"] == 1764000000000
