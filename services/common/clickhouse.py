"""ClickHouse clients from one DSN.

- ``http(s)://user:password@host:port/database``: a real ClickHouse server, or the local
  stack's ClickHouse HTTP endpoint (the same protocol).
- ``chdb:///abs/dir``: the ClickHouse engine in-process (clickhouse-connect's chdb
  backend); one process may own a directory at a time.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.common.settings import ClickHouseSettings


def get_client(settings: ClickHouseSettings | str, database: str | None = None, **overrides: Any) -> Client:
    """Example::

    >>> client = get_client("http://default@127.0.0.1:8123/argus")   # doctest: +SKIP
    >>> client.query("SELECT 1").result_rows                          # doctest: +SKIP
    [(1,)]
    """
    if isinstance(settings, str):
        from pydantic import SecretStr

        settings = ClickHouseSettings(dsn=SecretStr(settings))
    dsn = settings.dsn.get_secret_value()
    parts = urlsplit(dsn)
    if parts.scheme == "chdb":
        return clickhouse_connect.get_client(dsn=dsn, **overrides)
    opts: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (8443 if parts.scheme == "https" else 8123),
        "username": unquote(parts.username) if parts.username else "default",
        "password": unquote(parts.password) if parts.password else "",
        "database": database if database is not None else (unquote(parts.path.lstrip("/")) or "default"),
        "secure": parts.scheme == "https",
        "connect_timeout": settings.connect_timeout_s,
        "send_receive_timeout": settings.send_receive_timeout_s,
        # services share a client across threads: server sessions would serialise them
        "autogenerate_session_id": False,
    }
    opts.update(dict(parse_qsl(parts.query)))
    opts.update(overrides)
    return clickhouse_connect.get_client(**opts)


def check_cluster(cluster: str) -> str:
    """``cluster`` if it is a plain identifier (it goes into ``ON CLUSTER '…'``), else
    ``ValueError``."""
    import re

    if not isinstance(cluster, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", cluster):
        raise ValueError(f"cluster name {cluster!r} is not a ClickHouse identifier")
    return cluster


def check_database(db: str) -> str:
    """``db`` if it is a plain identifier (SQL takes it as a name, never as a value), else
    ``ValueError``: every statement that names a database from settings checks it first."""
    import re

    if not isinstance(db, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", db):
        raise ValueError(f"invalid database name {db!r}")
    return db
