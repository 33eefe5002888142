"""The local ClickHouse endpoint over HTTPS with a certificate of the stack's CA
(``ARGUS_STACK_CLICKHOUSE_HTTPS``): clients that trust the CA get answers; plain HTTP and
clients that do not trust it get nothing."""

from __future__ import annotations

import ssl
import urllib.request
from urllib.parse import quote

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from services.common.clickhouse import get_client
from services.stack.kafka_local import free_port
from services.stack.tls import ensure_ca, ensure_cert
from tests.integration.helpers import start_clickhouse_endpoint


def test_https_with_the_stacks_ca_and_nothing_else(tmp_path) -> None:  # noqa: ANN001
    ca = ensure_ca(tmp_path)
    cert = ensure_cert(tmp_path, "clickhouse", ["127.0.0.1", "localhost"])
    port = free_port()
    proc, urls = start_clickhouse_endpoint(tmp_path, port, ["--tls-cert", str(cert)], ca_file=ca)
    try:
        sre = urls["argus_admin"]
        assert sre.startswith("https://")
        client = get_client(f"{sre}/default?ca_cert={quote(str(ca))}")
        assert client.query("SELECT 1 + 1").result_rows == [(2,)]
        assert client.query("SELECT currentUser()").result_rows[0][0]  # authenticated over TLS
        client.close()
        # a client that does not trust the stack's CA (the system store): refused
        with pytest.raises(OperationalError):
            get_client(f"{sre}/default", connect_timeout=5).query("SELECT 1")
        # plain HTTP to the TLS port: no answer
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).read()
        # the endpoint still serves after those failed handshakes
        ctx = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/ping", timeout=5, context=ctx) as r:
            assert r.read().strip() == b"Ok."
    finally:
        proc.terminate()
        proc.wait(30)
