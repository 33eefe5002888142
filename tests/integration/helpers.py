"""Helpers the integration tests share."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from services.common.settings import KafkaSettings
from tests.conftest import REPO


async def cli(
    kafka: KafkaSettings, *args: str, timeout_s: float = 90, env: dict[str, str] | None = None, expect_rc: int = 0
) -> str:
    """Run ``argus ARGS`` the way a user does, against the test's topics; its stdout
    (the exit status must be ``expect_rc``)."""
    env = {
        **os.environ,
        **kafka.as_env("ARGUS_CLI_"),
        "COLUMNS": "200",
        **(env or {}),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, errout = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode == expect_rc, (args, proc.returncode, out.decode()[-2000:], errout.decode())
    return out.decode()


def start_clickhouse_endpoint(  # noqa: ANN201 - (Popen, {user: base url})
    home: Path,
    port: int,
    extra_args: list[str] | None = None,
    ca_file: Path | None = None,
    trust_ca: Path | None = None,
):
    """The ClickHouse endpoint on ``port`` with the stack's users, their passwords
    generated under ``home``; grants on ``argus`` and every per-test ``test_*`` database.
    The engine trusts ``trust_ca`` for the key service's HTTPS, by default the session key
    service's CA (``ARGUS_PRIVACY_KEYS_CA_FILE``, set by the ``key_service`` fixture)."""
    import os

    from services.common.clickhouse_access import ADMIN, ROLES
    from services.stack.clickhouse_http import spawn
    from services.stack.credentials import clickhouse_password, clickhouse_users_file

    users_file = clickhouse_users_file(home, ("argus", "test_*"))
    if trust_ca is None and os.environ.get("ARGUS_PRIVACY_KEYS_CA_FILE"):
        trust_ca = Path(os.environ["ARGUS_PRIVACY_KEYS_CA_FILE"])
    proc = spawn(home / "data", port, users_file, extra_args=extra_args, ca_file=ca_file, trust_ca=trust_ca)
    scheme = "https" if "--tls-cert" in (extra_args or []) else "http"
    urls = {
        u: f"{scheme}://{u}:{clickhouse_password(home, u).get_secret_value()}@127.0.0.1:{port}" for u in (ADMIN, *ROLES)
    }
    return proc, urls


def start_key_service(home: Path, port: int):  # noqa: ANN201 - (KeyServiceLocal, KeyServiceRef)
    """The subject key service as `argus stack up` runs it (its secrets under ``home``)."""
    from services.common.settings import StackSettings
    from services.common.subject_keys import KeyServiceRef
    from services.stack.manager import KeyServiceLocal

    settings = StackSettings(home=home, keys_port=port)
    keys = KeyServiceLocal(settings)
    keys.start()
    return keys, KeyServiceRef.local(settings)


def migrate_up_to(admin, db: str, last: int, scratch: Path) -> None:  # noqa: ANN001 - clickhouse-connect Client
    """Apply the shipped migrations to ``db`` up to version ``last`` only (a database as an
    older release left it), from a copy of them under ``scratch``."""
    import shutil

    from services.common import migrations

    old = scratch / f"migrations-{last:04d}"
    old.mkdir()
    for path in sorted(migrations.MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) <= last:
            shutil.copy(path, old / path.name)
    migrations.apply(admin, db, directory=old)


async def read_topic(kafka: KafkaSettings, key: str) -> list[dict]:
    """Every record of a one-partition topic (decoded with its contract), from the beginning."""
    from services.common.statetopic import read_topic as read_whole

    return await read_whole(kafka, key)
