"""Traffic changes as records: a canary is a new version with a share of the weights,
promotion gives it all traffic and drains the others, a rollback drains the candidate.

Each change is a ``desired`` :data:`serving-state <services.common.registry>` record
(revision one above the last one seen for the model) on ``argus.serving.state``; the
inference service applies it to its Serve application and answers with ``applied`` or
``failed`` for that revision (:mod:`services.inference.serving`). This module never
talks to Ray: what is live is what the inference service last acknowledged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

TOPIC = "serving-state"


class RolloutFailed(RuntimeError):
    """The inference service refused or failed the change, or did not answer in time."""


class ServingRollout:
    """Writes desired serving states of one service's models and waits for their answer.

    ``observe(record)`` is fed every record of ``argus.serving.state`` (the retraining
    service's state reader does it); ``canary``/``promote``/``rollback`` publish and wait.
    """

    def __init__(self, kafka: Any, producer: Any, actor: str, timeout_s: float = 300.0, signer: Any = None) -> None:
        from services.common.registry import get_codec

        self.topic = kafka.topic(TOPIC)
        self.codec = get_codec(TOPIC)
        self.producer = producer
        self.actor = actor
        self.timeout_s = timeout_s
        self.signer = signer  # governance.Signer: the inference service applies only signed desired states
        self.revisions: dict[str, int] = {}  # model -> highest revision seen
        self.live: dict[str, list[dict[str, Any]]] = {}  # model -> versions the inference service last applied
        self._waiting: dict[tuple[str, int], asyncio.Future] = {}

    # -- following the topic -------------------------------------------------------
    def observe(self, rec: dict[str, Any]) -> None:
        model, revision = rec["model"], rec["revision"]
        self.revisions[model] = max(self.revisions.get(model, 0), revision)
        if rec["status"] == "desired":
            return
        if rec["status"] == "applied":
            self.live[model] = [dict(v) for v in rec["versions"]]
        fut = self._waiting.get((model, revision))
        if fut is not None and not fut.done():
            fut.set_result(rec)

    # -- changes ------------------------------------------------------------------
    def serving(self, model: str) -> list[dict[str, Any]]:
        if model not in self.live:
            raise RolloutFailed(f"no serving state of {model} on {self.topic}: is the inference service running?")
        return [dict(v) for v in self.live[model]]

    async def apply(self, model: str, versions: list[dict[str, Any]], comment: str, trigger_id: str | None) -> None:
        revision = self.revisions.get(model, 0) + 1
        self.revisions[model] = revision
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting[(model, revision)] = fut
        rec = {
            "event_id": str(uuid.uuid4()),
            "model": model,
            "revision": revision,
            "status": "desired",
            "versions": versions,
            "trigger_id": trigger_id,
            "actor": self.actor,
            "comment": comment,
            "occurred_at": int(time.time() * 1000),
            "signature": None,
        }
        if self.signer is not None:  # signed as the topic will carry it (every field of the contract)
            rec = self.signer.sign_record(
                self.codec.name, self.codec.version, self.codec.decode_plain(self.codec.encode(rec))
            )
        try:
            await self.producer.send_and_wait(self.topic, self.codec.encode(rec), key=model.encode())
            try:
                answer = await asyncio.wait_for(fut, self.timeout_s)
            except asyncio.TimeoutError:
                raise RolloutFailed(
                    f"revision {revision} of {model}: no answer from the inference service within {self.timeout_s:.0f}s"
                ) from None
        finally:
            self._waiting.pop((model, revision), None)
        if answer["status"] != "applied":
            raise RolloutFailed(answer["comment"] or f"revision {revision} of {model} failed")

    @staticmethod
    def _live(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [v for v in versions if v["weight"] > 0 and not v.get("shadow")]

    async def canary(
        self,
        model: str,
        version: str,
        artifact: str,
        sha256: str,
        weight: float,
        trigger_id: str | None = None,
        card_sha256: str | None = None,
        artifact_signature: dict[str, Any] | None = None,
    ) -> None:
        current = self.serving(model)
        old = self._live(current)
        total = sum(v["weight"] for v in old) or 1.0
        scaled = [v | {"weight": v["weight"] / total * (100.0 - weight)} for v in old]
        shadows = [v for v in current if v.get("shadow")]
        new = {
            "version": version,
            "weight": weight,
            "artifact_uri": artifact,
            "sha256": sha256,
            "shadow": False,
            "card_sha256": card_sha256,  # the replica verifies the pipeline's signature over these
            "artifact_signature": artifact_signature,
        }
        await self.apply(model, scaled + shadows + [new], f"canary: {version} takes {weight:g}% of traffic", trigger_id)

    async def promote(self, model: str, version: str, trigger_id: str | None = None) -> list[str]:
        """All traffic to ``version``; the others are drained (removed). Returns those."""
        current = self.serving(model)
        drained = [v["version"] for v in current if v["version"] != version]
        keep = [v | {"weight": 100.0} for v in current if v["version"] == version]
        if not keep:
            raise RolloutFailed(f"{version} of {model} is not served: nothing to promote")
        await self.apply(model, keep, f"promote {version}; drain {', '.join(drained) or 'none'}", trigger_id)
        return drained

    async def rollback(
        self, model: str, version: str, trigger_id: str | None = None, comment: str | None = None
    ) -> None:
        """Drain ``version``; the other live versions share its weight in proportion."""
        rest = [v for v in self.serving(model) if v["version"] != version]
        if not self._live(rest):
            raise RolloutFailed(f"draining {version} of {model} would leave no version taking traffic")
        total = sum(v["weight"] for v in self._live(rest)) or 1.0
        await self.apply(
            model,
            [v if v.get("shadow") else v | {"weight": v["weight"] / total * 100.0} for v in rest],
            comment or f"roll back {version}",
            trigger_id,
        )
