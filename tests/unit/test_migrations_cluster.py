"""The migrations rendered for a ClickHouse cluster: the same files as the single server's
(which the integration tests apply to the real engine), every DDL ON CLUSTER, every
MergeTree replicated, a Distributed table per row table, and every statement one the
ClickHouse parser accepts (the engine's own ``formatQuery``)."""

from __future__ import annotations

import json
import re

import chdb
import pytest

from services.common import migrations


def _unparsable(statements: list[str]) -> list[str]:
    """The statements ClickHouse's parser refuses (one query for all of them)."""
    literals = ", ".join("'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'" for s in statements)
    out = chdb.query(f"SELECT arrayFilter(x -> formatQueryOrNull(x) IS NULL, [{literals}])", "JSONCompact")
    return json.loads(out.bytes())["data"][0][0]


def test_every_statement_renders_for_a_cluster_and_parses() -> None:
    single = [s for m in migrations.load() for s in m.statements("argus")]
    cluster = [s for m in migrations.load() for s in m.statements("argus", "main")]
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in single)
    assert _unparsable(cluster) == [] and _unparsable(["CREATE TABLE x ON CLUSTER"]) != []
    for stmt in cluster:
        head = stmt.split("(", 1)[0]
        if re.match(r"^(CREATE|ALTER|DROP|EXCHANGE|RENAME)\s", stmt):
            assert "ON CLUSTER 'main'" in head or "ON CLUSTER 'main'" in stmt.split("\n", 1)[0], stmt[:120]
        for engine in re.findall(r"ENGINE = (\w+)", stmt):
            assert engine.startswith("Replicated") or engine == "Distributed", stmt[:120]
    tables = {m[1] for s in single for m in re.finditer(r"^CREATE TABLE (?:IF NOT EXISTS )?argus\.(\w+)", s, re.M) if m}
    row_tables = {t for t in tables if not t.endswith("_sealed")}
    distributed = {m[1] for s in cluster for m in re.finditer(r"argus\.(\w+)_all ON CLUSTER", s)}
    assert distributed == row_tables and "inference_requests" in distributed
    # inserts stay as written: replication copies a shard's rows to its replicas
    assert [s for s in cluster if s.startswith("INSERT")] == [s for s in single if s.startswith("INSERT")]
    replicated = next(s for s in cluster if s.startswith("CREATE TABLE IF NOT EXISTS argus.inference_rollup_1m "))
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{uuid}/{shard}', '{replica}')" in replicated


def test_a_cluster_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(migrations.MigrationError, match="not a ClickHouse identifier"):
        migrations.on_cluster(["ALTER TABLE argus.alerts DELETE WHERE 1"], "argus", "main' SETTINGS x=1 --")


def test_the_retention_ttls_refuse_a_cluster_name_before_any_statement() -> None:
    from services.common import retention

    class Refusing:  # any statement reaching the server would fail this test
        def command(self, sql: str) -> None:
            raise AssertionError(sql)

    with pytest.raises(ValueError, match="not a ClickHouse identifier"):
        retention.apply(Refusing(), "argus", cluster="x' ON CLUSTER 'y")


def _one_server(stmt: str) -> str:
    """A cluster statement as one server runs it: no ``ON CLUSTER`` (that needs Keeper),
    plain MergeTree; the ``Distributed`` tables stay, over a cluster of this one server."""
    stmt = stmt.replace(" ON CLUSTER 'main'", "")
    return re.sub(
        r"Replicated(\w*)MergeTree\('/clickhouse/tables/\{uuid\}/\{shard\}', '\{replica\}'(?:, )?([^)]*)\)",
        r"\1MergeTree(\2)",
        stmt,
    )


def test_every_distributed_table_has_its_row_tables_columns_after_all_migrations(tmp_path) -> None:  # noqa: ANN001
    """Run on the real engine, with ``main`` a cluster of this one server: after every
    migration (columns added, tables rebuilt and exchanged), each ``<table>_all`` has
    exactly its table's columns and reads through it."""
    from chdb import session
    from pydantic import SecretStr

    from services.common.subject_keys import KeyServiceRef, dictionary_ddl

    config = tmp_path / "config.xml"
    config.write_text(
        "<clickhouse><tcp_port>9000</tcp_port><remote_servers><main><shard><replica>"
        "<host>localhost</host><port>9000</port></replica></shard></main></remote_servers></clickhouse>"
    )
    s = session.Session(f"file:{tmp_path / 'data'}?config-file={config}")
    try:
        s.query("CREATE DATABASE argus")
        for ddl in dictionary_ddl("argus", KeyServiceRef("https://127.0.0.1:9", SecretStr("t" * 32))):
            s.query(ddl)
        for m in migrations.load():
            for stmt in m.statements("argus", "main"):
                s.query(_one_server(stmt))

        def columns(kind: str) -> dict[str, list[tuple[str, str]]]:
            rows = s.query(
                "SELECT t.name, c.name, c.type FROM system.tables t JOIN system.columns c "
                "ON c.database = t.database AND c.table = t.name "
                f"WHERE t.database = 'argus' AND t.engine {kind} ORDER BY t.name, c.position",
                "JSONCompact",
            )
            out: dict[str, list[tuple[str, str]]] = {}
            for table, name, typ in json.loads(rows.bytes())["data"]:
                out.setdefault(table, []).append((name, typ))
            return out

        local, distributed = columns("LIKE '%MergeTree'"), columns("= 'Distributed'")
        assert set(distributed) == {f"{t}_all" for t in local if t != "schema_migrations"}
        for name, cols in distributed.items():
            assert cols == local[name.removesuffix("_all")], name
        # the rebuilt (sealed) tables' columns and the ALTERs' additions are there
        assert ("prompt_ct", "Nullable(String)") in distributed["inference_requests_all"]
        assert "signature" in {c for c, _ in distributed["serving_state_all"]}
        s.query("SELECT count() FROM argus.inference_requests_all")  # reads through it
    finally:
        s.close()
