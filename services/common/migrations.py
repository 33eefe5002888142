"""Versioned ClickHouse migrations: ``NNNN_name.sql`` files applied in order and
recorded in ``<db>.schema_migrations`` with a checksum. Applying is idempotent;
an applied file that was edited afterwards is an error (add a new migration instead).

Statements are separated by lines ending in ``;``. ``{db}`` is replaced with the
target database.

The files are written for one server (the local engine, a single ClickHouse). The same
files render for a cluster (:func:`on_cluster`, ``ARGUS_*_CLICKHOUSE__CLUSTER``): every
DDL runs ``ON CLUSTER``, every ``*MergeTree`` becomes its ``Replicated*`` form (ZooKeeper
or Keeper path per shard and table, ``{replica}`` from the server's macros), and each row
table gets a ``Distributed`` table ``<name>_all`` over it for reads across shards.
`argus migrate --print --cluster NAME` shows what would run."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from services.common import retention
from services.common.clickhouse import check_cluster, check_database
from services.common.contracts import contract_path
from services.common.subject_keys import KeyServiceRef, dictionary_ddl

MIGRATIONS_DIR = contract_path("clickhouse")  # shipped in the package (the ingest service's tables)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, db: str, cluster: str | None = None) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        out = [s.strip().replace("{db}", db) for s in re.split(r";\s*(?:\n|$)", text) if s.strip()]
        return out if cluster is None else on_cluster(out, db, cluster)


_TABLE = r"(?P<table>[A-Za-z_][A-Za-z0-9_]*\.(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
_DDL = [
    # (statement head, where ON CLUSTER goes: right after the object's name)
    re.compile(
        rf"^(?P<head>CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW|MATERIALIZED\s+VIEW|DICTIONARY)\s+(?:IF\s+NOT\s+EXISTS\s+)?{_TABLE})",
        re.I,
    ),
    re.compile(
        rf"^(?P<head>(?:ALTER\s+TABLE|DROP\s+(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+EXISTS\s+)?)\s*{_TABLE})", re.I
    ),
    re.compile(rf"^(?P<head>EXCHANGE\s+TABLES\s+{_TABLE}\s+AND\s+[A-Za-z0-9_.]+)", re.I),
    re.compile(rf"^(?P<head>RENAME\s+TABLE\s+{_TABLE}\s+TO\s+[A-Za-z0-9_.]+)", re.I),
]
_ENGINE = re.compile(
    r"ENGINE\s*=\s*(?P<kind>Replacing|Aggregating|Summing|Collapsing)?MergeTree(?:\((?P<args>[^)]*)\))?", re.I
)


_COLUMNS_CHANGE = re.compile(r"\b(?:ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.I)
_TRANSIENT = ("_sealed", "_new", "_tmp")  # a rebuild's working tables: no Distributed table over them


def _distributed(db: str, name: str, cluster: str, replace: bool = False) -> str:
    verb = "CREATE OR REPLACE TABLE" if replace else "CREATE TABLE IF NOT EXISTS"
    return (
        f"{verb} {db}.{name}_all ON CLUSTER '{cluster}' AS {db}.{name} "
        f"ENGINE = Distributed('{cluster}', '{db}', '{name}', rand())"
    )


def on_cluster(statements: list[str], db: str, cluster: str) -> list[str]:
    """``statements`` (one server's) for the cluster ``cluster``: each DDL ``ON CLUSTER``,
    each MergeTree replicated, a ``Distributed`` ``<name>_all`` after each row table.
    A ``Distributed`` table copies its columns when it is created, so where a migration
    changes a row table's columns (``ALTER … ADD/DROP/MODIFY/RENAME COLUMN``) or swaps it
    for a rebuilt one (``EXCHANGE TABLES``), its ``_all`` is recreated over it at the end
    of the migration (it holds no rows: reads go to the shards). ``INSERT … SELECT`` (the
    rebuild migrations) stays as it is: replication copies it to the shard's replicas; on
    more than one shard it runs on each (docs/deploy.md)."""
    try:
        check_cluster(cluster)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    out = []
    stale: list[str] = []  # row tables whose _all no longer has their columns, in order
    for stmt in statements:
        for pattern in _DDL:
            m = pattern.match(stmt)
            if m:
                head = m["head"].split(None, 1)[0].upper()
                changed = (head == "ALTER" and _COLUMNS_CHANGE.search(stmt)) or head == "EXCHANGE"
                if changed and not m["name"].endswith(_TRANSIENT) and m["name"] not in stale:
                    stale.append(m["name"])
                stmt = f"{m['head']} ON CLUSTER '{cluster}'{stmt[m.end() :]}"
                break
        engine = _ENGINE.search(stmt)
        if engine and re.match(r"^CREATE\s", stmt, re.I) and m is not None:
            name = m["name"]
            args = ", ".join(
                a for a in ("'/clickhouse/tables/{uuid}/{shard}'", "'{replica}'", (engine["args"] or "").strip()) if a
            )
            stmt = f"{stmt[: engine.start()]}ENGINE = Replicated{engine['kind'] or ''}MergeTree({args}){stmt[engine.end() :]}"
            out.append(stmt)
            if not name.endswith(_TRANSIENT):
                out.append(_distributed(db, name, cluster))
            continue
        out.append(stmt)
    out.extend(_distributed(db, name, cluster, replace=True) for name in stale)
    return out


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        out.append(Migration(int(m[1]), m[2], path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migrations share a version number")
    return out


def apply(
    client: Client,
    db: str,
    directory: Path = MIGRATIONS_DIR,
    keys: KeyServiceRef | None = None,
    retention_policy: retention.Policy | None = None,
    cluster: str | None = None,
) -> list[str]:
    """Apply pending migrations to ``db``; returns the names applied. The key
    dictionaries are (re)created first, every time: their source (the key service's URL
    and token, ``keys`` or the settings') is deployment configuration, not schema; so
    are the TTLs, set last from the retention policy (:mod:`services.common.retention`)."""
    try:
        check_database(db)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    if cluster is not None:
        on_cluster([], db, cluster)  # refuses a name that is not an identifier (MigrationError)
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}" + (f" ON CLUSTER '{cluster}'" if cluster else ""))
    setup = [
        *dictionary_ddl(db, keys or KeyServiceRef.from_settings()),
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version",
    ]
    for stmt in setup if cluster is None else on_cluster(setup, db, cluster):
        client.command(stmt)
    applied = {
        int(v): (n, c)
        for v, n, c in client.query(f"SELECT version, name, checksum FROM {db}.schema_migrations").result_rows
    }
    done: list[str] = []
    for mig in load(directory):
        if mig.version in applied:
            if applied[mig.version][1] != mig.checksum:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name} changed after it was applied to {db}; add a new migration instead"
                )
            continue
        for stmt in mig.statements(db, cluster):
            client.command(stmt)
        client.insert(
            f"{db}.schema_migrations",
            [[mig.version, mig.name, mig.checksum]],
            column_names=["version", "name", "checksum"],
        )
        done.append(f"{mig.version:04d}_{mig.name}")
    retention.apply(client, db, retention_policy, cluster)  # TTLs per family and tenant: deployment policy, not schema
    return done
