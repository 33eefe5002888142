"""The key service over HTTPS, and ClickHouse checking its certificate.

The session's key service (the ``key_service`` fixture, started as ``argus stack up``
starts it) serves HTTPS with a certificate from its stack's CA, and the session's
ClickHouse endpoint trusts that CA and no other (``--trust-ca``). Here: the key
dictionaries work through it; a ClickHouse that trusts another CA gets no key; a server
with a certificate of the right CA for another host name gets no request; plain HTTP to
the key service gets nothing; the admin client checks the certificate too."""

from __future__ import annotations

import http.server
import ssl
import threading
import urllib.request
import uuid
from dataclasses import replace

import pytest

from services.common.clickhouse import get_client
from services.common.subject_keys import KeyServiceClient, KeyServiceError, KeyServiceRef, dictionary_ddl
from services.stack.kafka_local import free_port
from services.stack.tls import ensure_ca, ensure_cert
from tests.integration.helpers import start_clickhouse_endpoint


def _ensure(client, db: str) -> str:  # noqa: ANN001 - clickhouse-connect Client
    return client.query(f"SELECT dictGet('{db}.subject_keys_ensure', 'subject_id', ('acme', 'tls-probe'))").result_rows[
        0
    ][0]


def _lookup(client, db: str) -> str:  # noqa: ANN001 - the read dictionary: one call, no cache
    sql = f"SELECT dictGet('{db}.subject_keys', 'key', tuple('{'0' * 64}'))"
    return client.query(sql).result_rows[0][0]


# a refused handshake, as the engine words it: the chain does not verify (unknown CA, or a
# CA of the same name whose signature does not match), or the name does not
REFUSED = "(?i)certificate|SSL Exception"


def _with_dictionaries(client, ref: KeyServiceRef, retries: bool = True) -> str:  # noqa: ANN001
    """The key dictionaries in a new database; ``retries=False``: one HTTP try per lookup
    (the source retries 10 times over 33 s by default, a refused handshake included; a
    query's own ``http_max_tries`` does not reach it, the dictionary's SETTINGS do)."""
    db = f"test_tls_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    for ddl in dictionary_ddl(db, ref):
        client.command(ddl if retries else ddl + " SETTINGS(http_max_tries = 1)")
    return db


def test_clickhouse_reaches_the_key_service_over_https_with_its_ca(clickhouse_url: str) -> None:
    ref = KeyServiceRef.from_settings()
    assert ref.url.startswith("https://") and ref.ca_file is not None
    client = get_client(clickhouse_url + "/default")
    db = _with_dictionaries(client, ref)
    try:
        subject_id = _ensure(client, db)
        assert len(subject_id) == 64
        assert _lookup(client, db) == "0" * 64  # no such subject: the default (zero) key
        # the admin API checks the same certificate
        assert KeyServiceClient(ref).resolve("acme", "tls-probe")["subject_id"] == subject_id
    finally:
        client.command(f"DROP DATABASE {db}")


def test_a_clickhouse_that_trusts_another_ca_gets_no_key(tmp_path) -> None:  # noqa: ANN001
    ref = KeyServiceRef.from_settings()
    other_ca = ensure_ca(tmp_path / "other-stack")  # a CA that never signed the key service's certificate
    proc, urls = start_clickhouse_endpoint(tmp_path / "ch", free_port(), trust_ca=other_ca)
    try:
        client = get_client(urls["argus_admin"] + "/default")
        db = _with_dictionaries(client, ref, retries=False)
        with pytest.raises(Exception, match=REFUSED):
            _lookup(client, db)
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_certificate_for_another_host_is_refused(clickhouse_url: str) -> None:
    """A server with a certificate of the same CA, issued for another name, on 127.0.0.1:
    ClickHouse checks the host name and sends it nothing (not even the token)."""
    ref = KeyServiceRef.from_settings()
    home = ref.ca_file.parent.parent  # the key service's stack home: its CA signs this one too
    cert = ensure_cert(home, f"elsewhere-{uuid.uuid4().hex[:6]}", ["elsewhere.example"])
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = get_client(clickhouse_url + "/default")
    db = _with_dictionaries(client, replace(ref, url=f"https://127.0.0.1:{server.server_address[1]}"), retries=False)
    try:
        with pytest.raises(Exception, match=REFUSED):
            _lookup(client, db)
        assert seen == []
    finally:
        server.shutdown()
        client.command(f"DROP DATABASE {db}")


def test_plain_http_to_the_key_service_gets_nothing() -> None:
    ref = KeyServiceRef.from_settings()
    plain = "http://" + ref.url.removeprefix("https://")
    with pytest.raises(OSError):
        urllib.request.urlopen(plain + "/healthz", timeout=5).read()  # noqa: S310 - loopback
    # a client that does not trust the stack's CA (the system store) refuses the service
    with pytest.raises(KeyServiceError, match="unreachable"):
        KeyServiceClient(replace(ref, ca_file=None)).resolve("acme", "tls-probe")
