"""``argus alerts``: alerts and silences of the alerting service."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from services.cli.base import app, console, err
from services.cli.base import fail as _fail
from services.cli.base import settings as _settings
from services.cli.base import when as _when
from services.cli.data import _follow

_KEY = typer.Option(
    None,
    "--key",
    envvar="ARGUS_GOVERNANCE_SIGNING_KEY_FILE",
    help="Your Ed25519 governance key (default: the local stack's key of --author, from `argus identity init`).",
)
alerts_app = typer.Typer(help="Alerts and silences of the alerting service.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
_ALERTING_URL = typer.Option(
    "http://127.0.0.1:9095",
    "--url",
    envvar="ARGUS_CLI_ALERTING_URL",
    help="The alerting service's API (its health port).",
)


def _api_token() -> str | None:
    """The alerting API's bearer token: ``ARGUS_CLI_ALERTING_TOKEN_FILE`` or the local stack's."""
    import os
    from pathlib import Path

    from services.cli.base import StackSettings

    given = os.environ.get("ARGUS_CLI_ALERTING_TOKEN_FILE")
    path = Path(given) if given else Path(StackSettings().home).resolve() / "secrets" / "alerting" / "api-token"
    return path.read_text().strip() if path.exists() else None


def _api(url: str, path: str) -> list[dict]:
    import httpx

    token = _api_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    try:
        r = httpx.get(url.rstrip("/") + path, timeout=10, headers=headers)
    except httpx.HTTPError as exc:
        _fail(f"the alerting service at {url} is not reachable: {exc}")
    if r.status_code != 200:
        _fail(f"{url}{path}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


@alerts_app.command("list")
def alerts_list(url: str = _ALERTING_URL, json_out: bool = typer.Option(False, "--json")) -> None:
    """Alerts the engine holds now (pending, firing, resolved-not-yet-notified)."""
    alerts = _api(url, "/api/v2/alerts")
    if json_out:
        console.print_json(json.dumps(alerts))
        return
    table = Table("state", "alert", "severity", "labels", "value", "since", "muted by")
    for a in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
        muted = ", ".join(a["silenced_by"]) + ("inhibited" if a["inhibited"] else "")
        value = "" if a["value"] is None else f"{a['value']:.4g}"
        table.add_row(
            a["state"], a["rule"], a["severity"], labels, value, _when(a["starts_at"] or a["active_at"]), muted
        )
    console.print(table if alerts else "no alerts")


@alerts_app.command("silences")
def alerts_silences(url: str = _ALERTING_URL, json_out: bool = typer.Option(False, "--json")) -> None:
    """Silences known to the engine (active and recently expired)."""
    silences = _api(url, "/api/v2/silences")
    if json_out:
        console.print_json(json.dumps(silences))
        return
    table = Table("id", "active", "matchers", "ends", "by", "comment")
    for x in sorted(silences, key=lambda x: -x["ends_at"]):
        table.add_row(
            x["id"],
            "yes" if x["active"] else "no",
            " ".join(x["matchers"]),
            _when(x["ends_at"]),
            x["created_by"],
            x["comment"],
        )
    console.print(table if silences else "no silences")


def _publish_silence(record: dict) -> None:
    from services.common.kafka import make_producer
    from services.common.registry import get_codec

    s = _settings()

    async def run() -> None:
        producer = make_producer(s.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(
                s.kafka.topic("alert-silences"),
                get_codec("alert-silences").encode(record),
                key=record["silence_id"].encode(),
            )
        finally:
            await producer.stop()

    asyncio.run(run())


def _signed(signer, record: dict) -> dict:  # noqa: ANN001
    """The silence signed by its author (the alerting service applies no other)."""
    from services.common.registry import get_codec

    codec = get_codec("alert-silences")
    return signer.sign_record(codec.name, codec.version, codec.decode_plain(codec.encode(record)))


@alerts_app.command("silence")
def alerts_silence(
    matcher: list[str] = typer.Option(
        ..., "--matcher", "-m", help="Alertmanager matcher, e.g. -m 'alertname=\"Drift\"' -m 'model=~\"smollm2.*\"'."
    ),
    duration: str = typer.Option("2h", help="How long, e.g. 30m, 2h, 1d."),
    author: str = typer.Option(
        ..., help="Who silences: the name your governance key is trusted under (operator or approver)."
    ),
    comment: str = typer.Option(..., help="Why."),
    key: Optional[Path] = _KEY,
) -> None:
    """Create a silence (published on argus.alerts.silences; the service applies it),
    signed into the audit trail with your key."""
    from services.alerting.app import new_silence_record
    from services.cli.signed import signer_for, submit
    from services.common.durations import parse_duration
    from services.common.labels import Matcher, MatcherError

    try:
        for m in matcher:
            Matcher.parse(m)
        seconds = parse_duration(duration)
    except (MatcherError, ValueError) as exc:
        _fail(str(exc), 2)
    signer = signer_for(author, key)
    now = time.time()
    record = new_silence_record(list(matcher), now, now + seconds, author, comment)
    submit(
        signer,
        "alert.silenced",
        record["silence_id"],
        {"matchers": " ".join(matcher), "ends_at": _when(now + seconds), "comment": comment},
    )
    _publish_silence(_signed(signer, record))
    console.print(f"silence {record['silence_id']} until {_when(now + seconds)} UTC", highlight=False)


@alerts_app.command("sign-rules")
def alerts_sign_rules(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="The alerting configuration (YAML)."),
    by: str = typer.Option(
        ..., "--by", help="Who approves these rules: the name your key is trusted under (operator)."
    ),
    key: Optional[Path] = typer.Option(
        None, "--key", envvar="ARGUS_GOVERNANCE_SIGNING_KEY_FILE", help="Your governance key (default: the local one)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the signature goes (default: CONFIG.sig)."),
) -> None:
    """Sign an alerting configuration (checked first) for the alerting service, which
    starts only with rules an operator signed; the signing is recorded in the audit trail."""
    from services.alerting.config import ConfigError, load_config
    from services.cli.signed import sign_policy_file

    try:
        parsed = load_config(config)
    except ConfigError as exc:
        _fail(f"{config}: {exc}", 2)
    signed, target = sign_policy_file(
        config,
        "alerting-rules",
        "alert.rules_signed",
        by,
        key,
        out,
        {"rules": len(parsed.rules), "receivers": len(parsed.receivers)},
    )
    console.print(
        f"signed {config} ({len(parsed.rules)} rules, sha256 {signed['sha256'][:16]}…) as {by}: {target}",
        highlight=False,
    )


@alerts_app.command("expire")
def alerts_expire(
    silence_id: str = typer.Argument(...),
    author: str = typer.Option(..., help="Who expires it: the name your governance key is trusted under."),
    key: Optional[Path] = _KEY,
) -> None:
    """End a silence now (signed into the audit trail with your key)."""
    import uuid as _uuid

    from services.alerting.app import new_silence_record
    from services.cli.signed import signer_for, submit

    try:
        _uuid.UUID(silence_id)
    except ValueError:
        _fail(f"{silence_id!r} is not a silence id (a UUID)", 2)
    signer = signer_for(author, key)
    now = time.time()
    submit(signer, "alert.silence_expired", silence_id, {})
    _publish_silence(
        _signed(signer, new_silence_record([], now, now, author, "expired", silence_id=silence_id, action="expire"))
    )
    console.print(f"silence {silence_id} expired", highlight=False)


@alerts_app.command("tail")
def alerts_tail(
    from_beginning: bool = typer.Option(False, "--from-beginning"),
    max_messages: int = typer.Option(0, "--max", help="Stop after this many (0: follow)."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many seconds without a message (0: never)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Follow argus.alerts: state changes and notifications as they happen."""
    from services.common.codec import to_json

    colors = {"firing": "red", "resolved": "green", "pending": "yellow", "suppressed": "blue"}

    async def run() -> None:
        async for _p, _o, rec, error in _follow("alerts", from_beginning, max_messages, idle_timeout):
            if error is not None:
                err.print(f"undecodable alert record: {error}")
                continue
            if json_out:
                sys.stdout.write(json.dumps(to_json(rec), ensure_ascii=False) + "\n")
                sys.stdout.flush()
                continue
            labels = " ".join(
                f"{k}={v}" for k, v in sorted(rec["labels"].items()) if k not in ("alertname", "severity")
            )
            to = f" -> {rec['receiver']}" if rec["receiver"] else ""
            c = colors.get(rec["status"], "white")
            console.print(
                f"{rec['emitted_at']:%H:%M:%S} [{c}]{rec['status']:<10}[/] {rec['rule']} ({rec['severity']}) "
                f"{labels}{to}  {rec['annotations'].get('summary', '')}",
                highlight=False,
            )

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
