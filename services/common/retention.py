"""Retention in ClickHouse per table family and per tenant, rendered as each table's TTL.

The policy is a YAML file (the shipped ``retention.yaml``, or ``ARGUS_RETENTION_FILE``):
days per family of tables, and per-tenant overrides for the families whose tables carry
a ``tenant``. Each table's TTL becomes

    toDateTime(<time>) + toIntervalDay(multiIf(tenant = 'clinic', 7, …, 90))

and :func:`apply` (run by every migration run) sets it with ``ALTER TABLE … MODIFY TTL``
when it differs from what was applied last (``<db>.retention_applied``), so an unchanged
policy costs nothing and a changed one is applied once.

Example::

    >>> p = Policy.parse({"families": {"feedback": {"days": 365, "tables": {"feedback": "created_at"}}},
    ...                   "tenants": {"clinic": {"feedback": 30}}})
    >>> p.ttl("feedback")
    "toDateTime(created_at) + toIntervalDay(multiIf(tenant = 'clinic', 30, 365))"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.clickhouse import check_cluster, check_database
from services.common.contracts import contract_path
from services.common.tenant_names import NAME

TENANT_FAMILIES = frozenset({"inference", "feedback", "dead_letters", "metrics"})
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_DAYS = 36_500


class RetentionError(ValueError):
    pass


class RetentionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_RETENTION_", frozen=True, extra="ignore")

    file: Path | None = None


def _days(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DAYS:
        raise RetentionError(f"{where}: days must be an integer from 1 to {MAX_DAYS}, got {value!r}")
    return value


@dataclass(frozen=True)
class Family:
    name: str
    days: int
    tables: dict[str, str]  # table -> its time column


@dataclass(frozen=True)
class Policy:
    families: dict[str, Family]
    tenants: dict[str, dict[str, int]]
    texts_days: int | None = None  # sealed texts cleared after this; None: they live as long as their rows

    @classmethod
    def parse(cls, doc: Any) -> Policy:
        if not isinstance(doc, dict) or not isinstance(doc.get("families"), dict):
            raise RetentionError("a retention policy has a `families` mapping")
        families, seen = {}, set()
        for name, f in doc["families"].items():
            if not isinstance(f, dict) or not isinstance(f.get("tables"), dict) or not f["tables"]:
                raise RetentionError(f"family {name}: needs `days` and `tables` (table: time column)")
            for table, column in f["tables"].items():
                if not (_IDENT.match(str(table)) and _IDENT.match(str(column))):
                    raise RetentionError(f"family {name}: {table!r}: {column!r} is not a table and a column name")
                if table in seen:
                    raise RetentionError(f"table {table} is in two families")
                seen.add(table)
            families[name] = Family(name, _days(f.get("days"), f"family {name}"), dict(f["tables"]))
        texts = doc.get("texts")
        if texts is not None and not isinstance(texts, dict):
            raise RetentionError("`texts` is {days: N}")
        texts_days = None if texts is None else _days(texts.get("days"), "texts")
        tenants: dict[str, dict[str, int]] = {}
        for tenant, overrides in (doc.get("tenants") or {}).items():
            if not isinstance(tenant, str) or not NAME.fullmatch(tenant):
                raise RetentionError(f"tenant {tenant!r} is not a tenant name")
            if not isinstance(overrides, dict):
                raise RetentionError(f"tenant {tenant}: expected family: days")
            for fam, days in overrides.items():
                if fam == "texts":
                    if texts_days is None:
                        raise RetentionError(f"tenant {tenant}: `texts` needs a default `texts: {{days: N}}`")
                    tenants.setdefault(tenant, {})[fam] = _days(days, f"tenant {tenant}, texts")
                    continue
                if fam not in families:
                    raise RetentionError(f"tenant {tenant}: unknown family {fam!r}")
                if fam not in TENANT_FAMILIES:
                    raise RetentionError(f"tenant {tenant}: family {fam} holds no tenant's rows")
                tenants.setdefault(tenant, {})[fam] = _days(days, f"tenant {tenant}, {fam}")
        return cls(families, tenants, texts_days)

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        path = path or RetentionSettings().file or contract_path("retention.yaml")
        try:
            return cls.parse(yaml.safe_load(Path(path).read_text()))
        except yaml.YAMLError as exc:
            raise RetentionError(f"{path}: not YAML: {type(exc).__name__}") from None

    def ttl(self, table: str) -> str:
        for fam in self.families.values():
            if table in fam.tables:
                at = f"toDateTime({fam.tables[table]})"
                cases = [(t, o[fam.name]) for t, o in sorted(self.tenants.items()) if fam.name in o]
                if not cases:
                    return f"{at} + toIntervalDay({fam.days})"
                arms = ", ".join(f"tenant = '{t}', {d}" for t, d in cases)
                return f"{at} + toIntervalDay(multiIf({arms}, {fam.days}))"
        raise KeyError(table)

    def tables(self) -> list[str]:
        return [t for f in self.families.values() for t in f.tables]

    def time_column(self, table: str) -> str | None:
        return next((f.tables[table] for f in self.families.values() if table in f.tables), None)

    def texts_days_expr(self) -> str | None:
        """Days a tenant's texts live, as SQL over the row's ``tenant``."""
        if self.texts_days is None:
            return None
        cases = [(t, o["texts"]) for t, o in sorted(self.tenants.items()) if "texts" in o]
        if not cases:
            return str(self.texts_days)
        return f"multiIf({', '.join(f'tenant = {chr(39)}{t}{chr(39)}, {d}' for t, d in cases)}, {self.texts_days})"


def expire_texts(client: Any, db: str, policy: Policy | None = None, now: float | None = None) -> dict[str, int]:
    """Clear the sealed texts older than the policy's ``texts`` days (per tenant), keeping
    the rows and their metrics: ``ALTER TABLE … UPDATE <text>_ct = NULL`` where any is
    left (a column TTL cannot do it: ClickHouse's TTL step recomputes a sealed column's
    default from its EPHEMERAL input). Run daily (the chart's CronJob, ``argus privacy
    expire-texts``); returns the rows cleared per table."""
    check_database(db)
    import time as _time

    from services.common.subject_keys import SEALED, sealed_columns

    policy = policy or Policy.load()
    days = policy.texts_days_expr()
    if days is None:
        return {}
    cutoff = int(now if now is not None else _time.time())
    out = {}
    for table in SEALED:
        at = policy.time_column(table)
        if at is None:
            continue
        columns = sealed_columns(table)
        # metadata_ct (rows before migration 0016) is a map of sealed values: cleared to empty
        left = " OR ".join(f"notEmpty({c})" if c == "metadata_ct" else f"{c} IS NOT NULL" for c in columns)
        where = f"toDateTime({at}) < toDateTime({cutoff}) - toIntervalDay({days}) AND ({left})"
        n = int(client.query(f"SELECT count() FROM {db}.{table} WHERE {where}").result_rows[0][0])
        if n:
            sets = ", ".join(
                f"{c} = CAST(map(), 'Map(LowCardinality(String), String)')" if c == "metadata_ct" else f"{c} = NULL"
                for c in columns
            )
            client.command(f"ALTER TABLE {db}.{table} UPDATE {sets} WHERE {where}", settings={"mutations_sync": 2})
        out[table] = n
    return out


def apply(client: Any, db: str, policy: Policy | None = None, cluster: str | None = None) -> list[str]:
    """Set every table's TTL from the policy where it changed; returns the tables altered.
    ``cluster``: on every server of that cluster."""
    check_database(db)
    policy = policy or Policy.load()
    on = f" ON CLUSTER '{check_cluster(cluster)}'" if cluster else ""
    client.command(
        f"CREATE TABLE IF NOT EXISTS {db}.retention_applied{on} (table String, ttl String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY (table, applied_at)"
    )
    last = {
        t: ttl
        for t, ttl in client.query(
            f"SELECT table, argMax(ttl, applied_at) FROM {db}.retention_applied GROUP BY table"
        ).result_rows
    }
    existing = {r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = '{db}'").result_rows}
    changed = []
    for table in policy.tables():
        ttl = policy.ttl(table)
        if table not in existing or last.get(table) == ttl:
            continue
        client.command(f"ALTER TABLE {db}.{table}{on} MODIFY TTL {ttl}")
        client.insert(f"{db}.retention_applied", [[table, ttl]], column_names=["table", "ttl"])
        changed.append(table)
    return changed
