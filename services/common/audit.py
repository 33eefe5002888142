"""The tamper-evident audit trail: one hash chain per writer on ``argus.audit``.

An event's ``hash`` is the hex SHA-256 of the canonical JSON (signing.canonical) of
every field but ``hash`` and ``signature``; it includes ``prev_hash``, the hash of the
writer's previous event, and ``chain_seq``, its position. The writer's Ed25519 key (the
same key its governance records carry, trusted with the ``service`` role) signs the hash.

What that makes detectable, by :func:`verify` over a chain read from ClickHouse or Kafka:

- an edited event: its hash no longer matches its fields (and the next event's
  ``prev_hash`` no longer matches it);
- a deleted event: a gap in ``chain_seq``;
- an inserted (forged) event: its signature is not the writer's, or its seq is taken;
- reordered events: seq and ``prev_hash`` are hashed, so a swap breaks the links;
- a truncated tail: a signed ``checkpoint`` event (every ``checkpoint_every_s``) names
  the count and head hash at its time, and ClickHouse is compared with the topic, which
  only the writers may append to and nobody can shorten at the tail.

**Submissions.** A person's action that no service performs (an erasure, a silence) is
submitted by the CLI as a *submission*: an event at ``chain_seq`` 0, signed by the
person's key (trusted with the role :data:`SUBMISSION_ROLES` names). A service with a
chain (the retraining service) **witnesses** it: it appends a copy to its own chain
that names the submission (``detail.record = submitted:<event id>``) and its hash. A
deleted submission leaves a witness without its event (``missing``); an edited one no
longer matches its hash and the witness's (``edited``); one nobody witnessed in time is
``unwitnessed``.

Why one chain per writer and not one global chain: writers (one per service) need no
coordination or shared lock to append, and each chain is verified with one key; the
order between writers is the events' time, which is evidence, not proof.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature

from services.common.signing import canonical

GENESIS = ""
# the AuditEvent's fields, in the contract's order (the ClickHouse columns are the same)
FIELDS = (
    "event_id",
    "writer",
    "chain_seq",
    "prev_hash",
    "occurred_at",
    "action",
    "actor",
    "subject",
    "detail",
    "hash",
    "signature",
    "key_id",
)
HASHED = tuple(f for f in FIELDS if f not in ("hash", "signature"))


def _ms(v: Any) -> int:
    if hasattr(v, "timestamp"):
        if getattr(v, "tzinfo", None) is None:  # ClickHouse's DateTime64(3, 'UTC') read without a zone
            import datetime as dt

            v = v.replace(tzinfo=dt.timezone.utc)
        return int(round(v.timestamp() * 1000))
    return int(v)


def event_hash(ev: dict[str, Any]) -> str:
    body = {k: ev[k] for k in HASHED}
    body["occurred_at"] = _ms(body["occurred_at"])
    body["chain_seq"] = int(body["chain_seq"])
    body["event_id"] = str(body["event_id"])
    body["detail"] = {str(k): str(v) for k, v in dict(body["detail"] or {}).items()}
    return hashlib.sha256(canonical(body)).hexdigest()


class AuditChain:
    """Appends this writer's events to ``argus.audit`` (acks=all), one at a time.

    ``resume(events)`` continues a chain from the writer's events already on the topic
    (a restart); ``append`` returns the event written."""

    def __init__(self, signer: Any, send: Any, checkpoint_every_s: float = 60.0) -> None:
        self.signer = signer  # services.common.governance.Signer
        self.send = send  # async (event) -> None: encode and produce, raise on failure
        self.checkpoint_every_s = checkpoint_every_s
        self.seq, self.head = 0, GENESIS
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self._lock = asyncio.Lock()

    def resume(self, events: Iterable[dict[str, Any]]) -> None:
        mine = sorted((e for e in events if e["writer"] == self.signer.name), key=lambda e: e["chain_seq"])
        if mine:
            self.seq, self.head = int(mine[-1]["chain_seq"]), mine[-1]["hash"]

    def build(self, action: str, subject: str, actor: str, detail: dict[str, Any], now: float | None = None) -> dict:
        ev = {
            "event_id": str(uuid.uuid4()),
            "writer": self.signer.name,
            "chain_seq": self.seq + 1,
            "prev_hash": self.head,
            "occurred_at": int((now if now is not None else time.time()) * 1000),
            "action": action,
            "actor": actor or "",
            "subject": subject,
            "detail": {str(k): "" if v is None else str(v) for k, v in detail.items()},
            "key_id": self.signer.key_id,
        }
        ev["hash"] = event_hash(ev)
        ev["signature"] = base64.b64encode(self.signer.key.sign(ev["hash"].encode())).decode()
        return ev

    async def append(self, action: str, subject: str, actor: str, detail: dict[str, Any] | None = None) -> dict:
        async with self._lock:
            return await self._append(action, subject, actor, detail or {})

    async def _append(self, action: str, subject: str, actor: str, detail: dict[str, Any]) -> dict:
        ev = self.build(action, subject, actor, detail)
        await self.send(ev)
        self.seq, self.head = ev["chain_seq"], ev["hash"]
        self.since_checkpoint += 1
        return ev

    async def checkpoint_if_due(self, force: bool = False) -> dict | None:
        """A signed checkpoint (count, head hash) when events were appended since the last
        one and the interval has passed: a truncated tail then misses a checkpoint too.
        Count and head are read under the same lock as the append: no event slips between."""
        async with self._lock:
            due = time.monotonic() - self.last_checkpoint >= self.checkpoint_every_s
            if not self.since_checkpoint or not (due or force):
                return None
            ev = await self._append(
                "checkpoint", self.signer.name, self.signer.name, {"count": self.seq, "head": self.head}
            )
            self.since_checkpoint, self.last_checkpoint = 0, time.monotonic()
            return ev


# -- submissions: a person's signed event, witnessed into a service's chain ---------------
SUBMITTED = 0  # the chain_seq of a submission
SUBMISSION_ROLES: dict[str, frozenset[str]] = {
    "privacy.erased": frozenset({"operator"}),
    "alert.silenced": frozenset({"operator", "approver"}),
    "alert.silence_expired": frozenset({"operator", "approver"}),
    "alert.rules_signed": frozenset({"operator"}),
    "retraining.policies_signed": frozenset({"operator"}),
}
WITNESS_PREFIX = "submitted:"
REFUSED_PREFIX = "refused:audit:"  # the record of a service's governance.refused event for a submission


def submission(signer: Any, action: str, subject: str, detail: dict[str, Any], now: float | None = None) -> dict:
    """A person's event for ``argus.audit`` (see the module doc)."""
    if action not in SUBMISSION_ROLES:
        raise ValueError(f"{action!r} is not an action a person submits: {sorted(SUBMISSION_ROLES)}")
    ev = {
        "event_id": str(uuid.uuid4()),
        "writer": signer.name,
        "chain_seq": SUBMITTED,
        "prev_hash": GENESIS,
        "occurred_at": int((now if now is not None else time.time()) * 1000),
        "action": action,
        "actor": signer.name,
        "subject": subject,
        "detail": {str(k): "" if v is None else str(v) for k, v in detail.items()},
        "key_id": signer.key_id,
    }
    ev["hash"] = event_hash(ev)
    ev["signature"] = base64.b64encode(signer.key.sign(ev["hash"].encode())).decode()
    return ev


def check_submission(ev: dict[str, Any], trust: Any) -> tuple[str, str] | None:
    """``(kind, why)`` when a submission is not to be trusted; None when it is."""
    roles = SUBMISSION_ROLES.get(ev["action"])
    if roles is None:
        return "untrusted_writer", f"{ev['action']!r} is not an action a person submits"
    key = trust.get(str(ev.get("key_id", "")))
    if key is None or key.name != ev["writer"] or not (key.roles & roles):
        return "untrusted_writer", (
            f"signed by key {ev.get('key_id')!r}, not a trusted key of {ev['writer']} with a role among {sorted(roles)}"
        )
    signed_at = _ms(ev["occurred_at"]) / 1000
    if key.revoked_at is not None and signed_at >= key.revoked_at:
        return "untrusted_writer", f"key {key.key_id} of {key.name} was revoked before it signed this"
    try:
        key.public.verify(base64.b64decode(ev["signature"]), str(ev["hash"]).encode())
    except (InvalidSignature, ValueError):
        return "forged", "the signature over its hash is not the writer's"
    if event_hash(ev) != ev["hash"]:
        return "edited", "its fields do not match its hash (changed after it was written)"
    return None


def witness_detail(ev: dict[str, Any]) -> dict[str, str]:
    """What a witness adds to the submission's detail in its own chain."""
    return dict(ev["detail"] or {}) | {
        "record": WITNESS_PREFIX + str(ev["event_id"]),
        "submitted_hash": ev["hash"],
        "submitted_key": ev["key_id"],
        "submitted_signature": ev["signature"],
    }


def _verify_submissions(
    submissions: list[dict[str, Any]], chained: list[dict[str, Any]], trust: Any, settled_ms: int | None, window: bool
) -> list[Problem]:
    out: list[Problem] = []
    witnessed = {
        str(e["detail"]["record"])[len(WITNESS_PREFIX) :]: e
        for e in chained
        if str(dict(e["detail"] or {}).get("record", "")).startswith(WITNESS_PREFIX)
    }
    refused = {
        str(e["detail"]["record"])[len(REFUSED_PREFIX) :]
        for e in chained
        if str(dict(e["detail"] or {}).get("record", "")).startswith(REFUSED_PREFIX)
    }
    seen = set()
    for ev in submissions:
        eid = str(ev["event_id"])
        seen.add(eid)
        bad = check_submission(ev, trust)
        if bad is not None:
            if eid not in refused:  # one a service refused (and chained the refusal) is accounted for
                out.append(Problem(ev["writer"], SUBMITTED, eid, *bad))
            continue
        w = witnessed.get(eid)
        if w is not None and dict(w["detail"]).get("submitted_hash") != ev["hash"]:
            out.append(Problem(ev["writer"], SUBMITTED, eid, "edited", f"not the submission {w['writer']} witnessed"))
        elif w is None and settled_ms is not None and _ms(ev["occurred_at"]) <= settled_ms:
            out.append(Problem(ev["writer"], SUBMITTED, eid, "unwitnessed", "no service chain holds it"))
    if not window:
        for eid, w in witnessed.items():
            if eid not in seen:
                out.append(
                    Problem(
                        w["actor"],  # the submitter
                        SUBMITTED,
                        eid,
                        "missing",
                        f"{w['writer']} #{w['chain_seq']} witnessed it; the store does not hold it (deleted)",
                    )
                )
    return out


# -- the trust file's changes ------------------------------------------------------------
KEY_ACTIONS = ("key.trusted", "key.roles_changed", "key.revoked", "key.reinstated", "key.removed")


def _key_entry(k: Any) -> dict[str, str]:
    import datetime as dt

    revoked = "" if k.revoked_at is None else dt.datetime.fromtimestamp(k.revoked_at, tz=dt.timezone.utc).isoformat()
    return {"name": k.name, "roles": ",".join(sorted(k.roles)), "revoked_at": revoked}


def trust_state(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The trust file as a writer's ``key.*`` events last recorded it: key id -> name,
    roles, revoked_at."""
    state: dict[str, dict[str, str]] = {}
    for ev in sorted(events, key=lambda e: int(e["chain_seq"])):
        if ev["action"] not in KEY_ACTIONS:
            continue
        if ev["action"] == "key.removed":
            state.pop(ev["subject"], None)
        else:
            d = ev["detail"]
            state[ev["subject"]] = {
                "name": d.get("name", ""),
                "roles": d.get("roles", ""),
                "revoked_at": d.get("revoked_at", ""),
            }
    return state


def trust_changes(recorded: dict[str, dict[str, str]], keys: Iterable[Any]) -> list[tuple[str, str, dict[str, str]]]:
    """``(action, key id, detail)`` for every difference between what the trail recorded
    and the trust file's keys now: a key added, its roles changed, revoked, reinstated or
    removed (whoever edited the file: the CLI, or a Secret on a cluster)."""
    now = {k.key_id: _key_entry(k) for k in keys}
    out: list[tuple[str, str, dict[str, str]]] = []
    for kid in sorted(now):
        entry, before = now[kid], recorded.get(kid)
        if before is None:
            out.append(("key.trusted", kid, entry))
            continue
        if before.get("roles") != entry["roles"]:
            out.append(("key.roles_changed", kid, entry | {"previous_roles": before.get("roles", "")}))
        if before.get("revoked_at") != entry["revoked_at"]:
            out.append(("key.revoked" if entry["revoked_at"] else "key.reinstated", kid, entry))
    for kid in sorted(set(recorded) - set(now)):
        out.append(("key.removed", kid, dict(recorded[kid])))
    return out


@dataclass(frozen=True)
class Problem:
    writer: str
    chain_seq: int
    event_id: str
    kind: str  # edited, missing, forged, duplicate, broken_link, truncated, untrusted_writer
    detail: str

    def __str__(self) -> str:
        return f"{self.writer} #{self.chain_seq} ({self.event_id or '-'}): {self.kind}: {self.detail}"


def verify(
    events: Iterable[dict[str, Any]],
    trust: Any,
    reference: Iterable[dict[str, Any]] | None = None,
    anchored: bool = False,
    witness_by_ms: int | None = None,
) -> list[Problem]:
    """Problems of every writer's chain, first bad event first per writer (empty: intact).

    ``trust`` (governance.Trust) gives the writers' keys; ``reference`` (the topic's
    events, when ``events`` come from ClickHouse) reveals a truncated tail. ``anchored``:
    the events are a window (``--since``): each chain starts from its first event's
    ``prev_hash`` instead of from #1. ``witness_by_ms``: a submission made before this
    time must have been witnessed (None: not checked)."""
    events = list(events)
    submissions = [e for e in events if int(e["chain_seq"]) == SUBMITTED]
    chained = [e for e in events if int(e["chain_seq"]) != SUBMITTED]
    by_writer: dict[str, list[dict[str, Any]]] = {}
    for ev in chained:
        by_writer.setdefault(ev["writer"], []).append(ev)
    ref_heads: dict[str, int] = {}
    for ev in reference or ():
        if int(ev["chain_seq"]) != SUBMITTED:
            ref_heads[ev["writer"]] = max(ref_heads.get(ev["writer"], 0), int(ev["chain_seq"]))
    problems: list[Problem] = []
    for writer in sorted(set(by_writer) | set(ref_heads)):
        problems += _verify_chain(writer, by_writer.get(writer, []), trust, ref_heads.get(writer), anchored)
    problems += _verify_submissions(submissions, chained, trust, witness_by_ms, anchored)
    return problems


def _verify_chain(
    writer: str, events: list[dict[str, Any]], trust: Any, ref_head: int | None, anchored: bool
) -> list[Problem]:
    out: list[Problem] = []
    events = sorted(events, key=lambda e: (int(e["chain_seq"]), _ms(e["occurred_at"])))
    prev_hash, expect = GENESIS, 1
    if anchored and events:
        prev_hash, expect = events[0]["prev_hash"], int(events[0]["chain_seq"])
    seen: set[int] = set()
    for ev in events:
        seq, eid = int(ev["chain_seq"]), str(ev["event_id"])

        def problem(kind: str, detail: str, seq: int = seq, eid: str = eid) -> None:
            out.append(Problem(writer, seq, eid, kind, detail))

        if seq in seen:
            problem("duplicate", "a second event claims this position: one of them was inserted")
            continue
        seen.add(seq)
        if seq > expect:
            problem("missing", f"events #{expect}..#{seq - 1} are missing (deleted)", seq=expect, eid="")
        key = trust.get(str(ev.get("key_id", "")))
        if key is None or key.name != writer or "service" not in key.roles:
            problem("untrusted_writer", f"signed by key {ev.get('key_id')!r}, not a trusted service key of {writer}")
        else:
            try:
                key.public.verify(base64.b64decode(ev["signature"]), str(ev["hash"]).encode())
            except (InvalidSignature, ValueError):
                problem("forged", "the signature over its hash is not the writer's")
        if event_hash(ev) != ev["hash"]:
            problem("edited", "its fields do not match its hash (changed after it was written)")
        if seq == expect and ev["prev_hash"] != prev_hash:
            problem("broken_link", "its prev_hash is not the hash of the event before it (reordered or replaced)")
        if ev["action"] == "checkpoint":
            detail = dict(ev["detail"] or {})
            if str(detail.get("count")) != str(seq - 1) or detail.get("head") != prev_hash:
                problem("broken_link", "the checkpoint's count or head does not match the chain before it")
        prev_hash, expect = ev["hash"], seq + 1
    head = expect - 1
    if ref_head is not None and ref_head > head:
        out.append(
            Problem(
                writer,
                head + 1,
                "",
                "truncated",
                f"the topic holds events up to #{ref_head}; the store ends at #{head}",
            )
        )
    out.sort(key=lambda p: p.chain_seq)
    return out
