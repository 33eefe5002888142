"""``argus identity init | list | revoke``: the Ed25519 identities that sign governance
records (approvals, rejections, model registrations, status changes, retirements).

A private key is a PEM file of mode 0600 (the local stack's ``<home>/secrets/governance/
keys/<name>.pem`` by default); its public key goes into the trust file with the roles it
holds (``approver``, ``operator``, ``pipeline``, ``service``). On a cluster the trust
file is a Secret every service mounts: `init --no-trust` prints the entry to add there."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from services.cli.base import app, console
from services.cli.base import fail as _fail

identity_app = typer.Typer(
    help="Signing identities of approvers, operators, pipelines and services.", no_args_is_help=True
)
app.add_typer(identity_app, name="identity")

_TRUST = typer.Option(
    None, "--trust-file", envvar="ARGUS_GOVERNANCE_TRUST_FILE", help="The trust file (default: the local stack's)."
)


@identity_app.command("init")
def identity_init(
    name: str = typer.Option(
        ..., "--name", help="Who this is (the --by of your approvals, the actor of your records)."
    ),
    role: list[str] = typer.Option([], "--role", help="approver, operator, pipeline or service (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the private key goes (default: the local stack's)."),
    trust_file: Optional[Path] = _TRUST,
    no_trust: bool = typer.Option(False, "--no-trust", help="Only create the key; print the trust entry to add."),
    if_missing: bool = typer.Option(
        False, "--if-missing", help="A key already at the path is kept (and trusted for the roles): for set-up jobs."
    ),
) -> None:
    """Create an Ed25519 key (0600, never overwritten), print its public key, and trust
    it for the given roles in the local trust file."""
    import yaml

    from services.common.governance import add_trusted, key_path, trust_path
    from services.common.signing import SignatureError, create_key, key_id, load_key, public_key_b64

    try:
        path = out or key_path(name)
        if path.exists() and not if_missing:
            _fail(f"{path} exists: one key per file, never overwritten (revoke it and choose another --out)")
        public = load_key(path).public_key() if path.exists() else create_key(path)
        entry = {
            "name": name,
            "public_key": public_key_b64(public),
            "roles": sorted(set(role)),
            "key_id": key_id(public),
        }
        if role and not no_trust:
            add_trusted(trust_file or trust_path(), name, public, role)
    except SignatureError as exc:
        _fail(str(exc), 2)
        return
    console.print(f"[green]✓[/] key {entry['key_id']} of {name} at {path} (mode 0600)", highlight=False)
    if role and not no_trust:
        console.print(f"trusted for {', '.join(entry['roles'])} in {trust_file or trust_path()}", highlight=False)
    else:
        console.print("add this to the trust file (the governance Secret) with its roles:", highlight=False)
        typer.echo(yaml.safe_dump({"keys": [entry]}, sort_keys=False))


@identity_app.command("list")
def identity_list(trust_file: Optional[Path] = _TRUST) -> None:
    """Every trusted key: id, name, roles, revoked."""
    from services.common.governance import Trust, trust_path
    from services.common.signing import SignatureError

    try:
        keys = Trust(trust_file or trust_path()).keys()
    except SignatureError as exc:
        _fail(str(exc))
        return
    table = Table("key id", "name", "roles", "revoked")
    for k in sorted(keys, key=lambda k: k.name):
        revoked = (
            "" if k.revoked_at is None else dt.datetime.fromtimestamp(k.revoked_at, tz=dt.timezone.utc).isoformat()
        )
        table.add_row(k.key_id, k.name, ", ".join(sorted(k.roles)), revoked)
    console.print(table if keys else "no trusted keys")


@identity_app.command("revoke")
def identity_revoke(key_id: str = typer.Argument(...), trust_file: Optional[Path] = _TRUST) -> None:
    """Revoke a key: records it signs from now on are refused (what it signed before
    stays valid history). Services re-read the trust file without a restart."""
    from services.common.governance import revoke_trusted, trust_path
    from services.common.signing import SignatureError

    try:
        name = revoke_trusted(trust_file or trust_path(), key_id)
    except SignatureError as exc:
        _fail(str(exc))
        return
    console.print(f"[green]✓[/] key {key_id} of {name} revoked", highlight=False)
