"""``argus audit verify | log``: the tamper-evident audit trail (docs/governance.md).

``verify`` recomputes every writer's hash chain from ClickHouse (``audit_log``) and from
the ``argus.audit`` topic, checks each event's signature against the trust file, and
reports the first broken link, missing position, forged or edited event of each chain,
and a ClickHouse tail shorter than the topic's. Exit status 1 when anything is wrong.
``log`` prints the trail readably: when, who, what, on what, with which evidence."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from services.cli.base import app, clickhouse_for, console
from services.cli.base import fail as _fail

audit_app = typer.Typer(help="The audit trail: verify its hash chains, read it.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _since_ms(since: Optional[str]) -> int | None:
    if not since:
        return None
    try:
        when = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--since {since!r} is not an ISO time (2026-12-01 or 2026-12-01T10:00:00Z)", 2)
        raise
    return int(when.replace(tzinfo=when.tzinfo or dt.timezone.utc).timestamp() * 1000)


def _from_clickhouse(since: int | None) -> list[dict]:
    from services.common.audit import FIELDS
    from services.common.clickhouse import check_database, get_client

    ch = clickhouse_for("argus_sre")
    db = check_database(ch.database)
    client = get_client(ch)
    try:
        where = "WHERE occurred_at >= fromUnixTimestamp64Milli({s:Int64})" if since is not None else ""
        rows = client.query(
            f"SELECT {', '.join(FIELDS)} FROM {db}.audit_log {where} ORDER BY writer, chain_seq",
            parameters={"s": since or 0},
        ).result_rows
    finally:
        client.close()
    return [dict(zip(FIELDS, (str(r[0]), *r[1:]))) for r in rows]


def _from_kafka() -> list[dict]:
    from services.cli.signed import read_all

    return read_all("audit")


def _trust(trust_file: Optional[Path]):  # noqa: ANN202 - Trust
    from services.common.governance import Trust, trust_path
    from services.common.signing import SignatureError

    try:
        return Trust(trust_file or trust_path())
    except SignatureError as exc:
        _fail(str(exc))
        raise


@audit_app.command("verify")
def audit_verify(
    since: Optional[str] = typer.Option(
        None,
        "--since",
        help="Only events from this time on (each chain is checked from its first event in the window).",
    ),
    source: str = typer.Option(
        "both", "--source", help="clickhouse, kafka, or both (ClickHouse checked against the topic)."
    ),
    trust_file: Optional[Path] = typer.Option(None, "--trust-file", envvar="ARGUS_GOVERNANCE_TRUST_FILE"),
    lag_s: float = typer.Option(
        60.0, "--lag-s", help="Events on the topic younger than this may not be in ClickHouse yet (ingest's lag)."
    ),
) -> None:
    """Recompute the hash chains; report the first bad event of each (exit 1), or that the trail is intact."""
    import time

    from services.common.audit import verify

    if source not in ("clickhouse", "kafka", "both"):
        _fail("--source is clickhouse, kafka or both", 2)
    trust = _trust(trust_file)
    since_ms = _since_ms(since)
    reports: list[tuple[str, list, int]] = []
    kafka_events = _from_kafka() if source in ("kafka", "both") else None
    if kafka_events is not None and since_ms is not None:
        kafka_events = [e for e in kafka_events if int(e["occurred_at"]) >= since_ms]
    if source in ("clickhouse", "both"):
        ch_events = _from_clickhouse(since_ms)
        settled = None
        if kafka_events is not None:  # what ClickHouse must hold by now
            horizon = (time.time() - lag_s) * 1000
            settled = [e for e in kafka_events if int(e["occurred_at"]) <= horizon]
        witness_by = int((time.time() - lag_s) * 1000)  # a submission older than this must be witnessed
        reports.append(
            (
                "clickhouse",
                verify(ch_events, trust, settled, anchored=since_ms is not None, witness_by_ms=witness_by),
                len(ch_events),
            )
        )
    if kafka_events is not None:
        witness_by = int((time.time() - lag_s) * 1000)
        reports.append(
            (
                "kafka",
                verify(kafka_events, trust, anchored=since_ms is not None, witness_by_ms=witness_by),
                len(kafka_events),
            )
        )
    bad = False
    for where, problems, n in reports:
        if problems:
            bad = True
            console.print(f"[bold red]✗[/] {where}: {len(problems)} problem(s) in {n} events", highlight=False)
            first: dict[str, object] = {}
            for p in problems:
                first.setdefault(p.writer, p)
            for p in first.values():
                console.print(f"  first bad event: {p}", highlight=False)
            for p in problems:
                if p not in first.values():
                    console.print(f"  then: {p}", highlight=False)
        else:
            console.print(f"[green]✓[/] {where}: {n} events, every chain intact and signed", highlight=False)
    if bad:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(
    limit: int = typer.Option(50, "--limit", help="The latest N events."),
    since: Optional[str] = typer.Option(None, "--since"),
    subject: Optional[str] = typer.Option(
        None, "--subject", help="Only events about this trigger id, model/version or topic."
    ),
) -> None:
    """The trail, newest last: when, who, what, on what, evidence."""
    events = _from_clickhouse(_since_ms(since))
    if subject:
        events = [e for e in events if e["subject"].startswith(subject)]
    events = sorted(events, key=lambda e: (e["occurred_at"], e["writer"], e["chain_seq"]))[-limit:]
    table = Table("when", "writer#", "who", "what", "on", "evidence")
    for e in events:
        when = e["occurred_at"]
        when = when.strftime("%Y-%m-%d %H:%M:%S") if hasattr(when, "strftime") else str(when)
        evidence = ", ".join(f"{k}={v}" for k, v in sorted(dict(e["detail"]).items()) if v)
        table.add_row(when, f"{e['writer']}#{e['chain_seq']}", e["actor"], e["action"], e["subject"], evidence)
    console.print(table if events else "no audit events")
