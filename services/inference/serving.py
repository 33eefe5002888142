"""Serving states as records: the inference service applies the desired states of its
models (``model_name`` and each of ``models``, keyed by name, each with revisions of its
own) from ``argus.serving.state`` and acknowledges each there.

A canary, a promotion or a rollback is a ``desired`` record (versions, weights,
artifact digests, a revision one above the last) written by the retraining service or
an operator; this service turns it into the application's declarative Serve config
(:func:`services.inference.app.deploy`: a weights-only change reconfigures the router in
place; a new version adds replicas that refuse an artifact whose digest differs) and
answers with an ``applied`` record of the same revision, or ``failed`` with the reason.
The services never call each other, and every change is on the topic and in ClickHouse
(``serving_state``) with who asked for it and what came of it.

At start-up the topic is read from its beginning: the latest desired state is applied
again (a restarted service keeps the last promotion instead of falling back to its
environment's versions); with none, the state the service deployed from its settings
is published as ``applied``, so writers know what is live. A state of one model changes
that model's versions only: the others' routing and replicas stay as they are.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from services.common.dlq import DeadLetterPolicy
from services.common.governance import Refused
from services.common.logging import get_logger
from services.common.metrics import Metrics
from services.common.statetopic import StateTopicReader
from services.inference.settings import InferenceSettings, ModelVersion

TOPIC = "serving-state"


def served_versions(versions: tuple[ModelVersion, ...] | list[ModelVersion]) -> list[dict[str, Any]]:
    return [
        {
            "version": v.version,
            "weight": float(v.weight),
            "artifact_uri": str(v.model_path or ""),
            "sha256": v.sha256,
            "shadow": v.shadow,
            "card_sha256": v.card_sha256,
            "artifact_signature": v.artifact_signature,
        }
        for v in versions
    ]


def state_record(
    model: str,
    revision: int,
    status: str,
    versions: list[dict[str, Any]],
    actor: str,
    comment: str,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "model": model,
        "revision": revision,
        "status": status,
        "versions": versions,
        "trigger_id": trigger_id,
        "actor": actor,
        "comment": comment[:2000],
        "occurred_at": int(time.time() * 1000),
        "signature": None,  # a desired state is signed by who asks for it (Signer.sign_record)
    }


def model_versions(settings: InferenceSettings, model: str) -> tuple[ModelVersion, ...]:
    """The versions ``settings`` serves for ``model`` (``KeyError`` when it serves none)."""
    if model == settings.model_name:
        return settings.versions
    for m in settings.models:
        if m.name == model:
            return m.versions
    raise KeyError(model)


def with_versions(settings: InferenceSettings, model: str, versions: tuple[ModelVersion, ...]) -> InferenceSettings:
    """``settings`` with ``model``'s versions replaced, every other model's as they were."""
    if model == settings.model_name:
        return settings.model_copy(update={"versions": versions})
    models = tuple(m.model_copy(update={"versions": versions}) if m.name == model else m for m in settings.models)
    return settings.model_copy(update={"models": models})


class ServingStateApplier:
    """Follows ``argus.serving.state`` and applies the desired states of the models this
    service serves, each model's in its own revision order."""

    def __init__(
        self,
        settings: InferenceSettings,
        producer: Any,
        deploy: Callable[[InferenceSettings], Any],
        metrics: Metrics | None = None,
        actor: str = "argus-inference",
    ) -> None:
        from services.common.registry import get_codec

        self.settings = settings
        self.model = settings.model_name
        self.models = (settings.model_name, *(m.name for m in settings.models))
        self.producer = producer
        self.deploy = deploy
        self.actor = actor
        self.metrics = metrics or Metrics("inference")
        self.codec = get_codec(TOPIC)
        self.topic = settings.kafka.topic(TOPIC)
        self.log = get_logger("argus.inference.serving", models=",".join(self.models))
        self.current: InferenceSettings = settings  # what is deployed now
        self.last_revision: dict[str, int] = dict.fromkeys(self.models, 0)  # highest revision seen, per model
        self.latest_desired: dict[str, dict[str, Any]] = {}
        self.applied_revision: dict[str, int] = {}
        dlq = DeadLetterPolicy(
            kafka=settings.kafka, service="inference", group=f"{settings.app_name}-serving-state", metrics=self.metrics
        )
        self.reader = StateTopicReader(
            settings.kafka,
            [TOPIC],
            self.on_record,
            dlq=dlq,
            producer=producer,
            on_caught_up=self.on_caught_up,
            metrics=self.metrics,
            check=self.check_record,
        )
        self._answers: set[asyncio.Task] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await self.reader.run(stop)

    async def on_record(self, key: str, rec: dict[str, Any]) -> None:
        model = rec["model"]
        if model not in self.last_revision:
            return
        self.last_revision[model] = max(self.last_revision[model], rec["revision"])
        if rec["status"] != "desired":
            return
        latest = self.latest_desired.get(model)
        if latest is not None and rec["revision"] <= latest["revision"]:
            self.log.warning(
                "serving.stale_revision_ignored",
                model=model,
                revision=rec["revision"],
                latest=latest["revision"],
                actor=rec["actor"],
            )
            return
        self.latest_desired[model] = rec
        if self.reader.caught_up.is_set():
            await self.apply(rec)

    async def on_caught_up(self) -> None:
        for model in self.models:
            if model in self.latest_desired:
                await self.apply(self.latest_desired[model], "re-applied at start-up")
            else:
                await self._publish(
                    model,
                    self.last_revision[model],
                    "applied",
                    served_versions(model_versions(self.current, model)),
                    "deployed from the service's settings at start-up",
                )

    def desired_settings(self, rec: dict[str, Any]) -> InferenceSettings:
        """The service's settings with the record's versions for its model (per-version
        tunables kept for versions already served, the other models untouched); raises
        ``ValueError`` for a state it must refuse."""
        model = rec["model"]
        known = {v.version: v for v in model_versions(self.current, model)}
        versions = []
        for v in rec["versions"]:
            base = known.get(v["version"])
            update = {
                "weight": v["weight"],
                "model_path": Path(v["artifact_uri"]) if v["artifact_uri"] else None,
                "sha256": v["sha256"],
                "shadow": v["shadow"],
                "card_sha256": v.get("card_sha256"),
                "artifact_signature": v.get("artifact_signature"),
            }
            versions.append(
                base.model_copy(update=update) if base is not None else ModelVersion(version=v["version"], **update)
            )
        if not versions:
            raise ValueError("a serving state needs at least one version")
        # every version's artifact signature before anything is deployed: a refused
        # state changes nothing (the replicas check again, and the digest on the bytes)
        from services.inference.serveconfig import governance_args
        from services.inference.verify import ArtifactRefused, check_artifact_signature

        governance = governance_args(self.current)
        for v in versions:
            try:
                check_artifact_signature(model, v, governance)
            except ArtifactRefused as exc:
                raise ValueError(str(exc)) from None
        candidate = with_versions(self.current, model, tuple(versions))
        try:
            InferenceSettings.model_validate(candidate.model_dump())  # the same checks as at start-up
        except ValidationError as exc:
            raise ValueError(str(exc)) from exc
        return candidate

    def check_signed(self, rec: dict[str, Any]) -> str:
        """The name of the trusted key (role service or operator) that signed a desired
        state; :class:`~services.common.governance.Refused` when none did."""
        from services.common.governance import GovernanceGate, Trust, trust_path
        from services.common.signing import SignatureError

        try:
            gate = GovernanceGate(Trust(trust_path(self.current.governance)), check_replays=False)
        except SignatureError as exc:
            raise Refused("no_trust", str(exc)) from None
        return gate.check("serving-state", rec).name

    def check_record(self, key: str, rec: dict[str, Any]) -> None:
        """The state reader's check: a desired state of this model that no trusted key
        signed is dead-lettered with the reason (the GovernanceRecordRefused alert fires
        on it) and answered ``failed``; it never reaches :meth:`on_record`."""
        from services.common.runtime.decode import InvalidMessage

        if rec["model"] not in self.last_revision or rec["status"] != "desired":
            return
        try:
            self.check_signed(rec)
        except Refused as exc:
            self.metrics.inc("argus_governance_refused_total", topic=self.topic, reason=exc.kind)
            self.log.error(
                "serving.refused",
                model=rec["model"],
                revision=rec["revision"],
                actor=rec["actor"],
                error=str(exc)[:1000],
            )
            if self.reader.caught_up.is_set():  # the writer waits for an answer to its revision
                answer = asyncio.get_running_loop().create_task(
                    self._publish(
                        rec["model"],
                        rec["revision"],
                        "failed",
                        served_versions(model_versions(self.current, rec["model"])),
                        f"revision {rec['revision']} not applied: refused: {exc}",
                        rec.get("trigger_id"),
                    )
                )
                self._answers.add(answer)
                answer.add_done_callback(self._answers.discard)
            raise InvalidMessage(f"refused: {exc}", f"Refused.{exc.kind}") from None

    async def apply(self, rec: dict[str, Any], note: str = "") -> None:
        model, revision = rec["model"], rec["revision"]

        async def failed(reason: str) -> None:  # what is served stays as it was; the writer reads why
            self.log.error(
                "serving.apply_failed", model=model, revision=revision, actor=rec["actor"], error=reason[:1000]
            )
            await self._publish(
                model,
                revision,
                "failed",
                served_versions(model_versions(self.current, model)),
                f"revision {revision} not applied: {reason}",
                rec.get("trigger_id"),
            )

        try:
            self.check_signed(rec)  # who asked, before what was asked is even looked at
            wanted = self.desired_settings(rec)
            await asyncio.to_thread(self.deploy, wanted)
        except Refused as exc:
            await failed(f"refused: {exc}")
            return
        except (ValueError, RuntimeError, TimeoutError, OSError) as exc:
            await failed(f"{type(exc).__name__}: {exc}")
            return
        self.current = wanted
        self.applied_revision[model] = revision
        versions = model_versions(wanted, model)
        weights = ", ".join(f"{v.version}={v.weight:g}" for v in versions)
        self.log.info("serving.applied", model=model, revision=revision, actor=rec["actor"], weights=weights)
        await self._publish(
            model,
            revision,
            "applied",
            served_versions(versions),
            f"serve application running with weights {weights}" + (f" ({note})" if note else ""),
            rec.get("trigger_id"),
        )

    async def _publish(
        self,
        model: str,
        revision: int,
        status: str,
        versions: list[dict[str, Any]],
        comment: str,
        trigger_id: str | None = None,
    ) -> None:
        rec = state_record(model, revision, status, versions, self.actor, comment, trigger_id)
        await self.producer.send_and_wait(self.topic, self.codec.encode(rec), key=model.encode())
        self.metrics.inc("argus_messages_produced_total", topic=self.topic)
