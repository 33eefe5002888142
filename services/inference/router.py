"""The ingress deployment of the inference application.

``Router`` routes each request to the model it names (several models may be served,
each with its own versions; an unknown one is ``model_not_found``), then by weight with
sticky assignment among that model's versions, mirrors it to shadow versions, and serves ``POST /v1/chat/completions`` (OpenAI-compatible) and
``GET /v1/models``. Both need an API key (``Authorization: Bearer argus_…``, see
:mod:`services.common.api_keys`): the key decides the tenant (whatever the body says) and
its rate (429 with ``Retry-After`` above it); without a configured key file every call is
refused. Every HTTP call is on Kafka like a producer's (:mod:`services.inference.journal`):
its request and its answer are published, and acknowledged, before the client gets the
answer. ``stream: true`` answers with server-sent events in OpenAI's chunk format; the
output rails run over the answer as it grows and hold back its tail
(``stream_hold_chars``) until they have seen what follows. Its ``user_config`` is the routing table: redeploying with new
weights calls ``reconfigure`` on the running replicas, so a rollback (weight 0) takes
effect with no restart and no dropped request. The CPU builder
(:mod:`services.inference.app`) and the GPU builder (:mod:`services.inference.gpu`)
both put it in front of their model deployments.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import metrics as serve_metrics
from ray.serve.handle import DeploymentHandle

from services.common.api_keys import ApiKey, KeyStore, RateLimiter
from services.common.logging import get_logger
from services.inference.guardrails.offensive import GuardInfo
from services.inference.guardrails.policy import GuardrailSettings, RailPolicy
from services.inference.guardrails.rails import GuardRails, verdict
from services.inference.journal import HttpJournal, JournalUnavailable, http_request_record
from services.inference.responses import answer_cost, answer_record
from services.inference.routing import NoServingVersion, RoutingTable, sticky_key
from services.inference.settings import Price

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="argus"'}


async def _awaited(resp: Any) -> Any:
    """A DeploymentResponse as a coroutine (for asyncio.wait_for)."""
    return await resp


api = FastAPI(title="Argus inference", description="OpenAI-compatible chat completions over the Argus router")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


@api.exception_handler(HTTPException)
async def _openai_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Errors in OpenAI's shape (``{"error": {"message", "type", "code"}}``), which its
    client libraries parse; headers (``WWW-Authenticate``, ``Retry-After``) kept."""
    detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
    body = {
        "error": {
            "message": detail.get("message", ""),
            "type": _ERROR_TYPES.get(exc.status_code, "server_error" if exc.status_code >= 500 else "api_error"),
            "code": detail.get("code"),
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(max_length=32)
    content: str


class ChatCompletionBody(BaseModel):
    """What the route reads of an OpenAI chat-completion body (other fields are ignored);
    a value of the wrong type or out of range is a 400, never a failed generation."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1024)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def _body_error(exc: ValidationError) -> str:
    """The validation errors without the values (a message never echoes the caller's text)."""
    parts = [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in exc.errors(include_input=False)[:5]]
    return "invalid request body: " + "; ".join(parts)


@dataclass
class Admitted:
    """A request its input rails let through, with the model and version it goes to."""

    model: str
    plan: Any
    policy: RailPolicy
    request: dict[str, Any]  # the messages as the model sees them (redacted where a rail redacted)
    rails: list[dict[str, Any]]  # the input rails' results
    started: float


def _sse(obj: Any) -> str:
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    i, o = int(answer.get("input_tokens") or 0), int(answer.get("output_tokens") or 0)
    return {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}


def _last_user(request: dict[str, Any]) -> str:
    return str(next((m["content"] for m in reversed(request["messages"]) if m.get("role") == "user"), ""))


@serve.ingress(api)
class Router:
    def __init__(
        self,
        model_name: str,
        guard: DeploymentHandle | None = None,
        guard_info: dict[str, str] | None = None,
    ) -> None:
        """The versions it serves come with ``reconfigure`` (``served``: where each model
        version's application is, one per version, called by name), which Serve calls
        with the ``user_config`` before the first request."""
        self.model_name = model_name
        # every model served here -> its versions' handles and routing table
        self.served: dict[str, dict[str, DeploymentHandle]] = {}
        self._where: dict[tuple[str, str], tuple[str, str]] = {}  # (model, version) -> (application, deployment)
        self.tables: dict[str, RoutingTable] = {}
        self.table: RoutingTable | None = None
        self.reloads = 0
        self.keys: KeyStore | None = None  # no key file: the HTTP routes refuse every call
        self.rate_per_minute = 60
        self.limiter = RateLimiter()
        self.log = get_logger("argus.inference.http")
        # on Ray's metrics endpoint with Serve's own (deployment, replica tags added by Serve)
        self.journal_failures = serve_metrics.Counter(
            "argus_http_journal_failures",
            description="HTTP calls answered 503 (or a stream ended with an error) because their request or answer "
            "was not acknowledged by the broker.",
        )
        self.prices: dict[str, Price] = {}
        self.journal: HttpJournal | None = None  # the HTTP route's producer; without one it answers 503
        self._journal_config: dict[str, Any] | None = None
        self._closing: set[asyncio.Task] = set()
        self.rails = GuardRails()  # the default policy until reconfigure brings the configured ones
        if guard is not None:  # Llama Guard on GPU nodes takes the output.offensive rail
            self.rails.use_remote_guard(
                lambda prompt, answer: guard.classify.remote(prompt, answer), GuardInfo(**(guard_info or {}))
            )

    def reconfigure(self, config: dict[str, Any]) -> None:
        http = config.get("http") or {}
        keys_file = http.get("api_keys_file")
        self.keys = KeyStore(keys_file) if keys_file else None
        self.rate_per_minute = int(http.get("rate_per_minute") or 60)
        guardrails = GuardrailSettings.model_validate(config.get("guardrails") or {})
        prices = {k: Price.model_validate(v) for k, v in (config.get("prices") or {}).items()}
        served = self._served(config.get("served"))
        table = RoutingTable.from_config(config)
        tables = {self.model_name: table}
        for model, routing in (config.get("models") or {}).items():
            if model not in served:
                raise ValueError(f"routing names a model that is not deployed: {model[:200]!r}")
            tables[model] = RoutingTable.from_config({**routing, "shadow_grace_s": table.shadow_grace_s})
        for model, t in tables.items():
            unknown = (set(t.weights) | set(t.shadows)) - set(served.get(model, {}))
            if unknown:
                raise ValueError(f"routing of {model} names versions that are not deployed: {sorted(unknown)}")
        self.served = served
        self.table = table
        self.tables = {m: t for m, t in {**self.tables, **tables}.items() if m in served}
        self.rails.configure(guardrails)
        self.prices = prices
        journal = config.get("journal")
        if journal != self._journal_config:
            old, self.journal = self.journal, HttpJournal(journal) if journal else None
            self._journal_config = journal
            if old is not None:  # reconfigure is not a coroutine: close the old producer on the loop
                try:
                    self._in_background(old.close())
                except RuntimeError:
                    pass  # no loop yet: the old producer never started
        self.reloads += 1

    def _served(self, where: Any) -> dict[str, dict[str, DeploymentHandle]]:
        """The handles of the versions ``where`` places ({model: {version: [application,
        deployment]}}, from :meth:`InferenceSettings.routing_config`). A handle is made
        once per place."""
        if not isinstance(where, dict):
            raise ValueError("the routing config names no served versions (served)")
        out: dict[str, dict[str, DeploymentHandle]] = {}
        for model, versions in where.items():
            out[model] = {}
            for version, (app, deployment) in versions.items():
                known = self.served.get(model, {}).get(version)
                if known is None or self._where.get((model, version)) != (app, deployment):
                    known = serve.get_deployment_handle(deployment, app_name=app)
                    self._where[(model, version)] = (app, deployment)
                out[model][version] = known
        return out

    def routing(self) -> dict[str, Any]:
        return {
            "weights": self.table.weights,
            "shadows": list(self.table.shadows),
            "reloads": self.reloads,
            "models": {m: {"weights": t.weights, "shadows": list(t.shadows)} for m, t in self.tables.items()},
        }

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one InferenceRequest (as a dict) through the tenant's guard rails.
        Returns the primary answer (with its ``guardrails`` verdict) and the shadow
        answers; errors come back as values, never as silence."""
        admitted = await self._admit(request)
        if isinstance(admitted, dict):
            return {"primary": admitted, "shadows": []}
        out = await self._generate(admitted)
        out["primary"] = await self._finish(admitted, out["primary"])
        return out

    async def _admit(self, request: dict[str, Any]) -> Admitted | dict[str, Any]:
        """The request routed and through its input rails, or the final answer it gets
        without the model: an error (``model_not_found``, no serving version) or the
        refusal of an input rail that blocked."""
        model = str(request.get("model") or self.model_name)
        if model not in self.served:  # never another model's answer under the name asked for
            return {
                "error_type": "model_not_found",
                "error_message": f"model {model[:200]!r} is not served here; served: {', '.join(sorted(self.served))}",
                "version": "none",
            }
        try:
            plan = self.tables[model].plan(sticky_key(request))
        except NoServingVersion as exc:
            return {"error_type": "NoServingVersion", "error_message": str(exc), "version": "none"}
        policy = self.rails.policy(str(request.get("tenant") or ""))
        started = time.monotonic()
        checked_in = await self.rails.check_input(request["messages"], policy)
        if checked_in.blocked:  # the model never sees it
            return self._refusal(plan.primary, policy, checked_in.rails, started)
        if checked_in.texts != [str(m.get("content") or "") for m in request["messages"]]:
            request = {
                **request,
                "messages": [{**m, "content": t} for m, t in zip(request["messages"], checked_in.texts)],
            }
        return Admitted(model, plan, policy, request, list(checked_in.rails), started)

    async def _finish(self, admitted: Admitted, primary: dict[str, Any]) -> dict[str, Any]:
        """The answer through the output rails, with its verdict and cost."""
        rails = list(admitted.rails)
        if "error_type" not in primary:
            checked_out = await self.rails.check_output(
                primary["text"], admitted.policy, prompt=_last_user(admitted.request)
            )
            rails += checked_out.rails
            if checked_out.blocked:
                primary = {**primary, "text": admitted.policy.refusal, "finish_reason": "content_filter"}
            else:
                primary = {**primary, "text": checked_out.texts[0]}
        return {
            **primary,
            "guardrails": verdict(rails, admitted.policy),
            "cost": self.cost(admitted.request, primary),
        }

    def cost(self, request: dict[str, Any], answer: dict[str, Any]) -> float | None:
        return answer_cost(self.prices, str(request.get("model") or self.model_name), answer)

    def _refusal(self, version: str, policy: Any, rails: list[dict[str, Any]], started: float) -> dict[str, Any]:
        """The answer to a request its input rails blocked: the policy's refusal, no tokens."""
        return {
            "text": policy.refusal,
            "finish_reason": "content_filter",
            "input_tokens": 0,
            "output_tokens": 0,
            "time_to_first_token_ms": None,
            "latency_ms": (time.monotonic() - started) * 1000,
            "mean_logprob": None,
            "version": version,
            "replica": None,
            "guardrails": verdict(rails, policy),
        }

    async def _generate(self, admitted: Admitted) -> dict[str, Any]:
        """The primary answer and the shadow answers of the admitted request's plan (no
        rails: shadow answers are logged, never returned to anyone)."""
        plan, request, handles = admitted.plan, admitted.request, self.served[admitted.model]
        primary = handles[plan.primary].generate.remote(request)
        shadows = {v: handles[v].generate.remote(request) for v in plan.shadows}
        try:
            result = await primary
        except Exception as exc:  # a replica died or Serve refused: the caller gets an error response
            result = {"error_type": type(exc).__name__, "error_message": str(exc)[:2000], "version": plan.primary}
        return {"primary": result, "shadows": await self._shadows(shadows)}

    async def _shadows(self, shadows: dict[str, Any]) -> list[dict[str, Any]]:
        """The shadow answers, each waited for at most the grace period after the primary."""
        shadow_results = []
        grace = self.table.shadow_grace_s
        for version, resp in shadows.items():
            started = time.monotonic()
            try:
                shadow_results.append(await asyncio.wait_for(_awaited(resp), timeout=grace))
            except asyncio.TimeoutError:
                resp.cancel()
                shadow_results.append(
                    {
                        "error_type": "ShadowTimeout",
                        "version": version,
                        "error_message": f"shadow answer trailed the primary by more than {grace}s",
                    }
                )
            except Exception as exc:  # shadow failures are reported, never affect the primary
                shadow_results.append(
                    {
                        "error_type": type(exc).__name__,
                        "error_message": str(exc)[:2000],
                        "version": version,
                        "latency_ms": (time.monotonic() - started) * 1000,
                    }
                )
        return shadow_results

    def _authenticate(self, authorization: str | None) -> ApiKey:
        """The caller's key, or the HTTP error to answer (401 without a valid, unrevoked
        key; 429 with Retry-After over the key's rate)."""
        scheme, _, token = (authorization or "").partition(" ")
        key = self.keys.verify(token.strip()) if self.keys is not None and scheme.lower() == "bearer" else None
        if key is None:
            raise HTTPException(
                status_code=401,
                detail={
                    "message": "a valid API key is required (Authorization: Bearer ...)",
                    "code": "invalid_api_key",
                },
                headers=_UNAUTHORIZED,
            )
        wait = self.limiter.take(key.key_id, key.rate_per_minute or self.rate_per_minute)
        if wait is not None:
            raise HTTPException(
                status_code=429,
                detail={"message": "rate limit exceeded for this API key", "code": "rate_limit_exceeded"},
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )
        return key

    @api.get("/v1/models")
    async def models(self, authorization: str | None = Header(default=None)) -> dict[str, Any]:  # noqa: B008
        self._authenticate(authorization)
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "owned_by": "argus", "versions": sorted(handles)}
                for model, handles in self.served.items()
            ],
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(
        self,
        body: Any = Body(...),  # noqa: B008
        authorization: str | None = Header(default=None),  # noqa: B008
    ) -> Any:
        key = self._authenticate(authorization)
        try:
            call = ChatCompletionBody.model_validate(body)
        except ValidationError as exc:
            raise HTTPException(status_code=400, detail=_body_error(exc)) from None
        request = http_request_record(
            str(uuid.uuid4()),
            call.model or self.model_name,
            [{"role": m.role, "content": m.content} for m in call.messages],
            key.tenant,  # the key's, whatever the body says
            user=call.user,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            stop=[call.stop] if isinstance(call.stop, str) else list(call.stop or []),
            seed=call.seed,
            metadata=call.metadata,
        )
        self.log.info(
            "http.request", request_id=request["request_id"], tenant=key.tenant, key_id=key.key_id, stream=call.stream
        )
        journal = self.journal
        if journal is None:
            raise HTTPException(status_code=503, detail="the HTTP route has no Kafka journal configured")
        try:
            sent = await journal.send_request(request)  # on its way while the model answers
        except JournalUnavailable as exc:
            raise self._unrecorded(exc) from None
        admitted = await self._admit(request)
        if call.stream and not isinstance(admitted, dict):
            return StreamingResponse(
                self._stream(request, admitted, journal, sent),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        if isinstance(admitted, dict):  # an error or a refusal of the input rails: no model call
            out = {"primary": admitted, "shadows": []}
        else:
            out = await self._generate(admitted)
            out["primary"] = await self._finish(admitted, out["primary"])
        primary = out["primary"]
        try:
            acks = [sent, await journal.send_response(answer_record(request, primary))]
            for shadow in out["shadows"]:
                acks.append(await journal.send_shadow(answer_record(request, shadow, shadow=True)))
            await journal.acknowledged(*acks)
        except JournalUnavailable as exc:
            raise self._unrecorded(exc) from None
        if primary.get("error_type") == "model_not_found":
            raise HTTPException(
                status_code=404, detail={"message": primary["error_message"], "code": "model_not_found"}
            )
        if "error_type" in primary:
            raise HTTPException(status_code=503, detail=f"{primary['error_type']}: {primary.get('error_message')}")
        if call.stream:  # refused by an input rail: the refusal as a stream of one chunk
            return StreamingResponse(self._one_chunk_stream(request, primary), media_type="text/event-stream")
        return {
            "id": "chatcmpl-" + request["request_id"],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "system_fingerprint": primary["version"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": primary["text"]},
                    "finish_reason": primary["finish_reason"],
                }
            ],
            "usage": _usage(primary),
            "argus": self._argus(request, primary),
        }

    def _unrecorded(self, exc: JournalUnavailable) -> HTTPException:
        """An answer that is not on Kafka is not given: 503 (the client may retry)."""
        self.journal_failures.inc()
        self.log.error("http.unrecorded", error=str(exc))
        return HTTPException(
            status_code=503,
            detail={"message": "the call could not be recorded; try again", "code": "journal_unavailable"},
            headers={"Retry-After": "1"},
        )

    def _argus(self, request: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        return {
            "request_id": request["request_id"],
            "tenant": request["tenant"],
            "model_version": out["version"],
            "replica": out.get("replica"),
            "mean_logprob": out.get("mean_logprob"),
            "time_to_first_token_ms": out.get("time_to_first_token_ms"),
            "latency_ms": out.get("latency_ms"),
            "guardrails": out.get("guardrails"),
            "cost": out.get("cost"),
        }

    def _chunk(self, request: dict[str, Any], version: str, delta: dict[str, Any], finish: str | None = None) -> str:
        return _sse(
            {
                "id": "chatcmpl-" + request["request_id"],
                "object": "chat.completion.chunk",
                "created": int(request["created_at"] / 1000),
                "model": request["model"],
                "system_fingerprint": version,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def _last_chunks(self, request: dict[str, Any], primary: dict[str, Any]) -> list[str]:
        """Usage (and Argus's fields) in a last chunk without choices, then ``[DONE]``."""
        usage = {
            "id": "chatcmpl-" + request["request_id"],
            "object": "chat.completion.chunk",
            "created": int(request["created_at"] / 1000),
            "model": request["model"],
            "system_fingerprint": primary["version"],
            "choices": [],
            "usage": _usage(primary),
            "argus": self._argus(request, primary),
        }
        return [_sse(usage), "data: [DONE]\n\n"]

    async def _one_chunk_stream(self, request: dict[str, Any], primary: dict[str, Any]) -> AsyncIterator[str]:
        yield self._chunk(request, primary["version"], {"role": "assistant", "content": primary["text"]})
        yield self._chunk(request, primary["version"], {}, primary["finish_reason"])
        for line in self._last_chunks(request, primary):
            yield line

    async def _stream(
        self, request: dict[str, Any], admitted: Admitted, journal: HttpJournal, sent: Any
    ) -> AsyncIterator[str]:
        """The answer as server-sent events, released only as far as the output rails have
        passed it; the whole answer is published to Kafka once it is finished."""
        version = admitted.plan.primary
        try:
            await journal.acknowledged(sent)  # nothing is streamed of a request that is not on record
        except JournalUnavailable as exc:
            self._unrecorded(exc)
            yield _sse(
                {
                    "error": {
                        "message": "the call could not be recorded; try again",
                        "type": "server_error",
                        "code": "journal_unavailable",
                    }
                }
            )
            yield "data: [DONE]\n\n"
            return
        policy = admitted.policy
        handles = self.served[admitted.model]
        shadows = {v: handles[v].generate.remote(admitted.request) for v in admitted.plan.shadows}
        gen = handles[version].options(stream=True).generate_stream.remote(admitted.request)
        text, released, checked_at = "", "", 0
        blocked: Any = None  # the output check that ended the stream early
        done: dict[str, Any] | None = None
        try:
            yield self._chunk(request, version, {"role": "assistant", "content": ""})
            async for item in gen:
                if "done" in item:
                    done = item["done"]
                    continue
                text += item["delta"]
                if blocked is not None:
                    continue  # ended for the client; the engine's answer is still needed for the record
                if not policy.holds_stream:  # no output rail can change or stop it: released as generated
                    released += item["delta"]
                    yield self._chunk(request, version, {"content": item["delta"]})
                elif len(text) - checked_at >= policy.stream_check_chars:
                    checked_at = len(text)
                    piece, stop = await self._release(text, released, policy, _last_user(admitted.request))
                    if stop is not None:
                        blocked = stop
                        yield self._chunk(request, version, {}, "content_filter")
                    elif piece:
                        released += piece
                        yield self._chunk(request, version, {"content": piece})
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop the engine, keep the record
            gen.cancel()
            for resp in shadows.values():
                resp.cancel()
            gone = {
                "error_type": "ClientDisconnected",
                "error_message": f"the client closed the stream after {len(released)} characters",
                "version": version,
                "guardrails": verdict(admitted.rails, policy),
            }
            self._in_background(self._record(journal, request, gone))
            raise
        except Exception as exc:  # the replica died or Serve refused: an error answer, on record too
            done = {"error_type": type(exc).__name__, "error_message": str(exc)[:2000], "version": version}
        if done is None:
            done = {
                "error_type": "StreamEnded",
                "error_message": "the replica's stream ended without an answer",
                "version": version,
            }
        if blocked is not None and "error_type" not in done:
            primary = {
                **done,
                "text": policy.refusal,
                "finish_reason": "content_filter",
                "guardrails": verdict(admitted.rails + blocked.rails, policy),
                "cost": self.cost(admitted.request, done),
            }
        else:
            primary = await self._finish(admitted, done)
        tail: list[str] = []
        if "error_type" in primary:
            tail.append(
                _sse(
                    {
                        "error": {
                            "message": f"{primary['error_type']}: {primary.get('error_message')}",
                            "type": "server_error",
                            "code": None,
                        }
                    }
                )
            )
        elif blocked is None:
            final = primary["text"] if primary["finish_reason"] != "content_filter" else None
            if final is not None and final.startswith(released):
                if final[len(released) :]:
                    tail.append(self._chunk(request, version, {"content": final[len(released) :]}))
                tail.append(self._chunk(request, version, {}, primary["finish_reason"]))
            else:  # blocked at the end, or a redaction reached into text already released
                if final is not None:
                    self.log.warning("http.stream_late_redaction", request_id=request["request_id"])
                    primary = {**primary, "text": released, "finish_reason": "content_filter"}
                tail.append(self._chunk(request, version, {}, "content_filter"))
        shadow_results = await self._shadows(shadows)
        try:
            acks = [await journal.send_response(answer_record(request, primary))]
            for shadow in shadow_results:
                acks.append(await journal.send_shadow(answer_record(request, shadow, shadow=True)))
            await journal.acknowledged(*acks)
        except JournalUnavailable as exc:
            self._unrecorded(exc)
            tail = [
                _sse(
                    {
                        "error": {
                            "message": "the answer could not be recorded",
                            "type": "server_error",
                            "code": "journal_unavailable",
                        }
                    }
                )
            ]
            yield "".join(tail) + "data: [DONE]\n\n"
            return
        if "error_type" not in primary:
            tail += self._last_chunks(request, primary)
        else:
            tail.append("data: [DONE]\n\n")
        for line in tail:
            yield line

    def _in_background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)  # a reference until it is done
        task.add_done_callback(self._closing.discard)

    async def _record(self, journal: HttpJournal, request: dict[str, Any], answer: dict[str, Any]) -> None:
        """Publish the answer of a call whose client is gone (nobody to tell if it fails: logged, counted)."""
        try:
            await journal.acknowledged(await journal.send_response(answer_record(request, answer)))
        except JournalUnavailable as exc:
            self._unrecorded(exc)

    async def _release(self, text: str, released: str, policy: RailPolicy, prompt: str) -> tuple[str, Any]:
        """What of ``text`` (the answer so far) may be released after ``released``: the
        output rails' text but its last ``stream_hold_chars``. Returns (piece, None), or
        (``""``, the check) when the rails block, or a redaction reaches released text."""
        checked = await self.rails.check_output(text, policy, prompt=prompt)
        if checked.blocked:
            return "", checked
        safe = checked.texts[0]
        upto = safe[: max(len(released), len(safe) - policy.stream_hold_chars)]
        if not upto.startswith(released):
            self.log.warning("http.stream_late_redaction")
            checked.blocked = True
            return "", checked
        return upto[len(released) :], None
