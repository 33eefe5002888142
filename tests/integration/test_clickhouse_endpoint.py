"""The local ClickHouse HTTP endpoint with stock clients: clickhouse-connect, curl and
plain HTTP, the way SREs and services use a real server."""

from __future__ import annotations

import datetime
import gzip
import json
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import clickhouse_connect
import httpx
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError

N = 100_000


@pytest.fixture
def endpoint(clickhouse_url: str) -> tuple[str, int]:
    """``(user:password@host, port)`` of the admin: ``http://{host}:{port}/`` carries the
    credentials for httpx and curl; :func:`connect` splits them for clickhouse-connect."""
    u = urlsplit(clickhouse_url)
    return f"{u.username}:{u.password}@{u.hostname}", u.port


def connect(endpoint: tuple[str, int], user: str | None = None, password: str | None = None, **kw):  # noqa: ANN003, ANN201
    cred, host = endpoint[0].rsplit("@", 1)
    name, pw = cred.split(":", 1)
    return clickhouse_connect.get_client(
        host=host, port=endpoint[1], username=user or name, password=pw if password is None else password, **kw
    )


def test_stock_client_table_with_every_type_100k_rows(endpoint, ch_database: str) -> None:
    host, port = endpoint
    client = connect(endpoint, database=ch_database)  # stock defaults: lz4
    client.command(
        """
        CREATE TABLE events (
            id UUID, name String, kind LowCardinality(String), score Nullable(Float64),
            embedding Array(Float32), at DateTime64(3, 'UTC'), labels Map(String, String),
            level Enum8('debug' = 1, 'info' = 2, 'error' = 3)
        ) ENGINE = MergeTree ORDER BY (kind, at) TTL toDateTime(at) + INTERVAL 30 DAY
        """
    )
    base = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows = [
        [
            uuid.UUID(int=i + 1),
            f"name-{i}",
            ("a", "b", "c")[i % 3],
            None if i % 7 == 0 else i / 3,
            [float(i % 5), 0.5],
            base + datetime.timedelta(milliseconds=i),
            {"tenant": f"t{i % 4}"},
            ("debug", "info", "error")[i % 3],
        ]
        for i in range(N)
    ]
    cols = ["id", "name", "kind", "score", "embedding", "at", "labels", "level"]
    summary = client.insert("events", rows, column_names=cols)
    assert summary.written_rows == N

    back = client.query("SELECT * FROM events ORDER BY id").result_rows
    assert len(back) == N
    for i in (0, 1, 7, N // 2, N - 1):
        got = back[i]
        want = rows[i]
        assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2] and got[3] == want[3]
        assert (
            list(got[4]) == want[4]
            and got[5].replace(tzinfo=datetime.timezone.utc) == want[5]
            and got[6] == want[6]
            and got[7] == want[7]
        )

    df = client.query_df("SELECT id, score, level FROM events ORDER BY id")
    assert len(df) == N and df["level"].iloc[2] == "error" and df["score"].isna().sum() == len(range(0, N, 7))
    table = client.query_arrow("SELECT name, embedding FROM events ORDER BY id")
    assert table.num_rows == N and table.column("name")[N - 1].as_py() == f"name-{N - 1}"
    # TTL and types are really there
    ddl = client.command("SHOW CREATE TABLE events")
    assert "TTL" in ddl and "Map(String, String)" in ddl and "Enum8(" in ddl


def test_curl_against_the_same_endpoint(endpoint, ch_database: str) -> None:
    host, port = endpoint
    assert shutil.which("curl"), "curl is needed for this test (apt-get install curl)"
    url = f"http://{host}:{port}/"
    run = lambda *a: subprocess.run(["curl", "-sS", *a], capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert run(url + "ping") == "Ok.\n"
    run("--data-binary", f"CREATE TABLE {ch_database}.c (n UInt32, s String) ENGINE = MergeTree ORDER BY n", url)
    run("--data-binary", "1\tone\n2\ttwo\n", url + f"?query=INSERT%20INTO%20{ch_database}.c%20FORMAT%20TabSeparated")
    out = run(url + f"?query=SELECT%20n,s%20FROM%20{ch_database}.c%20ORDER%20BY%20n%20FORMAT%20JSONEachRow")
    assert [json.loads(line) for line in out.splitlines()] == [{"n": 1, "s": "one"}, {"n": 2, "s": "two"}]


def test_errors_wrong_password_and_headers(endpoint) -> None:
    host, port = endpoint
    base = f"http://{host}:{port}/"
    r = httpx.post(base, content="SELECT * FROM no_such_table_xyz")
    assert r.status_code == 404 and r.headers["X-ClickHouse-Exception-Code"] == "60"
    assert r.text.startswith("Code: 60. DB::Exception:")
    r = httpx.post(base, content="SELEC 1")
    assert r.status_code == 400 and r.headers["X-ClickHouse-Exception-Code"] == "62"
    r = httpx.post(base, content="SELECT 1", headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "wrong"})
    assert r.headers["X-ClickHouse-Exception-Code"] == "516"
    r = httpx.post(base, params={"query_id": "q-42", "default_format": "JSONCompact"}, content="SELECT 1 AS x")
    assert r.status_code == 200 and r.headers["X-ClickHouse-Query-Id"] == "q-42"
    assert r.headers["X-ClickHouse-Format"] == "JSONCompact" and r.json()["data"] == [[1]]
    assert "X-ClickHouse-Timezone" in r.headers and "elapsed_ns" in json.loads(r.headers["X-ClickHouse-Summary"])
    # GET is read-only, as on a real server
    r = httpx.get(base, params={"query": "CREATE TABLE default.g (n UInt8) ENGINE = Memory"})
    assert r.headers["X-ClickHouse-Exception-Code"] == "164"


def test_params_settings_formats_and_compressed_bodies(endpoint, ch_database: str) -> None:
    host, port = endpoint
    base = f"http://{host}:{port}/"
    r = httpx.post(base, params={"param_x": "41", "param_s": "a'b"}, content="SELECT {x:UInt32} + 1, {s:String}")
    assert r.text == "42\ta\\'b\n"
    r = httpx.post(base, params={"max_threads": "3"}, content="SELECT getSetting('max_threads')")
    assert r.text.strip() in ("3", "'3'")
    r = httpx.post(base, params={"no_such_setting_xyz": "1"}, content="SELECT 1")
    assert r.status_code != 200 and r.headers["X-ClickHouse-Exception-Code"] == "115"
    httpx.post(
        base, params={"database": ch_database}, content="CREATE TABLE z (n UInt32) ENGINE = MergeTree ORDER BY n"
    ).raise_for_status()
    rows = "".join(f"{i}\n" for i in range(1000)).encode()
    q = {"query": "INSERT INTO z FORMAT TSV", "database": ch_database}
    for enc, body in (("gzip", gzip.compress(rows)), ("zstd", zstandard.ZstdCompressor().compress(rows))):
        r = httpx.post(base, params=q, content=body, headers={"Content-Encoding": enc})
        assert r.status_code == 200, r.text
        assert json.loads(r.headers["X-ClickHouse-Summary"])["written_rows"] == "1000"
    r = httpx.post(
        base,
        params={"database": ch_database, "enable_http_compression": "1"},
        content="SELECT count(), sum(n) FROM z FORMAT RowBinary",
        headers={"Accept-Encoding": "gzip"},
    )
    assert r.headers.get("Content-Encoding") == "gzip" and len(r.content) == 16  # httpx decodes gzip
    assert int.from_bytes(r.content[:8], "little") == 2000


def test_concurrent_requests_and_sessions(endpoint) -> None:
    host, port = endpoint
    base = f"http://{host}:{port}/"

    def one(i: int) -> str:
        return httpx.post(base, content=f"SELECT sum(number) + {i} FROM numbers(1000000)", timeout=30).text.strip()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(32)))
    assert results == [str(499999500000 + i) for i in range(32)]
    sid = uuid.uuid4().hex
    httpx.post(base, params={"session_id": sid}, content="SET max_block_size = 1234").raise_for_status()
    assert (
        httpx.post(base, params={"session_id": sid}, content="SELECT getSetting('max_block_size')").text.strip()
        == "1234"
    )
    assert httpx.post(base, content="SELECT getSetting('max_block_size')").text.strip() != "1234"


def test_a_failed_write_is_an_error_not_a_success(endpoint, ch_database: str) -> None:
    """A write the engine refuses after parsing (a violated CONSTRAINT) must come back as
    the server's error: chdb's streaming inserter reports such an insert as written
    while storing nothing, which would let a consumer commit offsets for lost rows."""
    host, port = endpoint
    client = connect(endpoint, database=ch_database)
    client.command("CREATE TABLE checked (n UInt32, CONSTRAINT small CHECK n < 100) ENGINE = MergeTree ORDER BY n")
    with pytest.raises(DatabaseError, match="Code: 469") as err:
        client.insert("checked", [[1], [500]], column_names=["n"])
    assert "small" in str(err.value)
    with pytest.raises(DatabaseError, match="Code: 469"):
        client.raw_insert("checked", ["n"], insert_block=b"2\n700\n", fmt="CSV")
    assert client.query("SELECT count() FROM checked").result_rows == [(0,)]
    assert client.insert("checked", [[3], [4]], column_names=["n"]).written_rows == 2
    assert client.query("SELECT groupArray(n) FROM (SELECT n FROM checked ORDER BY n)").result_rows == [([3, 4],)]


def test_a_body_cut_short_is_never_inserted(endpoint, ch_database: str) -> None:
    """A client that dies mid-upload (SIGKILL, broken connection) must not leave part of
    its batch behind: the rows that did arrive are not inserted."""
    import base64
    import socket
    import time

    cred, host = endpoint[0].rsplit("@", 1)
    port = endpoint[1]
    auth = f"Authorization: Basic {base64.b64encode(cred.encode()).decode()}\r\nHost: {host}:{port}\r\n"
    client = connect(endpoint, database=ch_database)
    client.command("CREATE TABLE cut (n UInt32) ENGINE = MergeTree ORDER BY n")
    query = f"INSERT INTO {ch_database}.cut FORMAT CSV".replace(" ", "%20")
    rows = b"".join(f"{i}\n".encode() for i in range(1000))
    for head, body in (
        (f"Content-Length: {len(rows) + 500}\r\n", rows),
        ("Transfer-Encoding: chunked\r\n", f"{len(rows):x}\r\n".encode() + rows + b"\r\n" + b"400\r\n12\n13\n"),
    ):
        with socket.create_connection((host, port)) as s:
            s.sendall(f"POST /?query={query} HTTP/1.1\r\n{auth}{head}\r\n".encode() + body)
            s.shutdown(socket.SHUT_WR)  # the sender is gone; what arrived is all there is
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:200]
    time.sleep(0.5)
    assert client.query("SELECT count() FROM cut").result_rows == [(0,)]
    client.raw_insert("cut", ["n"], insert_block=rows, fmt="CSV")  # the same rows, complete, go in
    assert client.query("SELECT count() FROM cut").result_rows == [(1000,)]
