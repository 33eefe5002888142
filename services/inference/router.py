"""The ingress deployment of the inference application.

``Router`` routes each request by weight with sticky assignment, mirrors it to shadow
versions, and serves ``POST /v1/chat/completions`` (OpenAI-compatible) and
``GET /v1/models``. Both need an API key (``Authorization: Bearer argus_…``, see
:mod:`services.common.api_keys`): the key decides the tenant (whatever the body says) and
its rate (429 with ``Retry-After`` above it); without a configured key file every call is
refused. Its ``user_config`` is the routing table: redeploying with new
weights calls ``reconfigure`` on the running replicas, so a rollback (weight 0) takes
effect with no restart and no dropped request. The CPU builder
(:mod:`services.inference.app`) and the GPU builder (:mod:`services.inference.gpu`)
both put it in front of their model deployments.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import Body, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from services.common.api_keys import ApiKey, KeyStore, RateLimiter
from services.common.logging import get_logger
from services.inference.guardrails.offensive import GuardInfo
from services.inference.guardrails.policy import GuardrailSettings
from services.inference.guardrails.rails import GuardRails, verdict
from services.inference.responses import answer_cost
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


@serve.ingress(api)
class Router:
    def __init__(
        self,
        model_name: str,
        versions: dict[str, DeploymentHandle],
        guard: DeploymentHandle | None = None,
        guard_info: dict[str, str] | None = None,
    ) -> None:
        self.model_name = model_name
        self.handles = versions
        self.table = RoutingTable.from_config({"weights": {v: 1.0 for v in versions}})
        self.reloads = 0
        self.keys: KeyStore | None = None  # no key file: the HTTP routes refuse every call
        self.rate_per_minute = 60
        self.limiter = RateLimiter()
        self.log = get_logger("argus.inference.http")
        self.prices: dict[str, Price] = {}
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
        table = RoutingTable.from_config(config)
        unknown = (set(table.weights) | set(table.shadows)) - set(self.handles)
        if unknown:
            raise ValueError(f"routing names versions that are not deployed: {sorted(unknown)}")
        self.table = table
        self.rails.configure(guardrails)
        self.prices = prices
        self.reloads += 1

    def routing(self) -> dict[str, Any]:
        return {"weights": self.table.weights, "shadows": list(self.table.shadows), "reloads": self.reloads}

    async def infer(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one InferenceRequest (as a dict) through the tenant's guard rails.
        Returns the primary answer (with its ``guardrails`` verdict) and the shadow
        answers; errors come back as values, never as silence."""
        model = str(request.get("model") or self.model_name)
        if model != self.model_name:  # never another model's answer under the name asked for
            return {
                "primary": {
                    "error_type": "model_not_found",
                    "error_message": f"model {model[:200]!r} is not served here; served: {self.model_name}",
                    "version": "none",
                },
                "shadows": [],
            }
        try:
            plan = self.table.plan(sticky_key(request))
        except NoServingVersion as exc:
            return {
                "primary": {"error_type": "NoServingVersion", "error_message": str(exc), "version": "none"},
                "shadows": [],
            }
        policy = self.rails.policy(str(request.get("tenant") or ""))
        started = time.monotonic()
        checked_in = await self.rails.check_input(request["messages"], policy)
        if checked_in.blocked:  # the model never sees it
            return {"primary": self._refusal(plan.primary, policy, checked_in.rails, started), "shadows": []}
        if checked_in.texts != [str(m.get("content") or "") for m in request["messages"]]:
            request = {
                **request,
                "messages": [{**m, "content": t} for m, t in zip(request["messages"], checked_in.texts)],
            }
        out = await self._generate(plan, request)
        primary = out["primary"]
        rails = list(checked_in.rails)
        if "error_type" not in primary:
            prompt = next((m["content"] for m in reversed(request["messages"]) if m.get("role") == "user"), "")
            checked_out = await self.rails.check_output(primary["text"], policy, prompt=str(prompt))
            rails += checked_out.rails
            if checked_out.blocked:
                primary = {**primary, "text": policy.refusal, "finish_reason": "content_filter"}
            else:
                primary = {**primary, "text": checked_out.texts[0]}
        out["primary"] = {**primary, "guardrails": verdict(rails, policy), "cost": self.cost(request, primary)}
        return out

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

    async def _generate(self, plan: Any, request: dict[str, Any]) -> dict[str, Any]:
        """The primary answer and the shadow answers of ``plan`` (no rails: shadow answers
        are logged, never returned to anyone)."""
        primary = self.handles[plan.primary].generate.remote(request)
        shadows = {v: self.handles[v].generate.remote(request) for v in plan.shadows}
        try:
            result = await primary
        except Exception as exc:  # a replica died or Serve refused: the caller gets an error response
            result = {"error_type": type(exc).__name__, "error_message": str(exc)[:2000], "version": plan.primary}
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
        return {"primary": result, "shadows": shadow_results}

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
            "data": [{"id": self.model_name, "object": "model", "owned_by": "argus", "versions": sorted(self.handles)}],
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(
        self,
        body: dict = Body(...),  # noqa: B008
        authorization: str | None = Header(default=None),  # noqa: B008
    ) -> dict[str, Any]:
        key = self._authenticate(authorization)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(status_code=400, detail="messages must be a non-empty list")
        if not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise HTTPException(status_code=400, detail="each message needs a string role and a string content")
        if body.get("stream"):
            raise HTTPException(status_code=400, detail="stream=true is not supported on this route")
        request = {
            "request_id": str(uuid.uuid4()),
            "model": body.get("model") or self.model_name,
            "messages": body["messages"],
            "max_tokens": body.get("max_tokens"),
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "stop_sequences": [body["stop"]] if isinstance(body.get("stop"), str) else (body.get("stop") or []),
            "seed": body.get("seed"),
            "tenant": key.tenant,  # the key's, whatever the body says
            "user": body.get("user") if isinstance(body.get("user"), str) else None,
        }
        self.log.info("http.request", request_id=request["request_id"], tenant=key.tenant, key_id=key.key_id)
        out = (await self.infer(request))["primary"]
        if out.get("error_type") == "model_not_found":
            raise HTTPException(status_code=404, detail={"message": out["error_message"], "code": "model_not_found"})
        if "error_type" in out:
            raise HTTPException(status_code=503, detail=f"{out['error_type']}: {out.get('error_message')}")
        return {
            "id": "chatcmpl-" + request["request_id"],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "system_fingerprint": out["version"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out["text"]},
                    "finish_reason": out["finish_reason"],
                }
            ],
            "usage": {
                "prompt_tokens": out["input_tokens"],
                "completion_tokens": out["output_tokens"],
                "total_tokens": out["input_tokens"] + out["output_tokens"],
            },
            "argus": {
                "tenant": key.tenant,
                "model_version": out["version"],
                "replica": out["replica"],
                "mean_logprob": out["mean_logprob"],
                "time_to_first_token_ms": out["time_to_first_token_ms"],
                "latency_ms": out["latency_ms"],
                "guardrails": out.get("guardrails"),
                "cost": out.get("cost"),
            },
        }
