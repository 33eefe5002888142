"""The production read-only SRE user (``deploy/clickhouse/users.d/argus-sre.xml``), loaded
by the ClickHouse engine itself from a users.d directory, the way the official server
image loads it: the user, its only grant, its read-only profile, and a server that
refuses to start when the password digest is missing (never an open ``sre``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USERS_D = REPO / "deploy/clickhouse/users.d/argus-sre.xml"

# what a fresh engine (its own process: chdb holds one engine per process) reports
_PROBE = textwrap.dedent("""
    import json, sys
    import chdb
    conn = chdb.connect(f"file:{sys.argv[1]}?config-file={sys.argv[2]}")
    cur = conn.cursor()
    def rows(q):
        cur.execute(q)
        return [list(r) for r in cur.fetchall()]
    print(json.dumps({
        "users": rows("SELECT name, auth_type FROM system.users ORDER BY name"),
        "grants": rows("SHOW GRANTS FOR sre"),
        "profile": rows("SELECT profile_name, setting_name, value FROM system.settings_profile_elements "
                        "WHERE profile_name = 'argus_sre' ORDER BY index"),
        "user_profile": rows("SELECT inherit_profile FROM system.settings_profile_elements WHERE user_name = 'sre'"),
    }))
""")


def _engine(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    conf = tmp_path / "conf"
    (conf / "users.d").mkdir(parents=True)
    shutil.copy(USERS_D, conf / "users.d" / USERS_D.name)
    (conf / "users.xml").write_text(
        "<clickhouse><users><default><password></password><profile>default</profile><quota>default</quota>"
        "<networks><ip>::1</ip></networks><access_management>1</access_management></default></users>"
        "<profiles><default/></profiles><quotas><default/></quotas>"
        "</clickhouse>"
    )
    (conf / "config.xml").write_text(f"<clickhouse><users_config>{conf / 'users.xml'}</users_config></clickhouse>")
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    base = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_SRE_PASSWORD_SHA256"}
    return subprocess.run(
        [sys.executable, str(probe), str(tmp_path / "data"), str(conf / "config.xml")],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_the_sre_user_can_only_read_the_argus_database(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"correct horse battery").hexdigest()
    out = _engine(tmp_path, {"CLICKHOUSE_SRE_PASSWORD_SHA256": digest})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert ["sre", "['sha256_password']"] in seen["users"]
    assert seen["grants"] == [["GRANT SELECT ON argus.* TO sre"]]  # nothing else: no INSERT, no DDL, no system
    settings = {name: value for _, name, value in seen["profile"]}
    assert settings["readonly"] == "1"
    assert int(settings["max_execution_time"]) > 0 and int(settings["max_memory_usage"]) > 0
    assert seen["user_profile"] == [["argus_sre"]]


@pytest.mark.integration
def test_without_the_password_digest_the_server_refuses_to_start(tmp_path: Path) -> None:
    out = _engine(tmp_path, {})
    assert out.returncode != 0
    assert "Password hash" in out.stderr and "sre" in out.stderr
