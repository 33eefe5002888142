"""Signed webhooks: the one HTTP client every service uses to notify a subscriber
(alert receivers, retraining job runners).

Headers on every request:

- ``Idempotency-Key``: stable for one notification across retries and restarts; a
  receiver that stores the keys it has seen drops duplicates.
- ``X-Argus-Timestamp`` and ``X-Argus-Signature: sha256=<hex>``, where the hex digest is
  ``HMAC-SHA256(secret, "<timestamp>." + body)`` (when a secret is configured): a
  receiver checks it with :func:`verify_signature` (or the same three lines in its own
  language) and refuses old timestamps to stop replays. Every attempt is signed anew,
  so a retry an hour later still carries a fresh timestamp.

Delivery: retried with exponential backoff and jitter until a 2xx, or until the
receiver refuses the request for good (a 4xx other than 408 and 429), or until
``give_up_after_s`` passes.

Example::

    >>> client = WebhookClient(user_agent="argus-retraining/1")          # doctest: +SKIP
    >>> result = await client.post(url, body, idempotency_key="t-1:4",    # doctest: +SKIP
    ...                            secret=b"k", policy=RetryPolicy(give_up_after_s=30))
    >>> result.ok, result.attempts                                         # doctest: +SKIP
    (True, 1)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

RETRIED_CLIENT_ERRORS = frozenset({408, 429})


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, headers: dict[str, str], body: bytes, max_age_s: float = 300.0) -> bool:
    """What a receiver does: recompute the HMAC over timestamp and body, compare in
    constant time, refuse stale timestamps."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, sig = lower.get("x-argus-timestamp"), lower.get("x-argus-signature")
    if not ts or not sig:
        return False
    try:
        if abs(time.time() - float(ts)) > max_age_s:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(sign(secret, ts, body), sig)


@dataclass(frozen=True)
class RetryPolicy:
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    give_up_after_s: float = 300.0


@dataclass(frozen=True)
class Delivery:
    """How one POST ended: ``outcome`` is delivered, rejected (a 4xx not worth
    retrying) or gave_up (retried until ``give_up_after_s``)."""

    outcome: str
    attempts: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


class WebhookClient:
    """POSTs JSON bodies to subscribers, signed and retried (see the module docstring)."""

    def __init__(self, user_agent: str, client: httpx.AsyncClient | None = None) -> None:
        self.user_agent = user_agent
        self._client = client
        self._own = client is None

    async def __aenter__(self) -> "WebhookClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64))
        return self._client

    async def aclose(self) -> None:
        if self._own and self._client is not None:
            await self._client.aclose()
            self._client = None

    def headers(self, body: bytes, idempotency_key: str, secret: bytes | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            "User-Agent": self.user_agent,
        }
        if secret:
            ts = str(int(time.time()))
            headers["X-Argus-Timestamp"] = ts
            headers["X-Argus-Signature"] = sign(secret, ts, body)
        return headers

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        idempotency_key: str,
        secret: bytes | None = None,
        timeout: float = 10.0,
        policy: RetryPolicy = RetryPolicy(),
        on_retry: Callable[[int, str], Any] | None = None,
    ) -> Delivery:
        """Deliver ``body`` to ``url``; ``on_retry(attempt, error)`` is called before each wait."""
        deadline = time.monotonic() + policy.give_up_after_s
        backoff = policy.initial_backoff_s
        attempts = 0
        while True:
            attempts += 1
            try:
                resp = await self.client.post(
                    url, content=body, headers=self.headers(body, idempotency_key, secret), timeout=timeout
                )
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= resp.status_code < 300:
                    return Delivery("delivered", attempts)
                error = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in RETRIED_CLIENT_ERRORS:
                    return Delivery("rejected", attempts, error + " (not retried: the receiver refuses this request)")
            if time.monotonic() + backoff > deadline:
                return Delivery("gave_up", attempts, error)
            if on_retry is not None:
                on_retry(attempts, error)
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, policy.max_backoff_s)
