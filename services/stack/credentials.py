"""Credentials of the local stack: generated once, kept in files only the user can read.

``<home>/secrets/`` (mode 0700) holds one file per secret (mode 0600), created with
``O_EXCL`` so a second ``argus stack up`` reuses them; nothing is ever a default value and
nothing is printed. The ClickHouse endpoint gets only SHA-256 digests
(``<home>/clickhouse/users.json``, 0600); services get the DSN of their own user.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from services.common.clickhouse_access import ADMIN, ROLES
from services.common.files import write_private as write_file_private


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (replacing it atomically), in a 0700 directory."""
    _private_dir(path.parent)
    write_file_private(path, text)


def secret(home: Path, name: str) -> SecretStr:
    """The secret ``name`` of the stack at ``home``, generated on first use."""
    path = Path(home).resolve() / "secrets" / name
    if not path.exists():
        _private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty: delete it and run `argus stack up` to generate a new secret")
    return SecretStr(value)


def clickhouse_password(home: Path, user: str) -> SecretStr:
    return secret(home, f"clickhouse/{user}")


def clickhouse_users_file(home: Path, databases: tuple[str, ...] = ("argus",), path: Path | None = None) -> Path:
    """Write the local endpoint's users file: the admin and every role, each with the
    SHA-256 digest of its generated password. Returns its path."""
    users = {ADMIN: "admin", **{name: name for name in ROLES}}
    doc = {
        "databases": list(databases),
        "default_database": databases[0],
        "users": {
            name: {
                "role": role,
                "sha256": hashlib.sha256(clickhouse_password(home, name).get_secret_value().encode()).hexdigest(),
            }
            for name, role in users.items()
        },
    }
    path = path or Path(home).resolve() / "clickhouse" / "users.json"
    write_private(path, json.dumps(doc, indent=2))
    return path
