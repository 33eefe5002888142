"""The production users (``deploy/clickhouse/users.d/argus_*.xml``, rendered from
``services/common/clickhouse_access.py``), loaded by the ClickHouse engine itself from a
users.d directory, the way the official server image loads them: each user, exactly its
grants, its profile, and a server that refuses to start when a password digest is
missing (never an open user)."""

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

from services.common.clickhouse_access import ROLES, grants, users_xml

REPO = Path(__file__).resolve().parents[2]
USERS_D = REPO / "deploy/clickhouse/users.d"

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
        "grants": {u: rows(f"SHOW GRANTS FOR {u}") for u in sys.argv[3].split(",")},
        "profile": rows("SELECT profile_name, setting_name, value FROM system.settings_profile_elements "
                        "WHERE profile_name LIKE 'argus_%' ORDER BY index"),
        "user_profile": rows("SELECT user_name, inherit_profile FROM system.settings_profile_elements "
                             "WHERE user_name LIKE 'argus_%' ORDER BY user_name"),
    }))
""")


def _engine(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    conf = tmp_path / "conf"
    (conf / "users.d").mkdir(parents=True)
    for f in USERS_D.glob("*.xml"):
        shutil.copy(f, conf / "users.d" / f.name)
    (conf / "users.xml").write_text(
        "<clickhouse><users><default><password></password><profile>default</profile><quota>default</quota>"
        "<networks><ip>::1</ip></networks><access_management>1</access_management></default></users>"
        "<profiles><default/></profiles><quotas><default/></quotas>"
        "</clickhouse>"
    )
    (conf / "config.xml").write_text(f"<clickhouse><users_config>{conf / 'users.xml'}</users_config></clickhouse>")
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE)
    base = {k: v for k, v in os.environ.items() if not k.endswith("_PASSWORD_SHA256")}
    return subprocess.run(
        [sys.executable, str(probe), str(tmp_path / "data"), str(conf / "config.xml"), ",".join(ROLES)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _privileges(grant: str) -> set[tuple[str, str]]:
    """``GRANT SELECT, INSERT ON argus.t`` -> {(SELECT, argus.t), (INSERT, argus.t)};
    ``REVOKE SELECT(b, a) ON argus.t`` -> {(REVOKE SELECT(a, b), argus.t)}."""
    kind, _, rest = grant.partition(" ")
    privs, _, target = rest.partition(" ON ")
    if "(" in privs:  # one privilege on columns (their order is the server's)
        name, _, cols = privs.partition("(")
        privs = f"{name}({', '.join(sorted(c.strip() for c in cols.rstrip(')').split(',')))})"
        out = {(privs, target.strip())}
    else:
        out = {(p.strip(), target.strip()) for p in privs.split(",")}
    return {(p if kind == "GRANT" else f"{kind} {p}", t) for p, t in out}


def _digests() -> dict[str, str]:
    return {
        f"CLICKHOUSE_{name.upper()}_PASSWORD_SHA256": hashlib.sha256(f"pw of {name}".encode()).hexdigest()
        for name in ROLES
    }


def test_the_committed_users_d_files_are_the_rendered_roles() -> None:
    for role in ROLES.values():
        assert (USERS_D / f"{role.name}.xml").read_text() == users_xml(role), "run `argus clickhouse-users`"
    assert sorted(p.stem for p in USERS_D.glob("*.xml")) == sorted(ROLES)


@pytest.mark.integration
def test_each_production_user_has_exactly_its_grants_and_profile(tmp_path: Path) -> None:
    out = _engine(tmp_path, _digests())
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for role in ROLES.values():
        assert [role.name, "['sha256_password']"] in seen["users"]
        held = {
            p
            for (g,) in seen["grants"][role.name]
            for p in _privileges(g.removesuffix(f" TO {role.name}").removesuffix(f" FROM {role.name}"))
        }
        assert held == {p for g in grants(role) for p in _privileges(g)}, role.name  # nothing else
        assert [role.name, role.name] in seen["user_profile"]
    settings = {(p, name): value for p, name, value in seen["profile"]}
    assert settings[("argus_sre", "readonly")] == "1" and settings[("argus_retraining", "readonly")] == "1"
    assert settings[("argus_ingest", "readonly")] == "0"
    assert int(settings[("argus_sre", "max_execution_time")]) > 0
    assert seen["grants"]["argus_ingest"] and all(
        "SELECT ON argus.*" not in g for (g,) in seen["grants"]["argus_ingest"]
    )


@pytest.mark.integration
@pytest.mark.parametrize("missing", sorted(ROLES))
def test_without_a_password_digest_the_server_refuses_to_start(tmp_path: Path, missing: str) -> None:
    env = _digests()
    del env[f"CLICKHOUSE_{missing.upper()}_PASSWORD_SHA256"]
    out = _engine(tmp_path, env)
    assert out.returncode != 0
    assert "Password hash" in out.stderr and missing in out.stderr
