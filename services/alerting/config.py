"""The alerting configuration: rules (what is wrong) and Alertmanager's routing tree,
receivers and inhibition rules (who hears about it, how often, and what is muted).

One YAML file, validated with pydantic; every error names the place in the file::

    rules:
      - name: HighErrorRate
        source: responses          # responses | feedback | drift | dead_letters | consumer_lag
        metric: error_rate         # see METRICS
        by: [model, model_version] # one alert per distinct value of these labels
        window: 60s
        op: ">"
        threshold: 0.05
        min_events: 20             # fewer events in the window: no verdict (no flapping on thin data)
        for: 0s                    # pending -> firing after the condition held this long
        severity: critical
        annotations: {summary: "error rate {value:.1%} on {model}", runbook_url: "https://..."}
    route:
      receiver: oncall
      group_by: [alertname, model]
      group_wait: 1s
      group_interval: 30s
      repeat_interval: 4h
      routes: [{matchers: ['severity="info"'], receiver: chat}]
    receivers:
      - name: oncall
        webhook_configs: [{url: "https://hooks.example/argus", secret: oncall}]
      - name: chat
        slack_configs: [{url: "https://hooks.slack.com/services/...", channel: "#ml-alerts"}]
    inhibit_rules:
      - source_matchers: ['alertname="InferenceDown"']
        target_matchers: ['alertname=~"HighLatency|Drift.*"']
        equal: [model]

Webhook secrets are named here and their values come from settings
(``ARGUS_ALERTING_WEBHOOK_SECRETS``), never from this file.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.configfile import ConfigError, load_yaml_config  # noqa: F401 (ConfigError is part of this API)
from services.common.durations import parse_duration
from services.common.labels import Matcher, MatcherError

# metrics each source can compute, and the labels its signals carry (what `by` and
# rule matchers may use)
METRICS: dict[str, tuple[str, ...]] = {
    "responses": (
        "error_rate",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "throughput",
        "throughput_change",
        "tokens_per_s",
        "tokens_change",
        "confidence_mean",
        "count",
        # guard rails (InferenceResponse v2; answers no rail ran on are not counted)
        "guard_block_rate",
        "harmful_output_rate",
        "guard_error_rate",
        "injection_attempts",
        # the answers' cost (InferenceResponse v2), summed in one-minute buckets: windows up to days
        "spend",
    ),
    "feedback": ("negative_feedback_rate", "count"),
    "drift": ("count", "max_statistic_ratio"),
    "dead_letters": ("count", "rate"),
    "consumer_lag": ("lag",),
}
SOURCE_LABELS: dict[str, tuple[str, ...]] = {
    "responses": ("model", "model_version", "tenant"),
    "feedback": ("model", "model_version", "tenant", "source"),
    "drift": ("model", "model_version", "feature", "detector", "drift_severity", "drift_status"),
    "dead_letters": ("original_topic", "service", "error_type", "consumer_group"),
    "consumer_lag": ("group",),  # total lag of the group over its topics
}
SEVERITIES = ("info", "warning", "critical", "page")


def _matchers(values: list[str]) -> tuple[Matcher, ...]:
    try:
        return tuple(Matcher.parse(v) for v in values)
    except MatcherError as exc:
        raise ValueError(str(exc)) from exc


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Rule(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The alertname label.")
    source: Literal["responses", "feedback", "drift", "dead_letters", "consumer_lag"]
    metric: str = "count"
    by: tuple[str, ...] = ()
    window: float = 60.0
    op: Literal[">", ">=", "<", "<="] = ">"
    threshold: float = 0.0
    min_events: int = Field(1, ge=0)
    for_: float = Field(0.0, alias="for")
    keep_firing_for: float = 0.0
    severity: Literal["info", "warning", "critical", "page"] = "warning"
    matchers: tuple[Matcher, ...] = ()
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("window", "for_", "keep_firing_for", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("matchers", mode="before")
    @classmethod
    def _parse_matchers(cls, v: Any) -> tuple[Matcher, ...]:
        return _matchers(list(v or []))

    @model_validator(mode="after")
    def _consistent(self) -> "Rule":
        if self.metric not in METRICS[self.source]:
            raise ValueError(
                f"metric {self.metric!r} is not available for source {self.source!r}; "
                f"choose one of {', '.join(METRICS[self.source])}"
            )
        known = SOURCE_LABELS[self.source]
        for name in (*self.by, *(m.name for m in self.matchers)):
            if name not in known:
                raise ValueError(f"label {name!r} does not exist on {self.source} signals; known: {', '.join(known)}")
        if self.window <= 0:
            raise ValueError("window must be positive")
        for key in ("alertname", "severity"):
            if key in self.labels:
                raise ValueError(f"labels may not set {key!r}: it comes from the rule's name/severity")
        fields = {"value", "threshold", "window", "rule", "severity", *known, *self.labels}
        for key, template in self.annotations.items():
            for _, field_name, _, _ in string.Formatter().parse(template):
                if field_name is not None and field_name.split(".")[0].split("[")[0] not in fields and field_name != "":
                    raise ValueError(
                        f"annotation {key!r} uses {{{field_name}}}; available: {', '.join(sorted(fields))}"
                    )
        return self

    def render(self, template: str, labels: dict[str, str], value: float | None) -> str:
        fields = {
            **{k: "" for k in SOURCE_LABELS[self.source]},
            **labels,
            "value": value if value is not None else float("nan"),
            "threshold": self.threshold,
            "window": self.window,
            "rule": self.name,
            "severity": self.severity,
        }
        try:
            return template.format(**fields)
        except (ValueError, TypeError, KeyError, IndexError):  # a format spec that does not fit the value
            return template


class WebhookConfig(_Strict):
    url: str = Field(pattern=r"^https?://")
    secret: str | None = Field(
        None, description="Name of a secret in settings.webhook_secrets; signs with HMAC-SHA256."
    )
    send_resolved: bool = True
    timeout: float = 5.0

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class SlackConfig(WebhookConfig):
    channel: str | None = None
    username: str = "argus"


class Receiver(_Strict):
    name: str
    webhook_configs: tuple[WebhookConfig, ...] = ()
    slack_configs: tuple[SlackConfig, ...] = ()


class Route(_Strict):
    receiver: str | None = None
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] | None = None
    group_wait: float | None = None
    group_interval: float | None = None
    repeat_interval: float | None = None
    continue_: bool = Field(False, alias="continue")
    routes: tuple["Route", ...] = ()

    @field_validator("group_wait", "group_interval", "repeat_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("matchers", mode="before")
    @classmethod
    def _parse_matchers(cls, v: Any) -> tuple[Matcher, ...]:
        return _matchers(list(v or []))


class InhibitRule(_Strict):
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()

    @field_validator("source_matchers", "target_matchers", mode="before")
    @classmethod
    def _parse_matchers(cls, v: Any) -> tuple[Matcher, ...]:
        return _matchers(list(v or []))


class AlertingConfig(_Strict):
    rules: tuple[Rule, ...]
    route: Route
    receivers: tuple[Receiver, ...]
    inhibit_rules: tuple[InhibitRule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> "AlertingConfig":
        names = [r.name for r in self.receivers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"receiver names must be unique: {', '.join(sorted(dupes))}")
        if self.route.receiver is None:
            raise ValueError("route: the root route needs a receiver")

        def walk(route: Route, path: str) -> None:
            if route.receiver is not None and route.receiver not in names:
                raise ValueError(f"{path}: receiver {route.receiver!r} is not defined in receivers")
            for i, child in enumerate(route.routes):
                walk(child, f"{path}.routes[{i}]")

        walk(self.route, "route")
        seen: set[tuple[str, str]] = set()
        for r in self.rules:
            key = (r.name, r.severity)
            if key in seen:
                raise ValueError(
                    f"rules: two rules named {r.name!r} with severity {r.severity!r} would share fingerprints"
                )
            seen.add(key)
        return self

    def secrets_needed(self) -> set[str]:
        return {c.secret for r in self.receivers for c in (*r.webhook_configs, *r.slack_configs) if c.secret}


def load_config(source: str | Path | dict[str, Any]) -> AlertingConfig:
    """Parse and validate a config file (or an already-loaded mapping)."""
    return load_yaml_config(source, AlertingConfig, "alerting configuration")
