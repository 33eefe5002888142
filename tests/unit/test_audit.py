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
