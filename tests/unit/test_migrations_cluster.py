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
