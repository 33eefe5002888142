"""The retraining service: evidence -> trigger -> human approval -> dispatch -> candidate
-> validation gate -> canary -> promoted or rolled back.

Inputs: ``argus.drift.events`` and ``argus.alerts`` (evidence, consumer group, offsets
committed after handling), ``argus.retraining.triggers`` (the lifecycle: this service's
transitions and the approvals/rejections ``argus retrain approve|reject`` publishes) and
``argus.models.registry`` (candidates a training pipeline registers), both read from the
beginning at start-up so the state is rebuilt from its history; plus timers for
schedule and metric policies and for the canary's observation period.

Outputs: one ``RetrainingTrigger`` record per transition (the logging service stores
them in ClickHouse, in order); ``ModelVersion`` records for status changes; the job for
the training pipeline is the ``dispatched`` record itself (a jobs topic), optionally also
POSTed to a webhook (HMAC-signed, idempotency key ``<trigger id>:<sequence>``); traffic
changes through the inference service's Serve config.

After a restart every open trigger is advanced from the state its history left it in,
so nothing is dispatched twice (the transition is the record) and nothing is forgotten.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import ClickHouseError

from services.common.audit import (
    SUBMITTED,
    AuditChain,
    check_submission,
    trust_changes,
    trust_state,
    witness_detail,
)
from services.common.clickhouse import get_client
from services.common.codec import SerializationError, to_json
from services.common.dlq import DeadLetterPolicy, Message, producer_sender
from services.common.governance import GovernanceGate, Refused, Signer, Trust, card_digest, key_path, trust_path
from services.common.health import HealthServer, Readiness
from services.common.kafka import GroupLagReporter, make_consumer, make_producer
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.registry import get_codec
from services.common.runtime import DecodeStep, RunTaskStep, StreamProcessor
from services.common.runtime.decode import InvalidMessage
from services.common.statetopic import StateTopicReader, read_topic
from services.common.webhook import RetryPolicy, WebhookClient
from services.retraining.config import RetrainingConfig
from services.retraining.evaluation import evaluate, holdout
from services.retraining.lifecycle import PolicyEngine, Proposal, TransitionError, Trigger, TriggerBook, record
from services.retraining.registry import ModelRegistry, with_status
from services.retraining.rollout import RolloutFailed, ServingRollout
from services.retraining.settings import RetrainingSettings


def dataset_spec(client: Any, db: str, model: str, version: str, window_s: float, where: str) -> dict[str, str]:
    """What to retrain on, counted in ClickHouse: the time range, the filter, the rows
    and the feedback labels available for them."""
    now = time.time()
    cond = f"model = {{m:String}} AND NOT shadow AND served_at >= now64(3) - toIntervalSecond({int(window_s)}) AND ({where})"
    if version != "*":
        cond += " AND model_version = {v:String}"
    params = {"m": model, "v": version}
    rows, first, last = client.query(
        f"SELECT count(), min(served_at), max(served_at) FROM {db}.inference_responses WHERE {cond}", parameters=params
    ).result_rows[0]
    labelled, negative = client.query(
        f"SELECT count(), countIf((kind = 'thumbs' AND score < 0.5) OR (kind = 'rating' AND score <= 2)) FROM {db}.feedback "
        f"WHERE request_id IN (SELECT request_id FROM {db}.inference_responses WHERE {cond})",
        parameters=params,
    ).result_rows[0]
    return {
        "table": f"{db}.inference_log",
        "model": model,
        "model_version": version,
        "filter": where,
        "from": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - window_s)),
        "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "rows": str(rows),
        "first_row": str(first),
        "last_row": str(last),
        "feedback_rows": str(labelled),
        "negative_feedback": str(negative),
    }


def retired_to_drain(
    registry: ModelRegistry, live: dict[str, list[dict[str, Any]]], canaries: set[tuple[str, str]]
) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    """Which retired versions to drain now from the applied serving states ``live``, and
    which cannot be (the only versions taking live traffic, or all of them retired). A
    canary of an open trigger is left to its trigger (a rollback)."""
    drain: list[tuple[str, str]] = []
    blocked: set[tuple[str, str]] = set()
    for model, versions in live.items():
        keep = [
            v for v in versions if v["weight"] > 0 and not v.get("shadow") and not registry.retired(model, v["version"])
        ]
        for v in versions:
            key = (model, v["version"])
            if not registry.retired(*key) or key in canaries:
                continue
            if v["weight"] > 0 and not v.get("shadow"):
                drainable = bool(keep)  # its share goes to the versions that stay
            else:  # a shadow (or a zero weight) takes no live traffic: removing it moves none
                drainable = any(x["weight"] > 0 and not x.get("shadow") for x in versions)
            if drainable:
                drain.append(key)
            else:
                blocked.add(key)
    return drain, blocked


def _retired(rec: dict[str, Any]) -> str:
    why = f": {rec['comment']}" if rec.get("comment") else ""
    return f"{rec.get('model')}/{rec.get('version')} retired by {rec.get('actor')}{why}"


async def _nothing_to_finish(revoked: list[Any]) -> None:
    """Evidence is handled and committed chunk by chunk: nothing is held at a rebalance."""


class RetrainingService:
    def __init__(self, settings: RetrainingSettings, config: RetrainingConfig) -> None:
        self.settings, self.config = settings, config
        self.k = settings.kafka
        self.log = get_logger("argus.retraining")
        self.book = TriggerBook()
        self.registry = ModelRegistry()
        self.policies = PolicyEngine(config, self.book)
        self.codecs = {
            key: get_codec(key)
            for key in ("retraining-triggers", "retraining-state", "model-registry", "drift-events", "alerts", "audit")
        }
        # every transition and registry change this service makes is signed with its key;
        # every record it reads on those topics is checked against the trust file
        gov = settings.governance
        self.signer = Signer.load(settings.actor, key_path(settings.actor, gov))
        self.gate = GovernanceGate(Trust(trust_path(gov)), gov.allow_unsigned_artifacts)
        self.locks: dict[str, asyncio.Lock] = {}
        # the audit trail: this service's hash chain on argus.audit (docs/governance.md)
        self.audit = AuditChain(self.signer, self._send_audit, settings.audit_checkpoint_s)
        self.audited: set[str] = set()  # event ids of the records (or refusals) already in the trail
        self.trust_recorded: dict[str, dict[str, str]] = {}  # the trust file as the trail last recorded it
        # (topic key, record, refusal kind or None, reason): found while rebuilding, or refused in the sync check
        self.to_audit: list[tuple[str, dict[str, Any], str | None, str]] = []
        self.snapshot_seq: dict[str, int] = {}  # trigger -> latest sequence on the state topic
        self.latest: dict[str, dict[str, Any]] = {}  # trigger -> its latest record (to snapshot once caught up)
        self.pending: dict[str, list[dict[str, Any]]] = {}  # records of triggers whose base is not read yet
        self.rollback_reasons: dict[str, str] = {}
        self.failed_dispatch: dict[str, float] = {}
        self.metric_due: dict[str, float] = {}
        self.producer = make_producer(self.k)
        self.rollout = (
            ServingRollout(self.k, self.producer, settings.actor, settings.rollout_timeout_s, signer=self.signer)
            if settings.rollout_enabled
            else None
        )
        self.failed_rollout: dict[str, float] = {}  # trigger -> when its last traffic change failed
        self.failed_drain: dict[tuple[str, str], float] = {}  # retired (model, version) -> last failed drain
        self.drain_blocked: set[tuple[str, str]] = set()  # retired, but the only version serving
        self._advancing: set[asyncio.Task] = set()
        self._failure: BaseException | None = None
        self.caught_up = False
        self.sink_healthy = True  # the last write of a transition was acknowledged by the broker
        self.last_progress = time.time()
        self.metrics = Metrics(settings.service_name)
        self.dlq = DeadLetterPolicy(kafka=self.k, service="retraining", group=settings.group_id, metrics=self.metrics)
        self.lag: dict[str, int] = {}  # evidence group: topic -> lag

    # -- writing --------------------------------------------------------------------
    async def emit(self, rec: dict[str, Any]) -> Trigger:
        """Sign and publish a transition (acks=all), then fold it in (the echo is ignored)."""
        codec = self.codecs["retraining-triggers"]
        rec = self.signer.sign_record(codec.name, codec.version, rec)
        try:
            await self.producer.send_and_wait(
                self.k.topic("retraining-triggers"),
                self.codecs["retraining-triggers"].encode(rec),
                key=rec["trigger_id"].encode(),
            )
        except KafkaError:
            self.sink_healthy = False  # readiness reports it; the error stops the service (nothing is half-applied)
            raise
        self.sink_healthy = True
        self.metrics.inc("argus_messages_produced_total", topic=self.k.topic("retraining-triggers"))
        self.metrics.inc("argus_retraining_transitions_total", policy=rec["policy"], state=rec["state"])
        t = self.book.apply(rec)
        await self.snapshot(rec)
        await self.audit_record("retraining-triggers", rec)
        self.log.info(
            "retraining.transition",
            trigger=t.trigger_id,
            state=t.state,
            sequence=t.sequence,
            model=t.model,
            version=t.model_version,
            actor=rec.get("actor"),
            comment=rec.get("comment"),
        )
        return t

    async def _send_audit(self, ev: dict[str, Any]) -> None:
        await self.producer.send_and_wait(
            self.k.topic("audit"), self.codecs["audit"].encode(ev), key=ev["writer"].encode()
        )
        self.metrics.inc("argus_messages_produced_total", topic=self.k.topic("audit"))

    async def audit_record(self, key: str, rec: dict[str, Any]) -> None:
        """One audit event per trigger transition or registry change, once (a restart
        finds what its chain already holds)."""
        record_id = str(rec["event_id"])
        if record_id in self.audited:
            return
        sig = rec.get("signature") or {}
        if key == "model-registry":
            art = rec.get("artifact_signature") or {}
            action, subject = f"model.{rec['status']}", f"{rec['model']}/{rec['version']}"
            detail = {
                "record": record_id,
                "signed_by": sig.get("key_id"),
                "sha256": rec["sha256"],
                "artifact": rec["artifact_uri"],
                "artifact_signed_by": art.get("key_id"),
                "trigger_id": rec.get("trigger_id"),
                "comment": rec.get("comment"),
            }
        else:
            action, subject = f"trigger.{rec['state']}", str(rec["trigger_id"])
            detail = {
                "record": record_id,
                "signed_by": sig.get("key_id"),
                "sequence": rec["sequence"],
                "model": rec["model"],
                "model_version": rec["model_version"],
                "policy": rec["policy"],
                "candidate_version": rec.get("candidate_version"),
                "comment": rec.get("comment"),  # e.g. the canary's share of traffic, the validation result
            }
        self.audited.add(record_id)  # before the await: the reader's echo of this record must not audit it again
        try:
            await self.audit.append(action, subject, rec.get("actor") or "", detail)
        except BaseException:
            self.audited.discard(record_id)
            raise

    async def witness(self, sub: dict[str, Any]) -> None:
        """A person's signed submission (an erasure, a silence), copied into this chain
        once, naming it and its hash (services/common/audit.py)."""
        detail = witness_detail(sub)
        if detail["record"] in self.audited:
            return
        self.audited.add(detail["record"])
        try:
            await self.audit.append(sub["action"], sub["subject"], sub["actor"], detail)
        except BaseException:
            self.audited.discard(detail["record"])
            raise
        self.log.info("retraining.submission_witnessed", action=sub["action"], by=sub["actor"], subject=sub["subject"])

    async def audit_refusal(self, key: str, rec: dict[str, Any], kind: str, reason: str) -> None:
        marker = f"refused:{key}:{rec.get('event_id')}"
        if marker in self.audited:
            return
        self.audited.add(marker)
        try:
            await self.audit.append(
                "governance.refused",
                self.k.topic(key),
                str(rec.get("actor") or ""),
                {
                    "record": marker,
                    "kind": kind,
                    "reason": reason[:1000],
                    "state": rec.get("state") or rec.get("status"),
                },
            )
        except BaseException:
            self.audited.discard(marker)
            raise

    async def flush_audit(self) -> None:
        while self.to_audit and self.caught_up:
            key, rec, refused, reason = self.to_audit.pop(0)
            if refused is not None:
                await self.audit_refusal(key, rec, refused, reason)
            elif key == "audit":
                await self.witness(rec)
            else:
                await self.audit_record(key, rec)

    async def resume_audit(self) -> None:
        """Continue this service's chain from the audit topic (and learn what it holds)."""
        # an undecodable record is not an event: ingest dead-letters it, verify reports the chain
        trail = await read_topic(self.k, "audit", skip_undecodable=True)
        events = [ev for ev in trail if ev["writer"] == self.signer.name]
        self.audit.resume(events)
        self.audited |= {e["detail"].get("record", "") for e in events}
        self.trust_recorded = trust_state(events)
        self.log.info("retraining.audit_resumed", events=len(events), head=self.audit.seq)

    async def audit_trust(self) -> None:
        """Every change of the trust file (a key trusted, its roles changed, revoked,
        reinstated, removed), as this service sees the file: one audit event each, with
        the file's digest. The first start records the keys trusted then."""
        keys = self.gate.trust.keys()  # re-read when the file changed
        changes = trust_changes(self.trust_recorded, keys)
        if not changes:
            return
        path = self.gate.trust.path
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.exists() else ""
        for action, kid, detail in changes:
            await self.audit.append(action, kid, "trust-file", detail | {"trust_file_sha256": digest})
            if action == "key.removed":
                self.trust_recorded.pop(kid, None)
            else:
                self.trust_recorded[kid] = {k: detail[k] for k in ("name", "roles", "revoked_at")}
            self.log.info("retraining.trust_changed", action=action, key_id=kid, name=detail["name"])

    async def snapshot(self, rec: dict[str, Any]) -> None:
        """The trigger's latest signed record on the compacted state topic (after the
        triggers topic has it): what a restart rebuilds from when retention has taken
        the oldest history. A person's record (an approval) is copied unchanged, still
        signed by that person."""
        tid = str(rec["trigger_id"])
        if rec["sequence"] <= self.snapshot_seq.get(tid, 0):
            return
        await self.producer.send_and_wait(
            self.k.topic("retraining-state"), self.codecs["retraining-state"].encode(rec), key=tid.encode()
        )
        self.snapshot_seq[tid] = rec["sequence"]
        self.metrics.inc("argus_messages_produced_total", topic=self.k.topic("retraining-state"))

    async def emit_version(self, rec: dict[str, Any]) -> None:
        codec = self.codecs["model-registry"]
        rec = self.signer.sign_record(codec.name, codec.version, rec)
        await self.producer.send_and_wait(
            self.k.topic("model-registry"),
            self.codecs["model-registry"].encode(rec),
            key=f"{rec['model']}/{rec['version']}".encode(),
        )
        self.metrics.inc("argus_messages_produced_total", topic=self.k.topic("model-registry"))
        self.registry.apply(rec)
        await self.audit_record("model-registry", rec)

    def _clickhouse(self) -> Any:
        return get_client(self.settings.clickhouse)

    # -- proposals --------------------------------------------------------------------
    async def propose(self, p: Proposal) -> None:
        version = p.model_version
        if version == "*":  # request-side evidence: the version to retrain is the one serving now
            active = self.registry.active(p.model)
            version = active["version"] if active else "*"
        if self.book.open_for(p.policy.name, p.model, version):
            return
        client = await asyncio.to_thread(self._clickhouse)
        try:
            spec = await asyncio.to_thread(
                dataset_spec,
                client,
                self.settings.clickhouse.database,
                p.model,
                version,
                self.config.dataset.window,
                self.config.dataset.filter,
            )
        finally:
            client.close()
        tid = str(uuid.uuid4())
        await self.emit(
            record(
                tid,
                1,
                p.model,
                version,
                p.policy.name,
                "proposed",
                p.reason,
                self.settings.actor,
                None,
                drift_event_ids=p.drift_event_ids,
                alert_event_ids=p.alert_event_ids,
                dataset_spec=spec,
            )
        )
        await self.advance(tid)

    # -- the lifecycle ----------------------------------------------------------------
    async def advance(self, tid: str) -> None:
        """Do what the trigger's current state asks of this service (idempotent)."""
        lock = self.locks.setdefault(tid, asyncio.Lock())
        async with lock:
            while True:
                t = self.book.triggers[tid]
                before = t.sequence
                await self._step(t)
                if self.book.triggers[tid].sequence == before:
                    return

    async def _step(self, t: Trigger) -> None:
        actor = self.settings.actor
        if t.state == "proposed":
            await self.emit(
                self.book.next_record(
                    t.trigger_id, "awaiting_approval", actor, "waiting for a person: argus retrain approve|reject"
                )
            )
        elif t.state == "approved":
            if await self.dispatch(t):
                await self.emit(
                    self.book.next_record(t.trigger_id, "dispatched", actor, "job sent to the training pipeline")
                )
        elif t.state == "dispatched":
            cand = self.registry.candidate_for(t.trigger_id)
            if cand is not None:
                await self.emit(
                    self.book.next_record(
                        t.trigger_id,
                        "candidate_registered",
                        actor,
                        f"{cand['version']} sha256 {cand['sha256'][:12]}…",
                        candidate_version=cand["version"],
                    )
                )
        elif t.state == "candidate_registered":
            await self.validate(t)
        elif t.state == "validated":
            cand = self.registry.get(t.model, t.candidate_version or "")
            if cand is not None and cand["status"] == "retired":
                await self.emit(self.book.next_record(t.trigger_id, "validation_failed", actor, _retired(cand)))
                return
            if cand is None or not await self._traffic(
                t,
                "canary",
                cand["version"],
                cand["artifact_uri"],
                cand["sha256"],
                self.config.canary.weight,
                card_sha256=card_digest(cand.get("card")),
                artifact_signature=cand.get("artifact_signature"),
            ):
                return
            await self.emit_version(with_status(cand, "canary", actor, f"{self.config.canary.weight:g}% of traffic"))
            await self.emit(
                self.book.next_record(
                    t.trigger_id, "canary", actor, f"{cand['version']} takes {self.config.canary.weight:g}% of traffic"
                )
            )
        elif t.state == "canary":
            cand = self.registry.get(t.model, t.candidate_version or "")
            if cand is None:
                return
            if cand["status"] == "retired":  # an operator retired the canary: it leaves traffic now
                self.rollback_reasons.setdefault(t.trigger_id, _retired(cand))
            if t.trigger_id in self.rollback_reasons:
                if not await self._traffic(t, "rollback", cand["version"]):
                    return
                if cand["status"] != "retired":
                    await self.emit_version(with_status(cand, "rejected", actor, self.rollback_reasons[t.trigger_id]))
                await self.emit(
                    self.book.next_record(t.trigger_id, "rolled_back", actor, self.rollback_reasons.pop(t.trigger_id))
                )
            elif time.time() - t.updated_at >= self.config.canary.observe_for:
                drained = await self._traffic(t, "promote", cand["version"])
                if drained is None:
                    return
                previous = self.registry.active(t.model)
                await self.emit_version(
                    with_status(cand, "active", actor, f"canary clean for {self.config.canary.observe_for:.0f}s")
                )
                if previous is not None and previous["version"] != cand["version"]:
                    await self.emit_version(
                        with_status(previous, "deprecated", actor, f"replaced by {cand['version']}")
                    )
                await self.emit(
                    self.book.next_record(
                        t.trigger_id,
                        "promoted",
                        actor,
                        f"{cand['version']} takes all traffic; drained: {', '.join(drained) or 'none'}",
                    )
                )

    async def _traffic(self, t: Trigger, change: str, version: str, *args: Any, **kwargs: Any) -> Any:
        """Ask the inference service for a traffic change and wait for its answer. Returns
        ``None`` when it failed (the trigger stays where it is and is tried again after a
        pause, see ``_timers``), else the change's result (truthy)."""
        if self.rollout is None:
            return [] if change == "promote" else True
        if time.time() - self.failed_rollout.get(t.trigger_id, 0.0) < self.settings.rollout_retry_s:
            return None
        try:
            result = await getattr(self.rollout, change)(t.model, version, *args, trigger_id=t.trigger_id, **kwargs)
        except RolloutFailed as exc:
            self.failed_rollout[t.trigger_id] = time.time()
            self.log.error(
                "retraining.rollout_failed",
                trigger=t.trigger_id,
                change=change,
                version=version,
                error=str(exc)[:1000],
                retry_in_s=self.settings.rollout_retry_s,
            )
            return None
        self.failed_rollout.pop(t.trigger_id, None)
        return result if change == "promote" else True

    async def dispatch(self, t: Trigger) -> bool:
        hook = self.config.dispatch.webhook
        if hook is None:
            return True  # the `dispatched` record on the triggers topic is the job
        job = to_json(self.book.next_record(t.trigger_id, "dispatched", self.settings.actor))
        body = json.dumps(
            {
                "job": job,
                "evidence": {"drift_event_ids": t.drift_event_ids, "alert_event_ids": t.alert_event_ids},
                "dataset_spec": t.dataset_spec,
            },
            sort_keys=True,
        ).encode()
        secret = self.settings.webhook_secrets[hook.secret].get_secret_value().encode() if hook.secret else None
        async with WebhookClient(user_agent="argus-retraining/1") as client:
            result = await client.post(
                hook.url,
                body,
                idempotency_key=f"{t.trigger_id}:{t.sequence + 1}",
                secret=secret,
                timeout=10,
                policy=RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0, give_up_after_s=10.0),
                on_retry=lambda attempt, error: self.log.warning(
                    "retraining.dispatch_retry", trigger=t.trigger_id, error=error, attempt=attempt
                ),
            )
        if result.ok:
            return True
        self.log.warning("retraining.dispatch_failed", trigger=t.trigger_id, outcome=result.outcome, error=result.error)
        self.failed_dispatch[t.trigger_id] = time.time()  # retried by the timer; the trigger stays approved
        return False

    async def validate(self, t: Trigger) -> None:
        cand = self.registry.get(t.model, t.candidate_version or "")
        if cand is None:
            return
        if cand["status"] == "retired":
            await self.emit(
                self.book.next_record(t.trigger_id, "validation_failed", self.settings.actor, _retired(cand))
            )
            return
        client = await asyncio.to_thread(self._clickhouse)
        try:
            examples = await asyncio.to_thread(
                holdout, client, self.settings.clickhouse.database, t.model, self.config.validation.holdout_size
            )
        finally:
            client.close()
        result = await asyncio.to_thread(
            evaluate, Path(cand["artifact_uri"]), cand["sha256"], examples, self.config.validation
        )
        self.log.info("retraining.validation", trigger=t.trigger_id, candidate=cand["version"], result=result.summary())
        if result.passed:
            await self.emit(self.book.next_record(t.trigger_id, "validated", self.settings.actor, result.summary()))
        else:
            await self.emit_version(with_status(cand, "rejected", self.settings.actor, result.summary()))
            await self.emit(
                self.book.next_record(t.trigger_id, "validation_failed", self.settings.actor, result.summary())
            )

    # -- inputs -----------------------------------------------------------------------
    def check_signed(self, key: str, rec: dict[str, Any]) -> None:
        """Refuse a trigger or registry record no trusted key of the right role signed:
        it is dead-lettered with the reason (the DeadLetters and GovernanceRefused alert
        rules fire on it) and never folded in."""
        if key == "serving-state":
            return
        if key == "audit":  # a person's submission is witnessed only when its signature holds
            bad = check_submission(rec, self.gate.trust) if int(rec["chain_seq"]) == SUBMITTED else None
            if bad is not None:
                kind, why = bad
                self.metrics.inc("argus_governance_refused_total", topic=self.k.topic(key), reason=kind)
                self.log.error("retraining.submission_refused", reason=kind, error=why, writer=rec.get("writer"))
                self.to_audit.append((key, rec, kind, why))
                raise InvalidMessage(f"refused: {why}", f"Refused.{kind}")
            return
        try:
            signer = self.gate.check(key, rec)
            if (
                key == "model-registry"
                and rec["status"] != "retired"
                and self.registry.retired(rec["model"], rec["version"])
            ):
                gone = self.registry.get(rec["model"], rec["version"]) or {}
                raise Refused(
                    "retired",
                    f"{rec['model']}/{rec['version']} was retired by {gone.get('actor')}: a retired version cannot "
                    f"become {rec['status']} again (register a new version)",
                )
        except Refused as exc:
            self.metrics.inc("argus_governance_refused_total", topic=self.k.topic(key), reason=exc.kind)
            self.log.error("retraining.record_refused", topic=self.k.topic(key), reason=exc.kind, error=str(exc))
            self.to_audit.append((key, rec, exc.kind, str(exc)))
            raise InvalidMessage(f"refused: {exc}", f"Refused.{exc.kind}") from None
        self.metrics.inc("argus_governance_verified_total", topic=self.k.topic(key), signer=signer.name)

    async def on_state_record(self, key: str, rec: dict[str, Any]) -> None:
        await self.flush_audit()
        if key == "audit":
            if int(rec["chain_seq"]) == SUBMITTED:
                self.to_audit.append((key, rec, None, ""))  # witnessed once caught up
                await self.flush_audit()
            return
        if key == "model-registry":
            self.registry.apply(rec)
            self.to_audit.append((key, rec, None, ""))  # a pipeline's registration, an operator's change
            await self.flush_audit()
            if self.caught_up and rec.get("trigger_id") and rec["trigger_id"] in self.book.triggers:
                self.advance_soon(rec["trigger_id"])
            return
        tid = str(rec["trigger_id"])
        if key == "retraining-state":
            self.snapshot_seq[tid] = max(self.snapshot_seq.get(tid, 0), rec["sequence"])
            try:
                t = self.book.restore(rec)
            except TransitionError as exc:
                self.log.warning("retraining.snapshot_ignored", error=str(exc))
                return
            if t is None:
                return
            self._remember(rec)
            for later in sorted(self.pending.pop(tid, []), key=lambda r: r["sequence"]):
                await self.on_state_record("retraining-triggers", later)  # history read before its snapshot
        else:
            try:
                t = self.book.apply(rec)
            except TransitionError as exc:
                if tid not in self.book.triggers and not self.caught_up:
                    # its start is gone with retention, or its snapshot is not read yet
                    self.pending.setdefault(tid, []).append(rec)
                    return
                self.log.warning("retraining.transition_ignored", error=str(exc), actor=rec.get("actor"))
                return
            if t.sequence == rec["sequence"]:
                self._remember(rec)
                self.to_audit.append((key, rec, None, ""))
                if self.caught_up:
                    await self.snapshot(rec)  # a person's transition (approval, rejection)
                    await self.flush_audit()
        if self.caught_up:
            self.advance_soon(t.trigger_id)

    def _remember(self, rec: dict[str, Any]) -> None:
        tid = str(rec["trigger_id"])
        if rec["sequence"] >= self.latest.get(tid, {}).get("sequence", 0):
            self.latest[tid] = rec

    def advance_soon(self, tid: str) -> None:
        """Advance a trigger beside the state reader: a step may wait for the inference
        service's answer on the serving-state topic, which that same reader delivers."""
        task = asyncio.create_task(self.advance(tid), name=f"advance-{tid}")
        self._advancing.add(task)
        task.add_done_callback(self._advanced)

    def _advanced(self, task: asyncio.Task) -> None:
        self._advancing.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()  # e.g. the broker refused a transition: the service stops

    async def on_evidence(self, key: str, rec: dict[str, Any]) -> None:
        now = time.time()
        if key == "drift-events":
            proposals = self.policies.on_drift(rec, now)
        else:
            proposals = self.policies.on_alert(rec, now)
            labels = rec["labels"]
            if rec["status"] == "firing" and not rec.get("receiver"):
                for t in self.book.triggers.values():  # an alert about a canary rolls it back
                    if (
                        t.state == "canary"
                        and labels.get("model") == t.model
                        and labels.get("model_version") == t.candidate_version
                    ):
                        self.rollback_reasons[t.trigger_id] = (
                            f"alert {rec['rule']} fired for the canary: {rec['annotations'].get('summary', '')}".strip()
                        )
                        await self.advance(t.trigger_id)
        for p in proposals:
            await self.propose(p)

    async def _follow_state(self, stop: asyncio.Event) -> None:
        """Rebuild the book, the registry and the serving state from their topics, then
        follow them; open triggers are resumed once the rebuild is complete."""

        async def on_record(key: str, rec: dict[str, Any]) -> None:
            if key == "serving-state":
                if self.rollout is not None:
                    self.rollout.observe(rec)
            else:
                await self.on_state_record(key, rec)

        async def rebuilt() -> None:
            for tid, rec in list(self.latest.items()):
                await self.snapshot(rec)  # history the state topic does not hold yet (an upgrade, a crash)
            ignored = sum(len(v) for v in self.pending.values())
            if ignored:
                self.log.warning(
                    "retraining.history_without_start",
                    triggers=len(self.pending),
                    records=ignored,
                    detail="their first records are gone and no snapshot holds them",
                )
            self.pending.clear()
            self.caught_up = True
            await self.flush_audit()  # what the trail does not hold yet (records applied while this service was down)
            self.log.info(
                "retraining.state_rebuilt",
                triggers=len(self.book.triggers),
                open=sum(t.open for t in self.book.triggers.values()),
                versions=len(self.registry.versions),
            )
            for tid, t in list(self.book.triggers.items()):
                if t.open:
                    self.advance_soon(tid)

        reader = StateTopicReader(
            self.k,
            ["retraining-state", "retraining-triggers", "model-registry", "serving-state", "audit"],
            on_record,
            dlq=self.dlq,
            producer=self.producer,
            on_caught_up=rebuilt,
            metrics=self.metrics,
            check=self.check_signed,
        )
        follower = asyncio.create_task(reader.run(stop))
        try:
            while not follower.done():
                if self._failure is not None:
                    raise self._failure
                self.last_progress = reader.last_progress
                await asyncio.wait({follower}, timeout=1.0)
        finally:
            follower.cancel()
            for task in list(self._advancing):
                task.cancel()
            await asyncio.gather(follower, *self._advancing, return_exceptions=True)
        follower.result()

    async def _follow_evidence(self, stop: asyncio.Event) -> None:
        """Drift events and alerts, in a consumer group: decode (undecodable -> dead
        letters) -> on_evidence one at a time -> commit (after the proposals they caused
        were written)."""
        while not self.caught_up and not stop.is_set():
            await asyncio.sleep(0.1)  # cooldowns and dedup need the rebuilt book
        keys = {self.k.topic("drift-events"): "drift-events", self.k.topic("alerts"): "alerts"}

        def evidence(msg: Message) -> tuple[str, dict[str, Any]]:
            key = keys[msg.topic]
            try:
                return key, self.codecs[key].decode_plain(msg.raw)
            except SerializationError as exc:
                raise InvalidMessage(str(exc), "InvalidMessage.SerializationError") from exc

        async def handle(item: tuple[str, dict[str, Any]]) -> None:
            await self.on_evidence(*item)

        consumer = make_consumer(self.k, self.settings.group_id)
        send_dead_letter = producer_sender(self.producer)
        run = RunTaskStep(handle, consumer, self.metrics)
        decode = DecodeStep(lambda raw: raw, evidence, self.dlq, lambda: send_dead_letter, run)
        processor = StreamProcessor(
            consumer,
            list(keys),
            decode,
            room=lambda: 500,
            on_revoke=_nothing_to_finish,
            metrics=self.metrics,
            log=self.log,
        )
        processor.subscribe()
        await consumer.start()
        try:
            while not stop.is_set():
                await processor.step()
                self.last_progress = time.time()
        finally:
            await consumer.stop()

    async def _timers(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            if not self.caught_up:
                continue
            await self.flush_audit()
            await self.audit_trust()
            await self.audit.checkpoint_if_due()
            now = time.time()
            for p in self.policies.due_schedules(now):
                await self.propose(p)
            for p in self.config.policies:
                if p.kind == "metric" and now >= self.metric_due.get(p.name, 0.0):
                    self.metric_due[p.name] = now + p.every
                    try:
                        value = await asyncio.to_thread(self._metric, p.query or "")
                    except ClickHouseError as exc:  # a bad query or ClickHouse down: logged, tried again next time
                        self.log.warning("retraining.metric_failed", policy=p.name, error=str(exc)[:500])
                        continue
                    if value is not None and (prop := self.policies.on_metric(p, value, now)) is not None:
                        await self.propose(prop)
            for tid, t in list(self.book.triggers.items()):
                if t.state in ("canary", "validated") or (
                    t.state == "approved" and now - self.failed_dispatch.get(tid, 0) > 30
                ):
                    await self.advance(tid)
            await self.drain_retired(now)

    async def drain_retired(self, now: float) -> None:
        """A retired version receives no traffic: drain it from every model's serving state
        (the others keep their shares). A canary of an open trigger is rolled back by its
        trigger instead; the only version taking live traffic is not drained (the model
        would answer nothing): that is logged, counted and left to an operator."""
        if self.rollout is None:
            return
        canaries = {(t.model, t.candidate_version or "") for t in self.book.triggers.values() if t.state == "canary"}
        drain, blocked = retired_to_drain(self.registry, self.rollout.live, canaries)
        for key in blocked - self.drain_blocked:
            self.metrics.inc("argus_retraining_retired_still_serving_total", model=key[0])
            self.log.error(
                "retraining.retired_still_serving",
                model=key[0],
                version=key[1],
                detail="it is the only version taking traffic: promote a replacement to drain it",
            )
        self.drain_blocked = blocked
        for model, version in drain:
            if now - self.failed_drain.get((model, version), 0.0) < self.settings.rollout_retry_s:
                continue
            rec = self.registry.get(model, version) or {}
            try:
                await self.rollout.rollback(model, version, comment=f"drain {version}: {_retired(rec)}")
            except RolloutFailed as exc:  # tried again after rollout_retry_s
                self.failed_drain[(model, version)] = now
                self.log.error("retraining.drain_failed", model=model, version=version, error=str(exc)[:1000])
                continue
            self.failed_drain.pop((model, version), None)
            self.log.info("retraining.retired_drained", model=model, version=version, by=rec.get("actor"))
            await self.audit.append(
                "serving.drained",
                f"{model}/{version}",
                self.settings.actor,
                {"reason": _retired(rec), "retired_record": str(rec.get("event_id"))},
            )

    def _metric(self, query: str) -> float | None:
        client = self._clickhouse()
        try:
            rows = client.query(query.replace("{db}", self.settings.clickhouse.database)).result_rows
        finally:
            client.close()
        return float(rows[0][0]) if rows and rows[0] and rows[0][0] is not None else None

    async def readiness(self) -> Readiness:
        """Ready once the triggers and the registry are rebuilt from their topics."""
        detail = (
            f"{sum(t.open for t in self.book.triggers.values())} open triggers"
            if self.caught_up
            else f"rebuilding state from the topics ({len(self.book.triggers)} triggers so far)"
        )
        if not self.sink_healthy:
            detail = "writing transitions to the broker failed"
        return Readiness(
            self.caught_up and self.sink_healthy,
            self.settings.service_name,
            self.caught_up,
            self.sink_healthy,
            [],
            dict(self.lag),
            {},
            detail,
        )

    async def _report_lag(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        """The evidence group's lag per topic as the broker sees it (readiness and metrics)."""
        reporter = GroupLagReporter(self.k, self.settings.group_id, self.metrics, self.log)
        self.lag = reporter.lag
        try:
            while not stop.is_set():
                await reporter.refresh()
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            await reporter.close()

    async def run(self, stop: asyncio.Event, health: bool = True) -> None:
        await self.producer.start()
        server = (
            HealthServer(self.settings.health, self.metrics, lambda: self.last_progress, self.readiness)
            if health
            else None
        )
        if server is not None:
            port = await server.start()
            self.log.info("retraining.health", port=port)
        tasks: list[asyncio.Task] = []
        try:
            await self.resume_audit()
            tasks = [
                asyncio.create_task(c(stop))
                for c in (self._follow_state, self._follow_evidence, self._timers, self._report_lag)
            ]
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r
        finally:
            # cancelled from outside (a shutdown): its loops stop with it, none is left running
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                await server.stop()
            if self.caught_up:  # close the chain's new events with a signed checkpoint
                try:
                    await asyncio.wait_for(self.audit.checkpoint_if_due(force=True), 10)
                except (KafkaError, asyncio.TimeoutError, OSError) as exc:
                    self.log.warning("retraining.audit_checkpoint_failed", error=repr(exc)[:500])
            try:
                await self.producer.stop()
            except KafkaError:
                pass
