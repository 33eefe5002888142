"""Least privilege on the local ClickHouse endpoint, with stock clients: each user can
do its job and nothing else, no user but the admin reaches the file system or the
network, browsers and anonymous requests are refused, bodies are bounded."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
import httpx
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError

from services.common import migrations
from services.common.clickhouse_access import ADMIN, ROLES
from services.stack.kafka_local import free_port
from tests.integration.helpers import start_clickhouse_endpoint


def client(url: str, database: str):  # noqa: ANN201
    u = urlsplit(url)
    return clickhouse_connect.get_client(
        host=u.hostname, port=u.port, username=u.username, password=u.password, database=database
    )


@pytest.fixture
def migrated(clickhouse_users: dict, ch_database: str) -> str:
    admin = client(clickhouse_users[ADMIN], "default")
    migrations.apply(admin, ch_database)
    admin.close()
    return ch_database


def refused(fn, code: int = 497) -> str:  # noqa: ANN001
    with pytest.raises(DatabaseError) as exc:
        fn()
    assert f"Code: {code}." in str(exc.value), str(exc.value)
    return str(exc.value)


def test_each_service_user_can_do_its_job_and_nothing_else(clickhouse_users: dict, migrated: str) -> None:
    db = migrated
    ingest = client(clickhouse_users["argus_ingest"], db)
    rid = str(uuid.uuid4())
    ingest.command(
        f"INSERT INTO {db}.feedback (feedback_id, request_id, created_at, tenant, kind, score, _topic, _partition, _offset) "
        f"VALUES ('{uuid.uuid4()}', '{rid}', now64(3), 'acme', 'thumbs', -1, 't', 0, 0)"
    )
    assert ingest.query(f"SELECT count() FROM {db}.feedback").result_rows == [(1,)]  # resumes from its offsets
    refused(lambda: ingest.command(f"DROP TABLE {db}.feedback"))
    refused(lambda: ingest.command(f"CREATE TABLE {db}.x (n UInt8) ENGINE = Memory"))
    refused(lambda: ingest.command(f"ALTER TABLE {db}.feedback DELETE WHERE 1"))
    refused(lambda: ingest.query(f"SELECT * FROM {db}.inference_log"))  # not one of its tables
    refused(lambda: ingest.command(f"INSERT INTO {db}.schema_migrations (version) VALUES ('x')"))
    refused(lambda: ingest.query("SELECT name FROM system.users"))

    retraining = client(clickhouse_users["argus_retraining"], db)
    assert retraining.query(f"SELECT count() FROM {db}.inference_log").result_rows == [(0,)]
    refused(lambda: retraining.command(f"INSERT INTO {db}.feedback (request_id) VALUES ('{rid}')"))

    sre = client(clickhouse_users["argus_sre"], db)
    assert sre.query(f"SELECT tenant FROM {db}.feedback").result_rows == [("acme",)]
    assert sre.query(f"SELECT count() > 0 FROM system.tables WHERE database = '{db}'").result_rows == [(1,)]
    refused(lambda: sre.insert("feedback", [[rid]], column_names=["request_id"]))
    refused(lambda: sre.query("SELECT * FROM system.users"))
    refused(lambda: sre.query("SELECT query FROM system.query_log"))
    refused(lambda: sre.command(f"DROP TABLE {db}.feedback"))
    r = httpx.post(clickhouse_users["argus_sre"] + "/", params={"readonly": "0"}, content="SELECT 1")
    assert r.status_code == 403 and r.headers["X-ClickHouse-Exception-Code"] == "164"  # cannot lift its readonly
    r = httpx.post(clickhouse_users["argus_ingest"] + "/", params={"allow_ddl": "1"}, content="SELECT 1")
    assert r.headers["X-ClickHouse-Exception-Code"] == "452"  # only the settings clients need
    # the grants name databases (argus in the stack, test_* here): not the others
    refused(lambda: client(clickhouse_users["argus_sre"], "default"))


PROBES = [
    "INSERT INTO FUNCTION file('{path}', 'LineAsString') SELECT 'planted'",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
    "SELECT * FROM executable('id', 'LineAsString', 'x String')",
    "SELECT * FROM merge('system', '^users$')",
    "SELECT 1 INTO OUTFILE '{path}'",
    "SELECT 1; DROP TABLE {db}.feedback",
    "SELECT * FROM {db}.feedback SETTINGS readonly = 0",
    "BACKUP TABLE {db}.feedback TO File('{path}')",
]


@pytest.mark.parametrize("probe", PROBES)
def test_no_user_but_the_admin_reaches_files_network_or_programs(
    clickhouse_users: dict, migrated: str, tmp_path: Path, probe: str
) -> None:
    target = tmp_path / "planted.txt"
    sql = probe.format(path=target, db=migrated)
    for user in ROLES:
        r = httpx.post(clickhouse_users[user] + "/", params={"database": migrated}, content=sql)
        assert r.status_code in (400, 403), (user, r.status_code, r.text)
        assert r.headers["X-ClickHouse-Exception-Code"] in ("497", "164", "62"), (user, r.text)
        assert not target.exists(), f"{user} wrote {target}"
    assert client(clickhouse_users[ADMIN], migrated).query("EXISTS TABLE feedback").result_rows == [(1,)]
    if probe.startswith("INSERT INTO FUNCTION"):  # the probe is real: the admin may
        httpx.post(clickhouse_users[ADMIN] + "/", content=sql).raise_for_status()
        assert target.read_text().strip() == "planted"


def test_browsers_foreign_hosts_and_anonymous_requests_are_refused(clickhouse_users: dict) -> None:
    admin = clickhouse_users[ADMIN] + "/"
    u = urlsplit(admin)
    # what a web page can send with fetch(..., {mode: 'no-cors'}): refused before anything runs
    r = httpx.post(admin, content="SELECT 1", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert r.status_code == 403 and "browsers" in r.text
    r = httpx.post(admin, content="SELECT 1", headers={"Sec-Fetch-Mode": "no-cors"})
    assert r.status_code == 403
    # a DNS-rebinding page reaches the port under its own host name
    r = httpx.post(admin, content="SELECT 1", headers={"Host": f"evil.example:{u.port}"})
    assert r.status_code == 403 and "Host" in r.text
    anonymous = f"http://{u.hostname}:{u.port}/"
    r = httpx.post(anonymous, content="SELECT 1")
    assert r.status_code == 401 and r.headers["X-ClickHouse-Exception-Code"] == "516"
    r = httpx.post(anonymous, content="SELECT 1", headers={"X-ClickHouse-User": "default"})
    assert r.status_code == 401
    r = httpx.post(anonymous, content="SELECT 1", headers={"X-ClickHouse-User": ADMIN, "X-ClickHouse-Key": "wrong"})
    assert r.status_code == 401
    assert httpx.post(admin, content="SELECT 1").text == "1\n"
    assert httpx.get(anonymous + "ping").text == "Ok.\n"  # liveness needs no credentials


def test_bodies_and_decompressed_bodies_are_bounded(tmp_path: Path) -> None:
    port = free_port()
    proc, urls = start_clickhouse_endpoint(
        tmp_path, port, ["--max-body-bytes", "65536", "--max-decompressed-bytes", "1000000"]
    )
    try:
        admin = urls[ADMIN] + "/"
        r = httpx.post(admin, content=b"SELECT 1 -- " + b"x" * 70000)
        assert r.status_code == 413 and r.headers["X-ClickHouse-Exception-Code"] == "307"
        bomb = zstandard.ZstdCompressor().compress(b"SELECT 1 -- " + b"x" * 5_000_000)  # ~200 bytes on the wire
        assert len(bomb) < 1000
        r = httpx.post(admin, content=bomb, headers={"Content-Encoding": "zstd"})
        assert r.headers["X-ClickHouse-Exception-Code"] == "307" and "decompressed" in r.text
        assert httpx.post(admin, content="SELECT 2").text == "2\n"  # still serving
    finally:
        proc.terminate()
        proc.wait(30)
