"""Traffic changes through the inference service: a canary is a new version with a
share of the weights, promotion gives it all traffic and drains the old one, a
rollback drains the candidate. Each change is the inference application's declarative
Serve config applied to the running cluster (``services.inference.app.deploy``): a
weights-only change reconfigures the Router in place, a new version adds replicas
that load the artifact with its registered digest (a mismatch fails the deployment).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.inference.settings import InferenceSettings, ModelVersion


class ServeRollout:
    def __init__(self, base: InferenceSettings) -> None:
        self.base = base
        self.versions: tuple[ModelVersion, ...] = base.versions  # what is deployed now (as this service knows it)

    async def apply(self, versions: list[ModelVersion]) -> None:
        from services.inference.app import deploy

        settings = self.base.model_copy(update={"versions": tuple(versions)})
        InferenceSettings.model_validate(settings.model_dump())  # same checks as at start-up
        await asyncio.to_thread(deploy, settings)
        self.versions = tuple(versions)

    def live(self) -> list[ModelVersion]:
        return [v for v in self.versions if v.live_weight > 0]

    async def canary(self, version: str, artifact: str, sha256: str, weight: float) -> None:
        old = self.live()
        total = sum(v.weight for v in old) or 1.0
        scaled = [v.model_copy(update={"weight": v.weight / total * (100.0 - weight)}) for v in old]
        await self.apply(
            scaled + [ModelVersion(version=version, weight=weight, model_path=Path(artifact), sha256=sha256)]
        )

    async def promote(self, version: str) -> list[str]:
        """All traffic to ``version``; the others are drained (removed). Returns those."""
        drained = [v.version for v in self.versions if v.version != version]
        await self.apply([v.model_copy(update={"weight": 100.0}) for v in self.versions if v.version == version])
        return drained

    async def rollback(self, version: str) -> None:
        rest = [v for v in self.versions if v.version != version]
        total = sum(v.weight for v in rest if v.live_weight > 0) or 1.0
        await self.apply([v.model_copy(update={"weight": v.weight / total * 100.0}) for v in rest])
