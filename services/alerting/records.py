"""The records alerting writes: alert state changes and notifications (argus.alerts) and
silences (argus.alerts.silences, from ``argus alerts silence``)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from services.alerting.engine import AlertState, alert_event_id


def alert_record(
    a: AlertState,
    status: str,
    at: float,
    receiver: str | None = None,
    group_key: str | None = None,
    external_url: str = "",
) -> dict[str, Any]:
    return {
        "event_id": alert_event_id(a.fingerprint, status, at, receiver),
        "fingerprint": a.fingerprint,
        "rule": a.rule,
        "status": status,
        "severity": a.severity,
        "labels": a.labels,
        "annotations": a.annotations,
        "value": a.value,
        "starts_at": int((a.starts_at or a.active_at) * 1000),
        "ends_at": int(a.ends_at * 1000) if a.ends_at is not None and a.state == "resolved" else None,
        "group_key": group_key,
        "receiver": receiver,
        "generator_url": f"{external_url}/api/v2/alerts?fingerprint={a.fingerprint}" if external_url else None,
        "emitted_at": int(at * 1000),
    }


def new_silence_record(
    matchers: list[str],
    starts_at: float,
    ends_at: float,
    author: str,
    comment: str,
    silence_id: str | None = None,
    action: str = "create",
) -> dict[str, Any]:
    """A Silence record for ``argus alerts silence`` (published on argus.alerts.silences)."""
    now = time.time()
    return {
        "event_id": str(uuid.uuid4()),
        "silence_id": silence_id or str(uuid.uuid4()),
        "action": action,
        "matchers": matchers,
        "starts_at": int(starts_at * 1000),
        "ends_at": int(ends_at * 1000),
        "created_by": author,
        "comment": comment,
        "emitted_at": int(now * 1000),
        "signature": None,  # the author's (Signer.sign_record): the alerting service applies no unsigned silence
    }
