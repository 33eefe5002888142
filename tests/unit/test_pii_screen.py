"""The PII screen cannot be stalled: every detector is linear in the text, a text past
its time budget is stored as [UNSCREENED] (never in clear), and forms the regexes used
to miss are found."""

from __future__ import annotations

import time

import pytest

from services.common.pii import PiiPolicy, find_pii, maybe_pii, maybe_pii_utf8, scrub

# inputs that made the old EMAIL and PRIVATE_KEY patterns quadratic (40 KB of "a." took
# 1.2 s, 100 KB 7 s), and the other shapes a backtracking engine dislikes
ADVERSARIAL = {
    "a.": lambda n: "a." * (n // 2) + " x@y.com",
    "a@": lambda n: "a@" * (n // 2),
    "digits and separators": lambda n: "12-34." * (n // 6),
    "1-": lambda n: "1-" * (n // 2) + "a",
    "hex:": lambda n: "ab:" * (n // 3),
    "BEGIN": lambda n: "-----BEGIN RSA PRIVATE KEY-----" * (n // 31),
    "long token": lambda n: "token=" + "x" * n,
    "(1)": lambda n: "(1)" * (n // 3) + "a",
}


def best_of(k: int, f, arg) -> float:  # noqa: ANN001
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        f(arg)
        times.append(time.perf_counter() - t0)
    return min(times)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_screening_is_linear_on_adversarial_text(name: str) -> None:
    """1 MB against 50 KB: linear is 20x, the old quadratic patterns 400x. The bound
    allows 2.5x for a loaded machine's noise (this is a scaling check, not a timed
    target; the throughput figures are in bench/RESULTS.md)."""
    make = ADVERSARIAL[name]
    small, large = make(50_000), make(1_000_000)
    ratio = best_of(2, find_pii, large) / best_of(3, find_pii, small)
    assert ratio <= 50, f"{name}: 1 MB took {ratio:.0f}x the time of 50 KB"


def test_a_text_over_its_time_budget_is_never_stored_in_clear() -> None:
    text = "mail bob@example.com " + "12-34." * 200_000
    out = scrub(text, PiiPolicy(mode="redact"), budget_s=1e-6)
    assert out.text == "[UNSCREENED]" and out.counts == {"UNSCREENED": 1}
    dropped = scrub(text, PiiPolicy(mode="drop"), budget_s=1e-6)
    assert dropped.text is None and dropped.dropped
    assert scrub("mail bob@example.com", PiiPolicy(), budget_s=5.0).text == "mail [EMAIL]"  # within budget


@pytest.mark.parametrize(
    "kind,value",
    [
        ("IP", "::1"),
        ("IP", "fe80::1ff:fe23:4567:890a"),
        ("IP", "::ffff:c000:0280"),
        ("CARD", "4111.1111.1111.1111"),
        ("EMAIL", "jürgen@bücher.de"),
        ("EMAIL", "bob\uff20example.com"),
        ("IBAN", "de89 3704 0044 0532 0130 00"),
        ("IBAN", "DE89-3704-0044-0532-0130-00"),
        ("IBAN", "gb82west12345698765432"),
    ],
)
def test_forms_that_were_missed_are_found(kind: str, value: str) -> None:
    text = f"see {value} today"
    assert maybe_pii(text) and maybe_pii_utf8(text.encode())
    found = [(f.kind, text[f.start : f.end]) for f in find_pii(text)]
    assert (kind, value) in found, found
    assert value not in scrub(text, PiiPolicy()).text


def test_pem_blocks_pair_each_begin_with_the_next_end() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    text = f"a {pem} b {pem} c -----BEGIN EC PRIVATE KEY----- never closed"
    spans = [text[f.start : f.end] for f in find_pii(text) if f.kind == "PRIVATE_KEY"]
    assert spans == [pem, pem]


def test_decode_and_mapping_errors_never_carry_the_message_text() -> None:
    """A UnicodeDecodeError's repr holds the whole string it was decoding; the reason a
    dead letter, its header and the log line carry is built from describe() instead."""
    from services.common.codec import SerializationError
    from services.common.errors import describe
    from services.common.registry import get_codec

    codec = get_codec("inference-requests")
    rec = codec_example()
    rec["messages"] = [{"role": "user", "content": "XXbob@example.com 4111 1111 1111 1111"}]
    bad = codec.encode(rec).replace(b"XXbob", b"\xff\xfebob")  # same length, no longer UTF-8
    with pytest.raises(SerializationError) as caught:
        codec.decode(bad)
    assert "UnicodeDecodeError" in str(caught.value)
    assert "bob@" not in str(caught.value) and "4111" not in str(caught.value)
    exc = UnicodeDecodeError("utf-8", b"\xffbob@example.com 4111 1111 1111 1111", 0, 1, "invalid start byte")
    assert "bob" not in describe(exc) and "4111" not in describe(exc)
    assert describe(ValueError("cannot parse 'bob@example.com' as a date")) == "ValueError: cannot parse '…' as a date"
    with pytest.raises(SerializationError) as caught:
        codec.encode(codec_example() | {"tenant": {"bob@example.com": 1}})
    assert "bob@" not in str(caught.value)


def codec_example() -> dict:
    from services.common.registry import default_registry

    (_, rec), *_ = default_registry().examples("inference-requests")[1]
    return dict(rec)


def dead_letter_row(original_topic: str, original_value: bytes, tenants: dict) -> dict:  # noqa: ANN001
    from services.common.pipeline import Message
    from services.ingest.transforms import TABLES, Protector

    spec = TABLES["dead_letters"]
    value = {
        "original_topic": original_topic,
        "original_partition": 0,
        "original_offset": 7,
        "original_key": b"k",
        "original_value": original_value,
        "original_timestamp": None,
        "reason": "InvalidMessage: tenant mismatch",
        "error_type": "InvalidMessage.TenantMismatch",
        "consumer_group": "g",
        "service": "inference",
        "failed_at": 0,
    }
    msg = Message(topic="argus.inference.requests.dlq", partition=0, offset=1, key=None, raw=b"", timestamp_ms=0)
    msg.value = value
    row = spec.transform(Protector(PiiPolicy(), tenants, b"k"))(msg)
    return dict(zip(spec.columns, row))


def test_dead_letters_are_protected_with_their_tenants_policy() -> None:
    """A dead letter that decodes is screened field by field under its tenant's policy
    (a store_text: false tenant keeps no text there either); one that does not decode is
    kept as its size and digest, never as text: in raw Avro a length byte sits right
    before the string ('D' for 34 bytes) and hid an IBAN from the word-boundary detector."""
    from services.common.registry import get_codec

    codec = get_codec("inference-requests")
    rec = codec_example()
    rec["messages"] = [{"role": "user", "content": "DE89 3704 0044 0532 0130 00 and bob@example.com"}]
    rec["metadata"] = {"bob@example.com": "4111 1111 1111 1111"}
    raw = codec.encode(rec | {"tenant": "acme"})
    acme = dead_letter_row("t1.argus.inference.requests", raw, {})
    body = acme["original_value"]
    assert "DE89" not in body and "bob@" not in body and "4111" not in body and "[IBAN]" in body
    clinic = dead_letter_row(
        "argus.inference.requests", codec.encode(rec | {"tenant": "clinic"}), {"clinic": PiiPolicy(store_text=False)}
    )
    assert clinic["original_value"] is None
    garbage = b"\x00\x00\x00\x00\x01" + bytes([68]) + b"DE89370400440532013000 4111111111111111"
    opaque = dead_letter_row("argus.inference.requests", garbage, {})["original_value"]
    assert opaque.startswith("[undecodable: ") and "DE89" not in opaque and "4111" not in opaque


@pytest.mark.parametrize("text", ["Delivered on 2024-11-28.", "Order 123456789 shipped", "ref 87654321 ok"])
def test_dates_and_short_bare_numbers_are_not_phones(text: str) -> None:
    assert find_pii(text) == [], text


@pytest.mark.parametrize("text", ["call 4155550132", "tel 06 12 34 56 78", "ring +44 20 7946 0958"])
def test_phones_are_still_phones(text: str) -> None:
    assert [f.kind for f in find_pii(text)] == ["PHONE"], text


@pytest.mark.parametrize(
    "value",
    [
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnopqrstuvwx",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "Authorization: Bearer 0a1b2c3d4e5f6a7b8c9d0e1f",
        "my password is correct-horse-battery",
    ],
)
def test_secrets_that_were_missed_are_found(value: str) -> None:
    text = f"note: {value} (end)"
    assert maybe_pii(text) and maybe_pii_utf8(text.encode())
    assert [f.kind for f in find_pii(text)] == ["SECRET"], find_pii(text)
    secret = value.split()[-1].rsplit("/", 1)[-1]
    assert secret not in scrub(text, PiiPolicy()).text


def test_ordinary_words_around_the_new_keywords_are_left_alone() -> None:
    for text in ("the bearer of bad news", "the password is required", "hooks and slack lines"):
        assert find_pii(text) == [], text


def test_metadata_keys_are_protected_and_kept_apart() -> None:
    from services.common.pipeline import Message
    from services.ingest.transforms import TABLES, Protector

    spec = TABLES["inference_requests"]
    rec = codec_example() | {"metadata": {"bob@example.com": "1", "eve@example.com": "2", "plain": "3"}}
    msg = Message(topic="argus.inference.requests", partition=0, offset=1, key=None, raw=b"", timestamp_ms=0)
    msg.value = rec
    row = dict(zip(spec.columns, spec.transform(Protector(PiiPolicy(), {}, b""))(msg)))
    assert row["metadata"] == {"[EMAIL]": "1", "[EMAIL]#1": "2", "plain": "3"}
