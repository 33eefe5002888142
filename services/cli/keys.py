"""``argus keys create|revoke|list``: API keys of the inference HTTP routes.

Keys live as SHA-256 digests in one 0600 JSON file (:mod:`services.common.api_keys`):
the local stack's ``.argus/secrets/api-keys.json`` by default, or ``--file`` (on a
cluster: edit a copy and update the Secret the router mounts). The router re-reads the
file when it changes: a new or revoked key takes effect without a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from rich.table import Table

from services.cli.base import StackSettings, app, console
from services.cli.base import fail as _fail

keys_app = typer.Typer(help="API keys of the OpenAI-compatible HTTP route (one tenant each).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

_FILE = typer.Option(
    None, "--file", envvar="ARGUS_CLI_API_KEYS_FILE", help="The key file (default: the local stack's)."
)


def _store(path: Path | None):  # noqa: ANN202 - KeyStore
    from services.common.api_keys import KeyStore

    return KeyStore(path or StackSettings().api_keys_file())


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", "-t", help="The tenant every call with this key is billed to."),
    name: str = typer.Option("", "--name", help="What the key is for (shown by `list`)."),
    rate: int = typer.Option(None, "--rate", help="Requests per minute (default: the route's)."),
    file: Path = _FILE,
) -> None:
    """Create a key; it is printed once and never stored in clear."""
    from services.common.api_keys import ApiKeyError

    try:
        key_id, token = _store(file).create(tenant, name=name, rate_per_minute=rate)
    except ApiKeyError as exc:
        _fail(str(exc))
        return
    console.print(f"[green]✓[/] key {key_id} for tenant {tenant} (shown once; keep it secret):", highlight=False)
    typer.echo(token)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(...), file: Path = _FILE) -> None:
    """Revoke a key at once (calls with it get 401 from the next request on)."""
    from services.common.api_keys import ApiKeyError

    try:
        key = _store(file).revoke(key_id)
    except ApiKeyError as exc:
        _fail(str(exc))
        return
    console.print(f"[green]✓[/] key {key.key_id} of tenant {key.tenant} revoked", highlight=False)


@keys_app.command("list")
def keys_list(file: Path = _FILE) -> None:
    """Every key: id, tenant, name, rate, created, revoked (never the key itself)."""

    def when(t: float | None) -> str:
        return "" if t is None else dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")

    keys = _store(file).keys()
    table = Table("id", "tenant", "name", "rate/min", "created", "revoked")
    for k in keys:
        table.add_row(k.key_id, k.tenant, k.name, str(k.rate_per_minute or ""), when(k.created_at), when(k.revoked_at))
    console.print(table if keys else "no keys")
