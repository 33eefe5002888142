"""Traffic management, as pure functions: weighted A/B and canary routing with sticky
assignment, plus shadow (mirror) versions.

A request's sticky key (tenant and user, or its request id when it has no user) is
hashed to a point in [0, 1); versions own consecutive slices of that interval in
proportion to their weights. The same user therefore stays on the same version while
the weights stay the same, and moving weight moves only the users in the slice that
changed hands. A version with weight 0 gets nothing: that is a rollback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


class NoServingVersion(RuntimeError):
    pass


def sticky_key(request: dict) -> str:
    user = request.get("user")
    return f"{request.get('tenant', '')}/{user}" if user else f"request/{request.get('request_id', '')}"


def unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class RoutePlan:
    primary: str
    shadows: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingTable:
    weights: dict[str, float]
    shadows: tuple[str, ...] = ()
    shadow_grace_s: float = 30.0
    _cuts: tuple[tuple[float, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_config(cls, config: dict) -> "RoutingTable":
        weights = {str(k): float(v) for k, v in (config.get("weights") or {}).items()}
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0: {weights}")
        live = [(v, w) for v, w in sorted(weights.items()) if w > 0]
        total = sum(w for _, w in live)
        cuts, acc = [], 0.0
        for version, w in live:
            acc += w / total
            cuts.append((acc, version))
        shadows = tuple(config.get("shadows") or ())
        return cls(weights, shadows, float(config.get("shadow_grace_s", 30.0)), tuple(cuts))

    def plan(self, key: str) -> RoutePlan:
        if not self._cuts:
            raise NoServingVersion("no model version has a weight above 0")
        point = unit_hash(key)
        primary = next((v for cut, v in self._cuts if point < cut), self._cuts[-1][1])
        return RoutePlan(primary, tuple(s for s in self.shadows if s != primary))
