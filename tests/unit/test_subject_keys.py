"""The subject key store, Ed25519 receipts and the subject ids ClickHouse asks for."""

from __future__ import annotations

import os
import ssl
import stat

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr

from services.common.signing import SignatureError, create_key, load_key, sign, verify
from services.common.subject_keys import TEXT_COLUMNS, bounded_subject, sealed_columns, stored, subject_of, texts
from services.keys.store import KeyStore

MASTER = b"m" * 32


def test_one_key_per_subject_kept_across_restarts_and_destroyed_for_good(tmp_path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = KeyStore(path, MASTER)
    a = store.ensure("acme", "alice")
    assert store.ensure("acme", "alice") == a and len(a.key) == 32
    other_tenant = store.ensure("globex", "alice")
    assert other_tenant.subject_id != a.subject_id and other_tenant.key != a.key
    assert store.lookup(a.subject_id) == a and store.lookup("0" * 64) is None and store.lookup("short") is None
    store.close()

    store = KeyStore(path, MASTER)  # a restart: same keys, unwrapped with the master key
    assert store.lookup(a.subject_id) == a
    gone = store.destroy("acme", "alice")
    assert gone.subject_id == a.subject_id and gone.key_ids == [a.key_id]
    assert store.lookup(a.subject_id) is None and store.lookup(other_tenant.subject_id) == other_tenant
    assert store.destroy("acme", "alice").key_ids == []  # idempotent
    assert [k for k, _ in store.destroyed(a.subject_id)] == [a.key_id]
    again = store.ensure("acme", "alice")  # the same user writing again after erasure: a new key
    assert again.subject_id == a.subject_id and again.key_id != a.key_id and again.key != a.key
    store.close()

    raw = path.read_bytes()
    assert a.key not in raw and again.key not in raw  # wrapped at rest
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(InvalidTag):  # another master key opens nothing
        KeyStore(path, b"x" * 32).lookup(again.subject_id)


def test_pseudonyms_are_keyed_and_unambiguous(tmp_path) -> None:
    one, two = KeyStore(tmp_path / "1", MASTER), KeyStore(tmp_path / "2", b"n" * 32)
    assert one.subject_id("a", "bc") != one.subject_id("ab", "c")  # length-prefixed
    assert one.subject_id("acme", "alice") != two.subject_id("acme", "alice")  # keyed by the master key
    assert len(one.subject_id("", "")) == 64  # any string is an id: an insert never fails on the data


def test_subject_ids_match_what_clickhouse_asks_for() -> None:
    assert subject_of("alice", None) == "alice" and subject_of(None, "r-1") == "request:r-1"
    long = "x" * 300
    assert bounded_subject(long).startswith("sha256:") and len(bounded_subject(long)) == 71
    assert bounded_subject("é" * 128) == "é" * 128 and bounded_subject("é" * 129).startswith("sha256:")  # bytes
    assert {"prompt", "prompt_ct", "output", "original_value"} <= TEXT_COLUMNS and "user" not in TEXT_COLUMNS


def test_every_column_that_holds_a_sealed_text_is_named_once() -> None:
    """Erasure, export, expire-texts and the grants reach a text through every column that
    may hold it: a request's metadata in both its forms (before and since migration 0016)."""
    assert stored("inference_requests", "metadata") == ("metadata_ct", "metadata_json_ct")
    assert stored("inference_responses", "output") == ("output_ct",)
    assert sealed_columns("inference_requests") == [
        "user_id_ct",
        "prompt_ct",
        "system_prompt_ct",
        "metadata_ct",
        "metadata_json_ct",
    ]
    assert {"metadata_json_ct", "metadata_in"} <= TEXT_COLUMNS
    assert "user" not in texts("inference_requests") and "subject" not in texts("dead_letters")


def test_signed_documents_verify_only_unaltered_and_from_trusted_keys(tmp_path) -> None:
    create_key(tmp_path / "op.pem")
    key = load_key(tmp_path / "op.pem")
    doc = sign({"subject": "s", "rows": 3, "times": ["2026-12-01T00:00:00Z"]}, key)
    assert verify(doc, [key.public_key()]) == doc["payload"]
    with pytest.raises(SignatureError, match="does not match"):
        verify({**doc, "payload": {**doc["payload"], "rows": 2}}, [key.public_key()])
    create_key(tmp_path / "other.pem")
    with pytest.raises(SignatureError, match="not one of the trusted"):
        verify(doc, [load_key(tmp_path / "other.pem").public_key()])
    with pytest.raises(FileExistsError):
        create_key(tmp_path / "op.pem")  # never overwrites a key
    os.chmod(tmp_path / "op.pem", 0o644)
    with pytest.raises(SignatureError, match="readable by others"):
        load_key(tmp_path / "op.pem")


def test_the_key_service_serves_keys_in_clear_on_loopback_only(tmp_path) -> None:
    from services.keys.settings import KeyServiceSettings
    from services.stack.tls import ensure_cert

    assert KeyServiceSettings(host="127.0.0.1").ssl_context() is None
    assert KeyServiceSettings(host="::1").ssl_context() is None
    with pytest.raises(ValueError, match="refusing to serve keys in clear on 0.0.0.0"):
        KeyServiceSettings(host="0.0.0.0").ssl_context()  # noqa: S104 - what is refused
    assert KeyServiceSettings(host="0.0.0.0", allow_plaintext=True).ssl_context() is None  # noqa: S104
    cert = ensure_cert(tmp_path, "keys", ["keys.example"])
    assert KeyServiceSettings(host="0.0.0.0", tls_cert_file=cert).ssl_context() is not None  # noqa: S104
    with pytest.raises(ValueError, match="TLS certificate"):
        KeyServiceSettings(tls_cert_file=tmp_path / "missing.pem").ssl_context()
    with pytest.raises(ValueError, match="TLS_KEY_FILE is set without"):
        KeyServiceSettings(tls_key_file=cert).ssl_context()


def test_clickhouse_checks_the_key_services_certificate_strictly(tmp_path) -> None:
    from services.common.subject_keys import KeyServiceRef, clickhouse_client_tls_config

    xml = clickhouse_client_tls_config(tmp_path / "ca&.pem")
    assert f"<caConfig>{tmp_path}/ca&amp;.pem</caConfig>" in xml
    for part in ("<verificationMode>strict</verificationMode>", "<loadDefaultCAFile>false</loadDefaultCAFile>"):
        assert part in xml
    assert "RejectCertificateHandler" in xml and "AcceptCertificateHandler" not in xml
    ref = KeyServiceRef("https://keys:8129", SecretStr("t" * 32), None, None)
    assert ref.ssl_context().check_hostname and ref.ssl_context().verify_mode == ssl.CERT_REQUIRED
    assert KeyServiceRef("http://127.0.0.1:8129", SecretStr("t" * 32)).ssl_context() is None
