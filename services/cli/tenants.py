"""``argus tenants add|list|remove``: a tenant's principal, topics and ACLs on Kafka.

``add`` is idempotent (run it again to print the configuration once more, or with
``--rotate`` to give the tenant a new password). It needs a principal allowed to manage
users, ACLs and topics: on the local stack the stack's own super user; elsewhere the
``ARGUS_CLI_KAFKA__*`` settings of a cluster operator.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path

import typer

from services.cli.base import StackSettings, admin_kafka, app, console
from services.cli.base import fail as _fail
from services.common.files import write_private

tenants_app = typer.Typer(
    help="Tenants: one principal and one pair of request/reply topics each, nothing shared.", no_args_is_help=True
)
app.add_typer(tenants_app, name="tenants")

DIALECTS = ("python", "java", "librdkafka")
_SUFFIX = {"python": "env", "java": "properties", "librdkafka": "librdkafka.properties"}


def _local_home(k) -> Path | None:  # noqa: ANN001
    """The local stack's home when ``k`` is its broker (its secrets live there)."""
    stack = StackSettings()
    return Path(stack.home) if k.bootstrap_servers.split(",")[0] == stack.bootstrap else None


@tenants_app.command("add")
def tenants_add(
    name: str = typer.Argument(..., help="Tenant name: lowercase letters, digits and '-'."),
    dialect: str = typer.Option("all", "--format", "-f", help="python | java | librdkafka | all"),
    out: Path = typer.Option(
        None, "--out", help="Write the configuration files (0600) into this directory instead of printing them."
    ),
    ca_file: str = typer.Option(
        None, "--ca-file", help="The CA path to put in the configuration (default: the stack's)."
    ),
    bootstrap: str = typer.Option(None, "--bootstrap", help="The address tenants use (default: the configured one)."),
    rotate: bool = typer.Option(False, "--rotate", help="Give the tenant a new password (the old one stops working)."),
) -> None:
    """Create (or update) a tenant: its SCRAM principal, its two topics and their ACLs;
    print the client configuration its producers need."""
    from services.common import tenants

    if dialect not in (*DIALECTS, "all"):
        _fail(f"--format must be one of {', '.join(DIALECTS)} or all")
    try:
        tenants.check_name(name)
    except tenants.TenantError as exc:
        _fail(str(exc))
    k = admin_kafka()
    prefix = k.topic_prefix
    user = tenants.principal(name)
    home = _local_home(k)
    if home is not None:  # the local stack keeps each tenant's password beside its own
        path = Path(home).resolve() / "secrets" / "kafka" / user
        if rotate and path.exists():
            path.unlink()
        from services.stack.credentials import secret

        password = secret(home, f"kafka/{user}").get_secret_value()
    else:
        password = secrets.token_urlsafe(32)  # stored nowhere here: each `add` on a cluster sets a new one
    try:
        created = asyncio.run(tenants.provision(k, name, password))
    except Exception as exc:  # the admin client's errors (authorization, connection) are the message
        _fail(f"could not add tenant {name}: {exc}")
        return
    n = len(tenants.acls(name, prefix))
    console.print(
        f"[green]✓[/] tenant {name}: principal {user}, {len(created)} topics created, {n} ACLs", highlight=False
    )
    ca = ca_file or (str(k.ssl_cafile) if k.ssl_cafile else "")
    config = tenants.client_config(name, bootstrap or k.bootstrap_servers, password, ca, prefix)
    chosen = DIALECTS if dialect == "all" else (dialect,)
    for d in chosen:
        text = tenants.render(config, d)
        if out is not None:
            target = out / f"{name}.{_SUFFIX[d]}"
            write_private(target, text)
            console.print(f"  {d:<11} {target}", highlight=False)
        else:
            sys.stdout.write(f"# --- {d} ---\n{text}")


@tenants_app.command("list")
def tenants_list() -> None:
    """Tenants that have topics on the cluster."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common import tenants
    from services.common.kafka import client_kwargs
    from services.common.registry import default_registry

    k = admin_kafka()

    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(**client_kwargs(k), request_timeout_ms=10000)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    reg = default_registry()
    found: dict[str, set[str]] = {}
    for topic in asyncio.run(names()):
        if not topic.startswith(k.topic_prefix):
            continue
        try:
            key, tenant = reg.key_of(topic.removeprefix(k.topic_prefix))
        except Exception:  # noqa: BLE001 - not a registry topic
            continue
        if tenant is not None:
            found.setdefault(tenant, set()).add(key)
    for tenant in sorted(found):
        ok = found[tenant] == {"inference-requests", "inference-responses"}
        console.print(f"{tenant:<40} {tenants.principal(tenant)}" + ("" if ok else "  [yellow](incomplete)[/]"))
    console.print(f"{len(found)} tenants", style="dim")


@tenants_app.command("remove")
def tenants_remove(
    name: str = typer.Argument(...),
    delete_topics: bool = typer.Option(False, "--delete-topics", help="Also delete its topics (and what they hold)."),
) -> None:
    """Revoke a tenant: its ACLs and its credential go at once (its open connections fail
    their next request); its topics stay unless ``--delete-topics``."""
    from services.common import tenants

    try:
        tenants.check_name(name)
    except tenants.TenantError as exc:
        _fail(str(exc))
    k = admin_kafka()
    user = tenants.principal(name)
    try:
        n, gone = asyncio.run(tenants.revoke(k, name, delete_topics))
    except Exception as exc:  # the admin client's errors are the message
        _fail(f"could not remove tenant {name}: {exc}")
        return
    home = _local_home(k)
    if home is not None:
        (Path(home).resolve() / "secrets" / "kafka" / user).unlink(missing_ok=True)
    console.print(f"[green]✓[/] tenant {name}: {n} ACLs deleted, credential {'deleted' if gone else 'absent'}")
