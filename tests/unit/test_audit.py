"""The audit chain: what verify accepts, and each kind of tampering it names."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.audit import AuditChain, event_hash, verify
from services.common.governance import Signer, Trust, add_trusted
from services.common.registry import get_codec


@pytest.fixture
def chain(tmp_path):  # noqa: ANN001, ANN201
    trust_file = tmp_path / "trust.yaml"
    writer = Signer("argus-retraining", Ed25519PrivateKey.generate())
    add_trusted(trust_file, "argus-retraining", writer.key.public_key(), ["service"])
    written: list[dict] = []

    async def send(ev: dict) -> None:
        codec = get_codec("audit")
        written.append(codec.decode_plain(codec.encode(ev)))  # as the topic and ClickHouse give it back

    c = AuditChain(writer, send, checkpoint_every_s=0)

    async def fill() -> None:
        for i in range(1, 6):
            await c.append("trigger.transition", f"t{i}", "argus-retraining", {"sequence": i})
        await c.checkpoint_if_due()
        await c.append("trigger.approved", "t9", "jane.sre", {"sequence": 3})

    asyncio.run(fill())
    return written, Trust(trust_file), writer


def kinds(problems) -> list[tuple[int, str]]:  # noqa: ANN001
    return [(p.chain_seq, p.kind) for p in problems]


def test_an_intact_chain_verifies_and_a_restart_continues_it(chain) -> None:  # noqa: ANN001
    events, trust, writer = chain
    assert [e["chain_seq"] for e in events] == list(range(1, 8)) and events[5]["action"] == "checkpoint"
    assert verify(events, trust) == []
    resumed = AuditChain(writer, None)
    resumed.resume(events)
    nxt = resumed.build("model.active", "m/v2", "argus-retraining", {})
    assert nxt["chain_seq"] == 8 and nxt["prev_hash"] == events[-1]["hash"]
    assert verify([*events, nxt], trust) == []


def test_an_edited_event_is_named(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    events[2] = {**events[2], "actor": "mallory"}
    assert kinds(verify(events, trust))[0] == (3, "edited")


def test_a_deleted_event_is_a_gap(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    del events[3]
    assert kinds(verify(events, trust))[0] == (4, "missing")


def test_an_inserted_event_is_refused_whoever_computes_its_hash(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    forger = AuditChain(Signer("argus-retraining", Ed25519PrivateKey.generate()), None)
    forger.seq, forger.head = 7, events[-1]["hash"]
    forged = forger.build("trigger.approved", "t1", "jane.sre", {})
    assert kinds(verify([*events, forged], trust)) == [(8, "untrusted_writer")]
    # a copy of a real event's signature on other content: its hash no longer matches
    fake = {**events[1], "subject": "t-other", "chain_seq": 8, "prev_hash": events[-1]["hash"]}
    assert (8, "edited") in kinds(verify([*events, fake], trust))
    dup = {**events[4], "event_id": "00000000-0000-4000-8000-000000000000"}
    dup["hash"] = event_hash(dup)
    assert (5, "duplicate") in kinds(verify([*events, dup], trust))


def test_reordered_events_break_the_links(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    a, b = events[1], events[2]
    events[1], events[2] = {**b, "chain_seq": 2}, {**a, "chain_seq": 3}
    assert kinds(verify(events, trust))[0][0] == 2


def test_a_truncated_tail_is_found_against_the_topic(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    assert verify(events[:-2], trust) == []  # alone, a shorter chain is a valid chain...
    assert kinds(verify(events[:-2], trust, reference=events)) == [(6, "truncated")]  # ...but the topic is longer


def test_a_window_is_verified_from_its_first_event(chain) -> None:  # noqa: ANN001
    events, trust, _ = chain
    assert verify(events[3:], trust, anchored=True) == []
    assert kinds(verify(events[3:], trust))[0] == (1, "missing")


def test_a_checkpoint_racing_appends_still_names_the_chain_before_it(tmp_path) -> None:  # noqa: ANN001
    trust_file = tmp_path / "trust.yaml"
    writer = Signer("w", Ed25519PrivateKey.generate())
    add_trusted(trust_file, "w", writer.key.public_key(), ["service"])
    written: list[dict] = []

    async def send(ev: dict) -> None:
        await asyncio.sleep(0)  # the broker's round trip: other appends get scheduled meanwhile
        written.append(ev)

    async def run() -> None:
        c = AuditChain(writer, send, checkpoint_every_s=0)
        await c.append("a", "s", "w")
        await asyncio.gather(*(c.append("a", "s", "w") for _ in range(5)), c.checkpoint_if_due(force=True))

    asyncio.run(run())
    assert verify(written, Trust(trust_file)) == []


def test_trust_file_changes_become_events_once(tmp_path) -> None:  # noqa: ANN001
    from services.common.audit import trust_changes, trust_state
    from services.common.governance import revoke_trusted

    trust_file = tmp_path / "trust.yaml"
    writer = Signer("argus-retraining", Ed25519PrivateKey.generate())
    jane, ci = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    add_trusted(trust_file, "argus-retraining", writer.key.public_key(), ["service"])
    add_trusted(trust_file, "jane", jane.public_key(), ["approver"])
    written: list[dict] = []

    async def send(ev: dict) -> None:
        written.append(ev)

    chain = AuditChain(writer, send)

    async def record(trust: Trust) -> list[tuple[str, str]]:
        # what the retraining service does each tick: the trail's view, diffed with the file
        changes = trust_changes(trust_state(written), trust.keys())
        for action, kid, detail in changes:
            await chain.append(action, kid, "trust-file", detail)
        return [(a, d["name"]) for a, _, d in changes]

    trust = Trust(trust_file)
    first = asyncio.run(record(trust))
    assert sorted(first) == [("key.trusted", "argus-retraining"), ("key.trusted", "jane")]
    assert asyncio.run(record(trust)) == []  # a restart finds them in its chain: nothing again
    add_trusted(trust_file, "jane", jane.public_key(), ["approver", "operator"])
    add_trusted(trust_file, "ci", ci.public_key(), ["pipeline"])
    jane_id = next(k.key_id for k in trust.keys() if k.name == "jane")
    revoke_trusted(trust_file, jane_id)
    changed = asyncio.run(record(Trust(trust_file)))
    assert sorted(changed) == [("key.revoked", "jane"), ("key.roles_changed", "jane"), ("key.trusted", "ci")]
    roles = next(e for e in written if e["action"] == "key.roles_changed")["detail"]
    assert roles["roles"] == "approver,operator" and roles["previous_roles"] == "approver"
    assert verify(written, Trust(trust_file)) == []


def test_a_persons_submission_is_witnessed_and_its_deletion_or_edit_is_found(chain, tmp_path) -> None:  # noqa: ANN001
    from services.common.audit import SUBMITTED, submission, witness_detail

    written, trust, writer = chain
    op = Signer("olga", Ed25519PrivateKey.generate())
    nobody = Signer("mallory", Ed25519PrivateKey.generate())
    add_trusted(trust.path, "olga", op.key.public_key(), ["operator"])
    add_trusted(trust.path, "mallory", nobody.key.public_key(), ["pipeline"])
    codec = get_codec("audit")
    sub = codec.decode_plain(
        codec.encode(submission(op, "privacy.erased", "subj-1", {"tenant": "acme", "receipt_id": "r1"}, now=100.0))
    )
    assert sub["chain_seq"] == SUBMITTED and sub["writer"] == "olga"
    late = 200_000  # ms: the submission is old enough to have been witnessed
    assert kinds(verify([*written, sub], Trust(trust.path), witness_by_ms=late)) == [(0, "unwitnessed")]
    assert verify([*written, sub], Trust(trust.path), witness_by_ms=50_000) == []  # not yet due

    c = AuditChain(writer, lambda ev: _append(written, ev))
    c.resume(written)
    asyncio.run(c.append(sub["action"], sub["subject"], sub["actor"], witness_detail(sub)))
    trail = [*written, sub]
    assert verify(trail, Trust(trust.path), witness_by_ms=late) == []
    # deleted: the witness names it
    assert kinds(verify(written, Trust(trust.path), witness_by_ms=late)) == [(0, "missing")]
    # edited after the fact (its subject): its own hash, and the witnessed one, no longer match
    edited = dict(sub, subject="subj-2")
    assert "edited" in {p.kind for p in verify([*written, edited], Trust(trust.path), witness_by_ms=late)}
    # from a key without the role, or for an action people do not submit
    with pytest.raises(ValueError, match="not an action a person submits"):
        submission(op, "model.active", "m/v1", {})
    wrong = submission(nobody, "privacy.erased", "subj-3", {}, now=150.0)
    problems = verify([*trail, wrong], Trust(trust.path), witness_by_ms=late)
    assert [(p.writer, p.kind) for p in problems] == [("mallory", "untrusted_writer")]


async def _append(written: list, ev: dict) -> None:
    written.append(ev)
