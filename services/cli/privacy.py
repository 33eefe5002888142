"""``argus privacy subject|erase|verify|export|expire-texts``: a data subject's rights,
and the texts' retention.

A subject is ``--tenant`` and ``--user`` (or ``--request`` for a request made without a
user). ``erase`` destroys the subject's key (crypto-shredding), deletes the rows and
writes a signed receipt; ``verify`` re-checks a receipt; ``export`` writes everything
stored about the subject as JSON lines. See ``docs/privacy.md``.

The receipt is signed with the operator's Ed25519 key (``--signing-key``; on the local
stack ``<home>/secrets/privacy/receipt-signing.pem``, made on first use). ``verify``
trusts only the public keys it is given (``--public-key``; on the local stack, that
key's own), never the key a receipt carries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from services.cli.base import StackSettings, app, clickhouse_for, console, err, fail

privacy_app = typer.Typer(
    help="Data subjects: erase (crypto-shredding, signed receipt), verify, export.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")

_TENANT = typer.Option(..., "--tenant", "-t", help="The subject's tenant.")
_USER = typer.Option(None, "--user", "-u", help="The subject's user id, as producers send it.")
_REQUEST = typer.Option(None, "--request", help="A request made without a user (its request id).")


def _subject(user: str | None, request: str | None) -> str:
    from services.common.subject_keys import subject_of

    if (user is None) == (request is None):
        fail("name the subject with exactly one of --user or --request")
    return subject_of(user, request)


def _keys():  # noqa: ANN202 - KeyServiceClient
    from services.common.subject_keys import KeyServiceClient, KeyServiceError, KeyServiceRef

    try:
        return KeyServiceClient(KeyServiceRef.from_settings())
    except KeyServiceError as exc:
        fail(str(exc))
        raise


def _local_signing_key() -> Path:
    return Path(StackSettings().home).resolve() / "secrets" / "privacy" / "receipt-signing.pem"


def _client():  # noqa: ANN202 - (clickhouse-connect Client, database)
    from services.common.clickhouse import get_client

    ch = clickhouse_for("argus_admin")  # mutations and the key dictionaries are the admin's
    return get_client(ch), ch.database


@privacy_app.command("subject")
def subject_cmd(tenant: str = _TENANT, user: str = _USER, request: str = _REQUEST) -> None:
    """The subject's pseudonym (the ``user``/``subject_id`` columns) and its key's state."""
    info = _keys().resolve(tenant, _subject(user, request))
    typer.echo(json.dumps(info, indent=2))


@privacy_app.command("erase")
def erase_cmd(
    tenant: str = _TENANT,
    user: str = _USER,
    request: str = _REQUEST,
    by: str = typer.Option(..., "--by", help="Who asked for it (recorded in the signed receipt)."),
    signing_key: Path = typer.Option(
        None, "--signing-key", envvar="ARGUS_CLI_PRIVACY_SIGNING_KEY", help="Ed25519 PEM."
    ),
    receipt: Path = typer.Option(
        None, "--receipt", help="Where to write the receipt (default: <home>/privacy/receipts/)."
    ),
    operator: str = typer.Option(
        ...,
        "--as",
        help="Who performs it: the name your governance key is trusted under (role operator); the erasure is "
        "signed into the audit trail with that key.",
    ),
    governance_key: Optional[Path] = typer.Option(
        None,
        "--key",
        envvar="ARGUS_GOVERNANCE_SIGNING_KEY_FILE",
        help="Your governance key (default: the local stack's key of --as).",
    ),
) -> None:
    """Destroy the subject's key, delete its rows, write a signed erasure receipt, and
    record the erasure in the audit trail."""
    from services.cli.signed import signer_for
    from services.common.erasure import ErasureError, erase
    from services.common.signing import SignatureError, create_key, load_key
    from services.common.subject_keys import KeyServiceError

    subject = _subject(user, request)
    auditor = signer_for(operator, governance_key)  # no key, no erasure: it must reach the trail
    key_path = signing_key or _local_signing_key()
    if signing_key is None and not key_path.exists():
        create_key(key_path)
    try:
        key = load_key(key_path)
    except (OSError, SignatureError) as exc:
        fail(f"signing key {key_path}: {exc}")
        return
    client, db = _client()
    try:
        doc = erase(client, db, _keys(), tenant, subject, actor=by, signing_key=key)
    except (ErasureError, KeyServiceError) as exc:
        fail(str(exc))
        return
    finally:
        client.close()
    p = doc["payload"]
    out = receipt or Path(StackSettings().home).resolve() / "privacy" / "receipts" / f"{p['receipt_id']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    rows = sum(t["rows_deleted"] for t in p["tables"].values())
    _record(auditor, doc, out)
    console.print(
        f"[green]✓[/] erased subject {p['subject']['subject_id'][:16]}… of tenant {tenant}: "
        f"{len(p['key_ids_destroyed'])} key(s) destroyed, unreadable after {p['unreadable_after_ms']} ms, "
        f"{rows} rows deleted; raw Kafka copies expire by {p['kafka']['raw_copies_expire_by']}",
        highlight=False,
    )
    typer.echo(str(out))


def _record(signer, doc: dict, where: Path) -> None:  # noqa: ANN001
    """The erasure's audit submission: the receipt's id and digest, the tenant and the
    subject's pseudonym, what was destroyed and deleted (never the user id)."""
    import hashlib

    from services.cli.signed import submit
    from services.common.signing import canonical

    p = doc["payload"]
    try:
        submit(
            signer,
            "privacy.erased",
            p["subject"]["subject_id"],
            {
                "tenant": p["subject"]["tenant"],
                "receipt_id": p["receipt_id"],
                "receipt_sha256": hashlib.sha256(canonical(doc)).hexdigest(),
                "receipt_signer": doc["signature"]["key_id"],
                "requested_by": p["requested_by"],
                "keys_destroyed": len(p["key_ids_destroyed"]),
                "rows_deleted": sum(t["rows_deleted"] for t in p["tables"].values()),
                "unreadable_after_ms": p["unreadable_after_ms"],
            },
        )
    except Exception as exc:  # the erasure is done and its receipt written: say how to record it
        fail(
            f"the subject is erased (receipt {where}) but the audit trail did not take it: {exc}; "
            f"record it with `argus privacy record {where} --as {signer.name}`"
        )


@privacy_app.command("record")
def record_cmd(
    receipt: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="A receipt written by `argus privacy erase`."
    ),
    operator: str = typer.Option(..., "--as", help="Who performed the erasure (role operator)."),
    governance_key: Optional[Path] = typer.Option(None, "--key", envvar="ARGUS_GOVERNANCE_SIGNING_KEY_FILE"),
) -> None:
    """Record an erasure in the audit trail (when `erase` could not reach it)."""
    from services.cli.signed import signer_for

    signer = signer_for(operator, governance_key)
    _record(signer, json.loads(receipt.read_text()), receipt)
    console.print(f"[green]✓[/] erasure of receipt {receipt} recorded in the audit trail", highlight=False)


@privacy_app.command("verify")
def verify_cmd(
    receipt: Path = typer.Argument(..., help="A receipt written by `argus privacy erase`."),
    public_key: list[Path] = typer.Option(None, "--public-key", help="A trusted signer's public key (base64 or PEM)."),
) -> None:
    """Check a receipt's signature and that nothing of its subject is readable or left."""
    from services.common.erasure import verify
    from services.common.signing import SignatureError, load_key, load_public
    from services.common.signing import verify as verify_signature

    trusted = [load_public(p.read_text()) for p in public_key or []]
    if not trusted:
        local = _local_signing_key()
        if not local.exists():
            fail("no trusted public key: pass --public-key (the signer's)")
        trusted = [load_key(local).public_key()]
    try:
        payload = verify_signature(json.loads(receipt.read_text()), trusted)
    except (SignatureError, ValueError) as exc:
        fail(f"{receipt}: {exc}")
        return
    client, db = _client()
    try:
        problems = verify(
            client, payload.get("database", db) if payload.get("database") == db else db, _keys(), payload
        )
    finally:
        client.close()
    if problems:
        for p in problems:
            err.print(f"[bold red]✗[/] {p}")
        raise typer.Exit(1)
    console.print(
        f"[green]✓[/] receipt {payload['receipt_id']} verified: signature, keys destroyed, nothing readable or left"
    )


@privacy_app.command("expire-texts")
def expire_texts_cmd(
    policy: Path = typer.Option(
        None, "--policy", envvar="ARGUS_RETENTION_FILE", help="retention.yaml (default: shipped)."
    ),
) -> None:
    """Clear sealed texts past the policy's `texts` days (rows and metrics stay); daily."""
    from services.common.retention import Policy, RetentionError, expire_texts

    try:
        p = Policy.load(policy)
    except (OSError, RetentionError) as exc:
        fail(str(exc))
        return
    client, db = _client()
    try:
        cleared = expire_texts(client, db, p)
    finally:
        client.close()
    console.print(
        "texts cleared: " + (", ".join(f"{t} {n}" for t, n in cleared.items()) or "none (no `texts` days set)"),
        highlight=False,
    )


@privacy_app.command("export")
def export_cmd(
    tenant: str = _TENANT,
    user: str = _USER,
    request: str = _REQUEST,
    out: Path = typer.Option(None, "--out", "-o", help="A file (default: standard output)."),
) -> None:
    """Everything stored about the subject, decrypted, as JSON lines (one row each)."""
    from services.common.codec import to_json
    from services.common.erasure import export

    subject = _subject(user, request)
    client, db = _client()
    n = 0
    sink = open(out, "w") if out else sys.stdout  # noqa: SIM115 - closed below
    try:
        for row in export(client, db, _keys(), tenant, subject):
            sink.write(json.dumps(to_json(row), ensure_ascii=False, default=str) + "\n")
            n += 1
    finally:
        client.close()
        if out:
            sink.close()
    err.print(f"{n} rows exported")
