"""Guard-rail policies per tenant (part of the inference settings, reloaded live through
the Router's ``user_config``).

Each rail has an action: ``off`` (does not run), ``flag`` (the answer is delivered, the
verdict records the finding), ``redact`` (the offending spans are replaced before the
model sees the prompt or the producer the answer), ``block`` (the producer gets a
refusal with ``finish_reason="content_filter"``). ``on_error`` says what a guard that
raises or overruns its time budget means: ``closed`` blocks, ``open`` lets the answer
through; either way the verdict names the rail and the reason.

Example (a tenant that blocks offensive answers and redacts personal data in them)::

    ARGUS_INFERENCE_GUARDRAILS='{"tenants": {"acme": {"output": {"offensive": "block", "pii": "redact"}}}}'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Action = Literal["off", "flag", "redact", "block"]


class InputRails(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    injection: Literal["off", "flag", "block"] = Field(
        default="off", description="Prompt injection / jailbreak attempts (an embedding per prompt: ~0.1 s of CPU)."
    )
    pii: Action = Field(default="off", description="Personal data in the prompt (redact: before the model sees it).")


class OutputRails(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    offensive: Action = Field(default="flag", description="Harmful or offensive language in the answer.")
    pii: Action = Field(default="flag", description="Personal data leaking into the answer.")
    deny: Action = Field(default="block", description="The policy's deny patterns in the answer.")


class RailPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input: InputRails = InputRails()
    output: OutputRails = OutputRails()
    deny_patterns: tuple[str, ...] = Field(
        default=(), max_length=256, description="RE2 patterns (linear time) an answer must not match."
    )
    on_error: Literal["open", "closed"] = "open"
    offensive_threshold: float = Field(default=0.5, gt=0, lt=1)
    injection_threshold: float = Field(default=0.0, ge=-1, le=1)
    input_budget_ms: float = Field(default=500.0, gt=0, description="Time the input rails may take together.")
    output_budget_ms: float = Field(default=50.0, gt=0, description="Time the output rails may take together.")
    refusal: str = Field(
        default="I can't help with that request.", max_length=2000, description="The answer a blocked request gets."
    )
    stream_hold_chars: int = Field(
        default=48,
        ge=0,
        le=4096,
        description="Streaming: the output rails run on the answer so far, and its last this many characters are "
        "held back until the rails have seen what follows them (a match that starts in released text and is "
        "longer than this ends the stream with content_filter; it can no longer be redacted).",
    )
    stream_check_chars: int = Field(
        default=16, ge=1, le=4096, description="Streaming: the output rails run again after this many new characters."
    )

    @field_validator("deny_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        import re2

        for p in patterns:
            try:
                re2.compile(p)
            except re2.error as exc:
                raise ValueError(f"deny pattern {p[:80]!r} is not valid RE2: {exc}") from None
        return patterns

    @property
    def uses_injection(self) -> bool:
        return self.input.injection != "off"

    @property
    def holds_stream(self) -> bool:
        """Whether a streamed answer is held back for the output rails: only when one of them
        can change or stop the text (``redact``/``block``, or any rail under ``on_error:
        closed``). Rails that only flag see the whole answer at its end, for the verdict."""
        o = self.output
        acting = [o.offensive, o.pii] + ([o.deny] if self.deny_patterns else [])
        if self.on_error == "closed":
            return any(a != "off" for a in acting)
        return any(a in ("redact", "block") for a in acting)


class GuardrailSettings(BaseModel):
    """The default policy and per-tenant ones (a tenant's replaces the default whole)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: RailPolicy = RailPolicy()
    tenants: dict[str, RailPolicy] = Field(default_factory=dict)

    def policy(self, tenant: str) -> RailPolicy:
        return self.tenants.get(tenant, self.default)

    @property
    def uses_injection(self) -> bool:
        return self.default.uses_injection or any(p.uses_injection for p in self.tenants.values())
