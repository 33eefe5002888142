"""The guard rails of the inference path: input rails before the model, output rails
before the producer sees the answer, one verdict per response.

:class:`GuardRails` runs in the Router (the ingress every request passes, from the Kafka
bridge and from the HTTP route alike). Rails of a phase share the phase's time budget;
each guard runs in a worker thread so a slow one never stalls the Router's event loop,
and a guard that raises or overruns gets the policy's ``on_error``: ``closed`` blocks,
``open`` lets the text through; the verdict says which and why.

The verdict (``guardrails`` of an answer; JSON in ``InferenceResponse.guard_verdict``)::

    {"version": 1, "action": "block", "on_error": "open", "elapsed_ms": 0.41,
     "rails": [{"rail": "output.offensive", "guard": "offensive-language",
                "guard_version": "alt-profanity-check==1.9.1", "guard_digest": "sha256:…",
                "score": 0.998, "threshold": 0.5, "triggered": true, "action": "block",
                "findings": {}, "elapsed_ms": 0.08, "error": null}, …]}

``action`` is the strongest action any rail took (block > redact > flag > allow).
Verdicts never carry the text a rail found (only kinds and counts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from services.common.pii import ScreenTimeout, find_pii
from services.inference.guardrails.injection import InjectionGuard
from services.inference.guardrails.offensive import GuardInfo, OffensiveLanguageGuard
from services.inference.guardrails.policy import GuardrailSettings, RailPolicy

_SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
VERDICT_VERSION = 1
PII_GUARD = GuardInfo(name="pii-detectors", version="argus-pii-1", digest="")
DENY_GUARD = GuardInfo(name="deny-patterns", version="re2", digest="")


@dataclass
class Checked:
    """What a phase's rails did: the (possibly redacted) texts, the rail results, and
    whether the request is blocked."""

    texts: list[str]
    rails: list[dict[str, Any]] = field(default_factory=list)
    blocked: bool = False

    def take(self, result: dict[str, Any], redacted: list[str] | None) -> None:
        """Record one rail's result; its redactions become the texts the next rail sees."""
        if result["action"] == "redact" and redacted is not None:
            self.texts = redacted
        self.rails.append(result)


def verdict(rails: list[dict[str, Any]], policy: RailPolicy) -> dict[str, Any]:
    action = max((r["action"] for r in rails), key=_SEVERITY.__getitem__, default="allow")
    return {
        "version": VERDICT_VERSION,
        "action": action,
        "on_error": policy.on_error,
        "elapsed_ms": round(sum(r["elapsed_ms"] for r in rails), 3),
        "rails": rails,
    }


def _splice(text: str, spans: list[tuple[int, int]], label: str) -> str:
    out, pos = [], 0
    for s, e in sorted(spans):
        if s < pos:
            continue
        out.append(text[pos:s])
        out.append(label)
        pos = e
    out.append(text[pos:])
    return "".join(out)


class GuardRails:
    """The rails of one Router replica. ``injection_loader`` builds the injection guard
    (the packaged SmolLM2 embedder by default); it is loaded in the background the first
    time a policy turns the rail on, and until then the rail answers with its error."""

    def __init__(
        self,
        settings: GuardrailSettings | None = None,
        injection_loader: Callable[[], InjectionGuard] = InjectionGuard.from_packaged_model,
    ) -> None:
        self.offensive = OffensiveLanguageGuard()
        self._injection_loader = injection_loader
        self._injection: concurrent.futures.Future[InjectionGuard] | None = None
        self._lock = threading.Lock()
        self._deny: dict[tuple[str, ...], Any] = {}
        self._remote: tuple[Callable[[str, str], Awaitable[dict[str, Any]]], GuardInfo] | None = None
        self.settings = GuardrailSettings()
        self.configure(settings or GuardrailSettings())

    def configure(self, settings: GuardrailSettings) -> None:
        import re2

        self._deny = {
            p.deny_patterns: [re2.compile(x) for x in p.deny_patterns]
            for p in (settings.default, *settings.tenants.values())
        }
        self.settings = settings
        if settings.uses_injection:
            self._start_injection()

    def _start_injection(self) -> None:
        with self._lock:
            if self._injection is None:
                self._injection = concurrent.futures.Future()
                fut = self._injection

                def load() -> None:
                    try:
                        fut.set_result(self._injection_loader())
                    except BaseException as exc:  # the rail reports it on every call (fail mode applies)
                        fut.set_exception(exc)

                threading.Thread(target=load, name="injection-guard-load", daemon=True).start()

    def use_remote_guard(self, classify: Callable[[str, str], Awaitable[dict[str, Any]]], info: GuardInfo) -> None:
        """Run the output.offensive rail through a served classifier (Llama Guard on GPU,
        :mod:`services.inference.guardrails.llama_guard`): ``classify(prompt, answer)``
        returns ``{"unsafe", "categories", "score"}``. It finds no spans: ``redact``
        replaces the whole answer."""
        self._remote = (classify, info)

    def policy(self, tenant: str) -> RailPolicy:
        return self.settings.policy(tenant)

    # -- one rail ------------------------------------------------------------------
    async def _rail(
        self,
        rail: str,
        info: GuardInfo | None,
        setting: str,
        run: Callable[[], tuple[float | None, float | None, bool, dict[str, int], Any]],
        policy: RailPolicy,
        deadline: float,
    ) -> tuple[dict[str, Any], Any]:
        """Run one guard in a thread within what is left of the phase's budget. ``run``
        returns (score, threshold, triggered, findings, payload)."""
        started = time.monotonic()
        result: dict[str, Any] = {
            "rail": rail,
            "guard": info.name if info else "",
            "guard_version": info.version if info else "",
            "guard_digest": info.digest if info else "",
            "score": None,
            "threshold": None,
            "triggered": False,
            "action": "allow",
            "findings": {},
            "elapsed_ms": 0.0,
            "error": None,
        }
        payload = None
        try:
            remaining = deadline - started
            if remaining <= 0:
                raise asyncio.TimeoutError
            work = run() if asyncio.iscoroutinefunction(run) else asyncio.to_thread(run)
            score, threshold, triggered, findings, payload = await asyncio.wait_for(work, timeout=remaining)
            result.update(score=score, threshold=threshold, triggered=triggered, findings=findings)
            if triggered:
                result["action"] = setting
        except (asyncio.TimeoutError, ScreenTimeout):
            result["error"] = "timeout: the phase's time budget was spent"
            result["action"] = "block" if policy.on_error == "closed" else "allow"
        except Exception as exc:  # a failing guard is the policy's on_error, never a failed request
            result["error"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            result["action"] = "block" if policy.on_error == "closed" else "allow"
        result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
        return result, payload

    # -- input ---------------------------------------------------------------------
    async def check_input(self, messages: list[dict[str, Any]], policy: RailPolicy) -> Checked:
        """The input rails over a request's message contents."""
        texts = [str(m.get("content") or "") for m in messages]
        checked = Checked(list(texts))
        rails = policy.input
        deadline = time.monotonic() + policy.input_budget_ms / 1000
        if rails.injection != "off":
            guard_future = self._injection
            info = None
            if guard_future is not None and guard_future.done() and guard_future.exception() is None:
                info = guard_future.result().info
            prompt = "\n".join(t for t, m in zip(texts, messages) if m.get("role") != "assistant")

            def injection() -> tuple[float, float, bool, dict[str, int], None]:
                if guard_future is None:
                    raise RuntimeError("the injection guard is not configured")
                guard = guard_future.result(timeout=max(0.0, deadline - time.monotonic()))
                score = guard.score(prompt)
                return score, policy.injection_threshold, score > policy.injection_threshold, {}, None

            result, _ = await self._rail("input.injection", info, rails.injection, injection, policy, deadline)
            if info is None and guard_future is not None and guard_future.done() and guard_future.exception() is None:
                g = guard_future.result().info
                result.update(guard=g.name, guard_version=g.version, guard_digest=g.digest)
            checked.rails.append(result)
        if rails.pii != "off":
            result, redacted = await self._rail(
                "input.pii", PII_GUARD, rails.pii, lambda: self._pii(checked.texts, deadline), policy, deadline
            )
            checked.take(result, redacted)
        checked.blocked = any(r["action"] == "block" for r in checked.rails)
        return checked

    # -- output --------------------------------------------------------------------
    async def check_output(self, text: str, policy: RailPolicy, prompt: str = "") -> Checked:
        """The output rails over an answer (deny patterns, personal data, offensive
        language, in that order; each sees the previous one's redactions)."""
        checked = Checked([text])
        rails = policy.output
        deadline = time.monotonic() + policy.output_budget_ms / 1000
        deny = self._deny.get(policy.deny_patterns) or []
        if rails.deny != "off" and deny:

            def deny_rail() -> tuple[None, None, bool, dict[str, int], list[str]]:
                t = checked.texts[0]
                spans = [m.span() for p in deny for m in p.finditer(t)]
                return None, None, bool(spans), {"DENY": len(spans)} if spans else {}, [_splice(t, spans, "[DENIED]")]

            result, redacted = await self._rail("output.deny", DENY_GUARD, rails.deny, deny_rail, policy, deadline)
            checked.take(result, redacted)
        if rails.pii != "off":
            result, redacted = await self._rail(
                "output.pii", PII_GUARD, rails.pii, lambda: self._pii(checked.texts, deadline), policy, deadline
            )
            checked.take(result, redacted)
        if rails.offensive != "off" and self._remote is not None:
            classify, info = self._remote
            threshold = policy.offensive_threshold

            async def remote() -> tuple[float, float, bool, dict[str, int], list[str]]:
                v = await classify(prompt, checked.texts[0])
                score = float(v["score"])
                findings = {str(c): 1 for c in v.get("categories") or []}
                return score, threshold, score >= threshold, findings, ["[OFFENSIVE]"]

            result, redacted = await self._rail("output.offensive", info, rails.offensive, remote, policy, deadline)
            checked.take(result, redacted)
        elif rails.offensive != "off":
            guard, threshold = self.offensive, policy.offensive_threshold

            def offensive() -> tuple[float, float, bool, dict[str, int], list[str]]:
                t = checked.texts[0]
                score = guard.score(t)
                redacted = t
                if rails.offensive == "redact":
                    spans = guard.offending_spans(t, threshold)
                    redacted = _splice(t, spans, "[OFFENSIVE]") if spans else t
                    # a sentence can offend where the whole answer, diluted, scores lower
                    return score, threshold, bool(spans), {}, [redacted]
                return score, threshold, score >= threshold, {}, [redacted]

            result, redacted = await self._rail(
                "output.offensive", guard.info, rails.offensive, offensive, policy, deadline
            )
            checked.take(result, redacted)
        checked.blocked = any(r["action"] == "block" for r in checked.rails)
        return checked

    @staticmethod
    def _pii(texts: list[str], deadline: float) -> tuple[None, None, bool, dict[str, int], list[str]]:
        counts: dict[str, int] = {}
        out = []
        for t in texts:
            findings = find_pii(t, budget_s=max(0.0, deadline - time.monotonic()))
            for f in findings:
                counts[f.kind] = counts.get(f.kind, 0) + 1
            out.append(_redact(t, findings))
        return None, None, bool(counts), counts, out


def _redact(text: str, findings: list[Any]) -> str:
    out, pos = [], 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(f"[{f.kind}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
