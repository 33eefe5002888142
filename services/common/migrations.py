"""Versioned ClickHouse migrations: ``NNNN_name.sql`` files applied in order and
recorded in ``<db>.schema_migrations`` with a checksum. Applying is idempotent;
an applied file that was edited afterwards is an error (add a new migration instead).

Statements are separated by lines ending in ``;``. ``{db}`` is replaced with the
target database."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from services.common import retention
from services.common.clickhouse import check_database
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

    def statements(self, db: str) -> list[str]:
        text = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        return [s.strip().replace("{db}", db) for s in re.split(r";\s*(?:\n|$)", text) if s.strip()]


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
) -> list[str]:
    """Apply pending migrations to ``db``; returns the names applied. The key
    dictionaries are (re)created first, every time: their source (the key service's URL
    and token, ``keys`` or the settings') is deployment configuration, not schema; so
    are the TTLs, set last from the retention policy (:mod:`services.common.retention`)."""
    try:
        check_database(db)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    for stmt in dictionary_ddl(db, keys or KeyServiceRef.from_settings()):
        client.command(stmt)
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, checksum String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
    )
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
        for stmt in mig.statements(db):
            client.command(stmt)
        client.insert(
            f"{db}.schema_migrations",
            [[mig.version, mig.name, mig.checksum]],
            column_names=["version", "name", "checksum"],
        )
        done.append(f"{mig.version:04d}_{mig.name}")
    retention.apply(client, db, retention_policy)  # TTLs per family and tenant: deployment policy, not schema
    return done
