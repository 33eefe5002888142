"""Retraining policies and the rollout gate, from one YAML file, validated::

policies:
  - name: prompt-drift          # drift events -> a trigger
    kind: drift
    model: "*"                  # a model name, or * for any
    features: []                # empty: any feature
    min_severity: warning
    min_events: 2               # minimum evidence in one episode
    sustained_for: 0s           # first to last evidence at least this long
    cooldown: 6h                # one trigger per (policy, model, version) per cooldown
  - {name: drift-alert, kind: alert, matchers: ['alertname="DriftDetected"'], cooldown: 6h}
  - {name: weekly, kind: schedule, model: smollm2-135m-instruct, model_version: v1, interval: 7d}
  - name: negative-feedback     # a ClickHouse query over feedback or quality
    kind: metric
    model: smollm2-135m-instruct
    model_version: v1
    query: "SELECT countIf(score = 0) / greatest(count(), 1) FROM {db}.feedback WHERE created_at >= now() - INTERVAL 1 DAY"
    op: ">"
    threshold: 0.3
    every: 10m
dataset: {window: 7d, filter: "status = 'ok'"}
dispatch: {webhook: {url: "https://pipelines.example/argus", secret: pipeline}}   # optional; the jobs
                                # are also the `dispatched` records on argus.retraining.triggers
validation: {holdout_size: 20, max_tokens: 16, max_error_rate: 0.0, max_empty_rate: 0.2, min_confidence_delta: -0.5}
canary: {weight: 10, observe_for: 10m}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.configfile import load_yaml_config
from services.common.durations import parse_duration
from services.common.labels import Matcher, MatcherError

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Policy(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: Literal["drift", "fairness", "alert", "schedule", "metric"]
    model: str = "*"
    model_version: str = "*"
    cooldown: float = 6 * 3600.0
    # drift, and fairness (a disparity between segments: docs/fairness.md; model_version "*")
    features: tuple[str, ...] = ()
    min_severity: Literal["info", "warning", "critical"] = "warning"
    min_events: int = Field(1, ge=1)
    sustained_for: float = 0.0
    # alert
    matchers: tuple[Matcher, ...] = ()
    # schedule
    interval: float | None = None
    # metric
    query: str | None = None
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float | None = None
    every: float = 600.0

    @field_validator("cooldown", "sustained_for", "interval", "every", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("matchers", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> tuple[Matcher, ...]:
        try:
            return tuple(Matcher.parse(m) for m in (v or []))
        except MatcherError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _fields_for_kind(self) -> "Policy":
        if self.kind == "alert" and not self.matchers:
            raise ValueError("an alert policy needs matchers (which alerts count as evidence)")
        if self.kind == "schedule" and (not self.interval or self.model == "*" or self.model_version == "*"):
            raise ValueError("a schedule policy needs an interval and a concrete model and model_version")
        if self.kind == "metric":
            if not self.query or self.threshold is None or self.model == "*" or self.model_version == "*":
                raise ValueError("a metric policy needs a query, a threshold and a concrete model and model_version")
            if not self.query.lstrip().upper().startswith("SELECT"):
                raise ValueError("a metric policy's query must be a SELECT returning one number")
        return self

    def covers(self, model: str, version: str) -> bool:
        return self.model in ("*", model) and self.model_version in ("*", version)


class DatasetSpec(_Strict):
    window: float = 7 * 86400.0
    filter: str = "status = 'ok'"

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


class Webhook(_Strict):
    url: str = Field(pattern=r"^https?://")
    secret: str | None = None


class Dispatch(_Strict):
    webhook: Webhook | None = None


class Validation(_Strict):
    holdout_size: int = Field(20, ge=1)
    max_tokens: int = 16
    max_error_rate: float = 0.0
    max_empty_rate: float = 0.2
    min_confidence_delta: float = -0.5  # candidate mean logprob minus the active version's, at least this


class Canary(_Strict):
    weight: float = Field(10.0, gt=0, lt=100)
    observe_for: float = 600.0

    @field_validator("observe_for", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


class RetrainingConfig(_Strict):
    policies: tuple[Policy, ...]
    dataset: DatasetSpec = DatasetSpec()
    dispatch: Dispatch = Dispatch()
    validation: Validation = Validation()
    canary: Canary = Canary()

    @model_validator(mode="after")
    def _unique(self) -> "RetrainingConfig":
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must be unique: {names}")
        return self


def load_config(source: str | Path | dict[str, Any]) -> RetrainingConfig:
    return load_yaml_config(source, RetrainingConfig, "retraining configuration")
