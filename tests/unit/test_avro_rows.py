"""Avro rows for ClickHouse: a message passed through as the producer wrote it gives the
byte-identical row the full path (decode, validate, protect, build, encode) gives, and
everything the full path would change or refuse takes the full path."""

from __future__ import annotations

import random
import uuid

import pytest

from services.common.codec import HEADER, MAGIC_BYTE
from services.common.pii import PiiPolicy, find_pii, maybe_pii, maybe_pii_utf8
from services.common.pipeline import InvalidMessage, Message
from services.common.registry import default_registry, get_codec
from services.ingest import avro_rows as avro_rows_module
from services.ingest.avro_rows import avro_rows_for, make_walker, zigzag
from services.ingest.transforms import Protector, table_for
from tests.unit.test_ingest_transforms import CORPUS

REG = default_registry()
KEY = "inference-responses"
TOPIC = "argus.inference.responses"


def response(i: int, **kw) -> dict:  # noqa: ANN003
    base = {
        "request_id": str(uuid.UUID(int=i + 1)),
        "response_id": str(uuid.uuid4()),
        "model": "m",
        "response_model": "m.gguf",
        "model_version": "v1",
        "tenant": f"t{i % 3}",
        "user": f"u{i}",
        "output": f"Answer {i}: the largest city is Paris.",
        "finish_reason": "stop",
        "input_tokens": 20 + i,
        "output_tokens": 5 + i,
        "latency_ms": 100.5 + i,
        "time_to_first_token_ms": 40.0,
        "mean_logprob": -0.25,
        "status": "ok",
        "shadow": bool(i % 2),
        "served_at": 1_790_000_000_000 + i,
    }
    base.update(kw)
    return base


def both(rows, protector: Protector, data: bytes, offset: int = 5):  # noqa: ANN001, ANN201
    """(passthrough row or None, full-path row or the InvalidMessage it raised)."""
    codec = get_codec(KEY)
    fast = rows.passthrough(data, TOPIC, 2, offset)
    msg = Message(TOPIC, 2, offset, None, data, 0, value=codec.decode_plain(data))
    try:
        full = rows.encode(table_for(KEY).transform(protector)(msg))
    except InvalidMessage as exc:
        full = exc
    return fast, full


@pytest.fixture
def protector() -> Protector:
    return Protector(
        PiiPolicy(mode="redact"),
        {"clinic": PiiPolicy(store_text=False), "bank": PiiPolicy(mode="hash"), "crm": PiiPolicy(keep_user=True)},
        b"k",
    )


@pytest.fixture(params=["native", "python"])
def rows(request, protector):  # noqa: ANN001, ANN201
    """The response rows with the compiled walker, then with the Python one: every test
    below holds both to the same contract."""
    r = avro_rows_for(KEY, table_for(KEY), protector)
    r._walker = make_walker(r._walk, r._tenant_passes, native=request.param == "native")
    return r


def test_the_compiled_walker_is_built() -> None:
    # setup.py builds it; without it ingest still works, at a fraction of the speed
    assert avro_rows_module.WALKER == "native"


def test_clean_messages_pass_through_byte_identical_to_the_full_path(rows, protector) -> None:
    codec = get_codec(KEY)
    records = [response(i) for i in range(50)]
    records += [rec for items in REG.examples(KEY).values() for _, rec in items]
    records += [
        response(
            1, output=None, status="error", finish_reason=None, error_type="Timeout", error_message="took too long"
        ),
        response(2, output="Ünïcödé ✓ – 東京 answer", user=None, trace_id="a" * 32, span_id="b" * 16),
        response(3, output="", replica="replica-1", replica_cpu_memory_bytes=2**40, replica_gpu_memory_bytes=0),
        response(4, tenant="bank"),  # hash mode: nothing to hash in a clean text
        response(5, input_tokens=0, output_tokens=2**31 - 1, latency_ms=-0.0, mean_logprob=None),
        response(6, output="a long answer, " * 20, model="m" * 70),  # two-byte string lengths
        response(7, output="word " * 3000, replica="r" * 9000),  # three-byte string lengths
    ]
    passed = 0
    for i, rec in enumerate(records):
        fast, full = both(rows, protector, codec.encode(rec), offset=10**12 + i)
        texts = [rec.get("output") or "", rec.get("error_message") or ""]
        if fast is None:  # the screen may send clean text the full way; it must have had a reason
            assert any(maybe_pii(t) for t in texts), rec
            continue
        assert not any(find_pii(t) for t in texts)
        assert fast == full, rec
        passed += 1
    assert passed >= len(records) - 2


def test_a_block_is_an_avro_container_of_the_rows(rows, protector) -> None:
    import io

    import fastavro

    codec = get_codec(KEY)
    data = [rows.passthrough(codec.encode(response(i)), TOPIC, 1, 100 + i) for i in range(3)]
    back = list(fastavro.reader(io.BytesIO(rows.block(data))))
    assert [r["_offset"] for r in back] == [100, 101, 102]
    assert back[0]["output_chars"] == len(response(0)["output"]) and back[0]["pii_counts"] == {}
    assert back[2]["_topic"] == TOPIC and back[2]["_partition"] == 1
    assert str(back[1]["request_id"]) == response(1)["request_id"]


@pytest.mark.parametrize("field", ["output", "error_message"])
@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_pii_takes_the_full_path(rows, protector, field, kind) -> None:
    codec = get_codec(KEY)
    for value in CORPUS[kind]:
        fast, full = both(rows, protector, codec.encode(response(1, **{field: f"see {value} please"})))
        assert fast is None, (kind, value)
        assert value.encode() not in full


def test_tenant_without_text_storage_takes_the_full_path(rows, protector) -> None:
    codec = get_codec(KEY)
    fast, full = both(rows, protector, codec.encode(response(1, tenant="clinic")))
    assert fast is None and b"Paris" not in full
    assert rows.passthrough(codec.encode(response(1, tenant="acme")), TOPIC, 0, 0) is not None


def test_tenant_keeping_user_ids_takes_the_full_path_with_the_id(rows, protector) -> None:
    import io

    import fastavro

    codec = get_codec(KEY)
    fast, full = both(rows, protector, codec.encode(response(1, tenant="crm")))
    assert fast is None
    fast = rows.passthrough(codec.encode(response(2, tenant="acme")), TOPIC, 0, 0)
    back = list(fastavro.reader(io.BytesIO(rows.block([full, fast]))))
    assert back[0]["user_id_in"] == response(1)["user"] and back[1]["user_id_in"] is None
    assert back[0]["output_in"] == response(1)["output"]


def _with_schema_id(data: bytes, schema_id: int) -> bytes:
    return HEADER.pack(MAGIC_BYTE, schema_id) + data[HEADER.size :]


def test_what_the_full_path_refuses_or_resolves_never_passes_through(rows, protector) -> None:
    codec = get_codec(KEY)
    good = codec.encode(response(1))
    assert rows.passthrough(good, TOPIC, 0, 0) is not None
    bad = {
        "non-canonical uuid": codec.encode(response(1, request_id=uuid.UUID(int=5).hex)),
        "malformed uuid": codec.encode(response(1, response_id="not-a-uuid")),
        "negative tokens": codec.encode(response(1, input_tokens=-3)),
        "negative memory": codec.encode(response(1, replica_cpu_memory_bytes=-1)),
        "other schema id": _with_schema_id(good, codec.schema_id + 1000),
        "not wire format": b"\x01" + good[1:],
        "truncated": good[:-3],
        "trailing bytes": good + b"\x00",
        "tombstone": None,
    }
    # hand-made corruptions at known places: the status enum index, a union branch, UTF-8
    rec = response(1, model="MODEL", trace_id="T")
    data = bytearray(codec.encode(rec))
    bad["invalid utf-8"] = bytes(data.replace(b"MODEL", b"MOD\xffL"))
    i = bytes(data).index(b"\x02\x02T")  # trace_id: union branch 1, then the 1-char string "T"
    bad["union branch out of range"] = bytes(data[:i] + b"\x04" + data[i + 1 :])
    # an int field holding more than 32 bits (ClickHouse would not store what was sent)
    counts = codec.encode(response(1, input_tokens=55, output_tokens=57))
    assert counts.count(b"stop" + zigzag(55) + zigzag(57)) == 1
    bad["int beyond 32 bits"] = counts.replace(b"stop" + zigzag(55), b"stop" + zigzag(2**33))
    bad["int beyond 32 bits, negative"] = counts.replace(b"stop" + zigzag(55), b"stop" + zigzag(-(2**31) - 1))
    bad["varint beyond 64 bits"] = counts.replace(b"stop" + zigzag(55), b"stop" + b"\xff" * 9 + b"\x7f")
    for name, value in bad.items():
        assert rows.passthrough(value, TOPIC, 0, 0) is None, name
    for name in ("malformed uuid", "negative tokens", "negative memory"):
        assert isinstance(both(rows, protector, bad[name])[1], InvalidMessage), name
    enum_rec = codec.encode(response(1, status="rejected"))
    status_at = enum_rec.index(zigzag(3) + b"\x00\x00\x00")  # status index 3, then three null unions
    forged = enum_rec[:status_at] + zigzag(9) + enum_rec[status_at + 1 :]
    assert rows.passthrough(forged, TOPIC, 0, 0) is None


def test_maybe_pii_is_a_superset_of_every_detector() -> None:
    """Random texts built from the characters detectors look at (digits of several
    scripts, separators, letters, the four letters IGNORECASE folds to ASCII): whenever
    a detector finds something, the screen said 'maybe'."""
    rng = random.Random(11)
    pieces = [
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "a.b@c.io",
        "10.0.0.1",
        "fe80::1:2",
        "::1",
        "::ffff:c000:280",
        "de89-3704-0044-0532-0130-00",
        "gb82 west 1234 5698 7654 32",
        "sha256",
        "github_pat_" + "a1" * 12,
        "hooks.slack.com/services/T000/B000/" + "x" * 24,
        "AWS_SECRET_ACCESS_KEY = " + "a/B+" * 10,
        "aws_secret_key:" + "z" * 40,
        "Bearer " + "t0k.3n" * 4,
        "bearer of bad news",
        "my password is hunter22",
        "PASSWD  is sesame",
        "passwords is",
        "a\uff20b.io",
        "jürgen@bücher.de",
        "+44 20 7946 0958",
        "123-45-6789",
        "AB 12 34 56 C",
        "12345678Z",
        "sk-" + "a" * 24,
        "AKIA" + "B" * 16,
        "passwοrd",
        "ſecret: hunter22",
        "toKen=abcdefghij",
        "apı_key=abcdefgh",
        "API-KEY :\x1cabcdefghij",
        "password=\u2003hunter2222",
        "xsecret=abcdefghij",
        "éapi_key=abcdefghij",
        "ghp_" + "a" * 36,
        "xoxb-abcdefghijk",
        "AIza" + "b" * 35,
        "eyJabcdefghij.eyJabcdefghij.abcdefghij",
        "capital",
        "tokens",
        "secretary",
        "٤١١١١١١١١١١١١١١١",
        "１２３-４５-６７８９",
        "-----BEGIN RSA PRIVATE KEY-----x-----END RSA PRIVATE KEY-----",
    ]
    alphabet = "0123456789 -.()+:@abcdefABCDEFXYZ٤١٢\u00a0\u2009İıſK_=eyJ\x1c\x1f\t"
    hits = 0
    for _ in range(4000):
        parts = [
            rng.choice(pieces)
            if rng.random() < 0.3
            else "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 25)))
            for _ in range(rng.randrange(1, 4))
        ]
        text = rng.choice([" ", "", "\n"]).join(parts)
        assert maybe_pii_utf8(text.encode()) == maybe_pii(text), text  # the screen on raw bytes is the same screen
        if find_pii(text):
            hits += 1
            assert maybe_pii(text), text
    assert hits > 500
    assert not maybe_pii("The answer to question 42 is 7.")
    # words that merely contain a keyword do not send a text to the detectors
    assert not maybe_pii("What is the capital of France? Count the tokens; the secretary knows the password.")


def test_row_fields_match_the_table_columns() -> None:
    for key in (KEY, "inference-shadow-responses", RKEY):
        spec = table_for(key)
        rows = avro_rows_for(key, spec, Protector(PiiPolicy(), {}, b""))
        assert sorted(rows.columns) == sorted(spec.columns)
    for other in ("feedback", "alerts"):
        assert avro_rows_for(other, table_for(other), Protector(PiiPolicy(), {}, b"")) is None


def test_zigzag_matches_avro() -> None:
    import io

    import fastavro

    for n in (0, 1, -1, 63, -64, 64, 2**31 - 1, -(2**31), 2**62, 10**12):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert zigzag(n) == buf.getvalue(), n


def _random_text(rng: random.Random) -> str | None:
    clean = ["Paris", "answer", " ", "42", "7.", "é", "東京", "✓", "\u00a0", "\n", "\x1c", "x" * 70]
    suspect = [
        "a.b@c.io",
        "4111 1111 1111 1111",
        "fe80::1",
        "api",
        "Secret",
        "ſ",
        "ghp_",
        "DE89",
        "1.2.3.4",
        "(555) 123",
    ]
    if rng.random() < 0.1:
        return None
    return "".join(rng.choice(suspect if rng.random() < 0.03 else clean) for _ in range(rng.randrange(0, 8)))


def _random_response(rng: random.Random, i: int) -> dict:
    rec = response(
        i,
        output=_random_text(rng),
        error_message=_random_text(rng),
        user=_random_text(rng),
        tenant=rng.choice(["t0", "t1", "clinic", "bank", "ténant"]),
        model=_random_text(rng) or "m",
        input_tokens=rng.choice([0, 1, 63, 64, 2**31 - 1]),
        replica_cpu_memory_bytes=rng.choice([None, 0, 2**40]),
        status=rng.choice(["ok", "error", "deadline_exceeded", "rejected"]),
        shadow=rng.random() < 0.5,
    )
    return rec


def _corrupted(rng: random.Random, good: bytes, times: int) -> list[bytes]:
    """``good`` and, ``times`` over, a copy with a byte changed, one cut short and one with a
    byte inserted (after the 5-byte wire header)."""
    out = [good]
    for _ in range(times):
        j = rng.randrange(5, len(good))
        out.append(good[:j] + bytes([rng.randrange(256)]) + good[j + 1 :])
        out.append(good[:j])
        out.append(good[:j] + bytes([rng.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF])]) + good[j:])
    return out


def test_compiled_and_python_walkers_agree(protector) -> None:
    """Generated bodies, then each corrupted (a byte changed, cut short, a byte
    inserted, a length forged): the two walkers return the same texts or both refuse."""
    codec = get_codec(KEY)
    r = avro_rows_for(KEY, table_for(KEY), protector)
    native = make_walker(r._walk, r._tenant_passes, native=True)
    python = make_walker(r._walk, r._tenant_passes, native=False)
    rng = random.Random(7)
    passed = refused = 0
    for i in range(1500):
        good = codec.encode(_random_response(rng, i))
        variants = _corrupted(rng, good, 4)
        variants.append(good[:5] + b"\xff" * 10 + b"\x01" + good[5:])  # an 11-byte varint where a length is
        variants.append(good[:5] + b"\x80" * 9 + b"\x00" + good[6:])  # a non-minimal length of the first uuid
        for v in variants:
            a, b = native(v), python(v)
            assert a == b, (v, a, b)
            if a is None:
                refused += 1
            else:
                passed += 1
    assert passed > 1500 and refused > 5000  # both outcomes well exercised


def test_compiled_screen_equals_the_regex_screen() -> None:
    from services.ingest._avrowalk import ascii_maybe_pii

    rng = random.Random(3)
    alphabet = "0123456789 -.()+:@_=abcdefgkostxyzABCDEFGHIJKXYZ\t\n\x0b\x0c\r\x1c\x1f"
    words = [
        "akia",
        "AKIA",
        "ASIA",
        "sk-",
        "SK-",
        "ghp_",
        "GHO_",
        "ghx_",
        "xoxb-",
        "xoxz-",
        "xox",
        "AiZa",
        "AIza",
        "eyJ",
        "EYJ",
        "private key",
        "PRIVATE KEY",
        "PRIVATE  KEY",
        "api",
        "api_key",
        "API-KEY",
        "apikey",
        "secret",
        "Secret",
        "tOkEn",
        "passw",
        "passwd",
        "PassWord",
        "passwordd",
        " is",
        "  IS ",
        "isle",
        "github_pat_",
        "Github_pat_",
        "hooks.slack.com/",
        "hooks.slack.com",
        "bearer",
        "Bearer ",
        "BEARER\t",
        "aws_secret_access_key",
        "AWS_SECRET_KEY",
        "aws_secret",
        "::",
        "::f",
        "de89",
        "gb82west",
        "ab12-x9z9",
        "sha256 ",
        "capital",
        "tokens",
        "secretary",
        ":",
        "=",
        " =",
        "\x1c:",
        "_",
        "x",
        "DE89",
        "fe80::1",
        "a:12345:",
        "1.2.3.4",
        "(555) 1234",
    ]
    hits = 0
    for _ in range(30000):
        parts = [
            rng.choice(words)
            if rng.random() < 0.2
            else "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            for _ in range(rng.randrange(1, 4))
        ]
        raw = "".join(parts).encode()
        expected = maybe_pii_utf8(raw)
        assert ascii_maybe_pii(raw) == expected, raw
        hits += expected
    assert 3000 < hits < 25000


# -- requests -----------------------------------------------------------------
RKEY = "inference-requests"
RTOPIC = "argus.inference.requests"


def request(i: int, **kw) -> dict:  # noqa: ANN003
    base = {
        "request_id": str(uuid.UUID(int=i + 7)),
        "created_at": 1_790_000_000_000 + i,
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Question {i}: why is the sky blue?"},
        ],
        "temperature": 0.7,
        "top_p": None,
        "max_tokens": 64,
        "stop_sequences": ["\n\n"],
        "seed": None,
        "tenant": f"t{i % 3}",
        "user": f"u{i}",
        "trace_id": None,
        "span_id": None,
        "deadline": None,
        "metadata": {"app": "chat"},
    }
    base.update(kw)
    return base


@pytest.fixture
def request_rows(protector):  # noqa: ANN001, ANN201
    return avro_rows_for(RKEY, table_for(RKEY), protector)


def stored(rows, row: bytes | None) -> dict | None:  # noqa: ANN001
    """What ClickHouse stores of an Avro row: the columns the insert names (a request row
    also carries the message's own ``messages``, ``stop_sequences`` and ``seed``, which
    ClickHouse skips), read back with the row schema; no byte may be left over."""
    import io

    import fastavro

    if row is None:
        return None
    buf = io.BytesIO(row)
    rec = fastavro.schemaless_reader(buf, rows._plain, None)
    assert buf.tell() == len(row)
    return {c: rec[c] for c in rows.insert_columns}


def both_request(rows, protector: Protector, data: bytes, offset: int = 5):  # noqa: ANN001, ANN201
    """(stored columns of the passthrough row or None, of the full-path row or what it raised)."""
    fast = stored(rows, rows.passthrough(data, RTOPIC, 1, offset))
    try:
        msg = Message(RTOPIC, 1, offset, None, data, 0, value=get_codec(RKEY).decode_plain(data))
        full = stored(rows, rows.encode(table_for(RKEY).transform(protector)(msg)))
    except Exception as exc:  # noqa: BLE001 - undecodable or refused: the passthrough must have refused too
        full = exc
    return fast, full


def test_clean_requests_pass_through_byte_identical_to_the_full_path(request_rows, protector) -> None:
    codec = get_codec(RKEY)
    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    records = [request(i) for i in range(30)]
    records += [rec for items in REG.examples(RKEY).values() for _, rec in items]
    records += [
        request(1, messages=[]),  # no messages: an empty prompt, no system prompt
        request(2, messages=[m("system", "")]),  # an empty system prompt is no system prompt
        request(3, messages=[m("system", ""), m("system", "")]),  # ... but two of them join to a newline
        request(4, messages=[m("system", "a"), m("user", "b"), m("system", "c"), m("assistant", "d"), m("tool", "")]),
        request(5, messages=[m("user", "Ünïcödé ✓ – 東京 " * 10)], metadata={}, user=None, stop_sequences=[]),
        request(6, messages=[m("user", "word " * 3000)], metadata={"k" * 70: "v" * 9000, "é": "ü"}),
        request(
            7,
            temperature=None,
            top_p=0.123456789,
            max_tokens=None,
            seed=-5,
            deadline=1_790_000_100_000,
            trace_id="a" * 32,
            span_id="b" * 16,
        ),
        request(8, tenant="bank"),
    ]
    passed = 0
    for i, rec in enumerate(records):
        fast, full = both_request(request_rows, protector, codec.encode(rec), offset=10**12 + i)
        if fast is None:
            convo = "\n\n".join(f"{x['role']}: {x['content']}" for x in rec["messages"] if x["role"] != "system")
            system = "\n".join(x["content"] for x in rec["messages"] if x["role"] == "system")
            assert any(maybe_pii(t) for t in [convo, system, *rec["metadata"].values(), *rec["metadata"]]), rec
            continue
        assert fast == full, rec
        passed += 1
    assert passed >= len(records) - 3


@pytest.mark.parametrize("where", ["content", "role", "system", "metadata", "metadata key"])
@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_requests_with_pii_take_the_full_path(request_rows, protector, where, kind) -> None:
    codec = get_codec(RKEY)
    for value in CORPUS[kind]:
        text = f"see {value} please"
        rec = {
            "content": request(1, messages=[{"role": "user", "content": text}]),
            "role": request(1, messages=[{"role": text, "content": "hello"}]),
            "system": request(1, messages=[{"role": "system", "content": text}, {"role": "user", "content": "hi"}]),
            "metadata": request(1, metadata={"note": text}),
            "metadata key": request(1, metadata={text: "x", "plain": "y"}),
        }[where]
        fast, full = both_request(request_rows, protector, codec.encode(rec))
        assert fast is None, (kind, value)
        assert value not in repr(full)


def test_the_prompt_is_screened_as_the_full_path_joins_it(request_rows, protector) -> None:
    """The full path protects the joined prompt ("role: content" blocks), so what only the
    join holds must stop the passthrough too: a role, or a digit run across messages."""
    codec = get_codec(RKEY)
    m = lambda role, content: {"role": role, "content": content}  # noqa: E731
    in_role = request(1, messages=[m("user", "x"), m("ab@c.io", "y")])
    assert both_request(request_rows, protector, codec.encode(in_role))[0] is None
    # each content alone has too few digits for the screen; joined: "user: 1234\n\n5678: 90"
    across = request(1, messages=[m("user", "1234"), m("5678", "90")])
    assert not maybe_pii("1234") and not maybe_pii("90") and maybe_pii("user: 1234\n\n5678: 90")
    assert both_request(request_rows, protector, codec.encode(across))[0] is None


def test_request_tenant_without_text_storage_takes_the_full_path(request_rows, protector) -> None:
    codec = get_codec(RKEY)
    fast, full = both_request(request_rows, protector, codec.encode(request(1, tenant="clinic")))
    assert fast is None and "sky" not in repr(full) and full["prompt_in"] is None


def test_request_tenant_keeping_user_ids_takes_the_full_path_with_the_id(request_rows, protector) -> None:
    codec = get_codec(RKEY)
    fast, full = both_request(request_rows, protector, codec.encode(request(1, tenant="crm")))
    assert fast is None and full["user_id_in"] == request(1)["user"]
    fast, full = both_request(request_rows, protector, codec.encode(request(1, tenant="acme")))
    assert fast is not None and full["user_id_in"] is None


def test_corrupted_requests_pass_through_only_as_the_full_path_would_store_them(request_rows, protector) -> None:
    """Generated requests, each corrupted many ways (a byte changed, cut short, a byte
    inserted, arrays written in blocks with byte sizes as other writers do): whatever
    the passthrough accepts, the full path decodes and stores byte for byte the same."""
    codec = get_codec(RKEY)
    rng = random.Random(13)
    accepted = refused = 0
    for i in range(600):
        msgs = [
            {"role": rng.choice(["system", "user", "assistant", "é"]), "content": _random_text(rng) or ""}
            for _ in range(rng.randrange(0, 4))
        ]
        rec = request(
            i,
            messages=msgs,
            metadata={f"k{j}": _random_text(rng) or "" for j in range(rng.randrange(0, 3))},
            max_tokens=rng.choice([None, 0, 64, 2**31 - 1]),
            tenant=rng.choice(["t0", "clinic", "bank"]),
        )
        for v in _corrupted(rng, codec.encode(rec), 6):
            fast, full = both_request(request_rows, protector, v, offset=i)
            if fast is None:
                refused += 1
            else:
                assert fast == full, v
                accepted += 1
    assert accepted > 600 and refused > 2000


def test_blocked_arrays_and_maps_are_framed(request_rows, protector) -> None:
    """Avro lets a writer split an array or map into blocks, a negative count followed by
    the block's size in bytes (Java's blocking encoder does): the walker frames them."""
    codec = get_codec(RKEY)
    rec = request(
        1,
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        stop_sequences=[],
        metadata={},
    )
    plain = codec.encode(rec)
    items = zigzag(4) + b"user" + zigzag(2) + b"hi" + zigzag(9) + b"assistant" + zigzag(2) + b"yo"
    assert items in plain
    blocked = plain.replace(
        zigzag(2) + items + b"\x00",
        zigzag(-1) + zigzag(8) + items[:8] + zigzag(-1) + zigzag(len(items) - 8) + items[8:] + b"\x00",
        1,
    )
    assert blocked != plain and codec.decode_plain(blocked) == codec.decode_plain(plain)
    fast, full = both_request(request_rows, protector, blocked)
    assert fast is not None and fast == full


def test_compiled_request_columns_equal_the_python_ones() -> None:
    from services.ingest._avrowalk import request_columns as compiled
    from services.ingest.avro_rows import request_columns

    rng = random.Random(17)
    roles = [b"system", b"user", b"assistant", b"tool", b"", "rôle".encode(), b"Sys tem", b"a@b.io"]
    refused = 0
    for _ in range(5000):
        texts = []
        for _ in range(rng.randrange(0, 6)):
            texts += [rng.choice(roles), (_random_text(rng) or "").encode()]
        want = request_columns(texts)
        assert compiled(texts, screen=maybe_pii_utf8) == want, texts
        refused += want is None
    assert 100 < refused < 4000
    with pytest.raises(TypeError):
        compiled([b"user", None], screen=maybe_pii_utf8)
