"""The key service's HTTP API.

ClickHouse's two dictionaries (``subject_keys_ensure`` for inserts, ``subject_keys`` for
reads; layout ``COMPLEX_KEY_DIRECT``, so nothing is cached in ClickHouse and a destroyed
key is gone from the next query on) POST the keys they need as ``JSONEachRow`` and get
the rows back in the same format:

- ``POST /v1/dictionary/ensure``: ``{"tenant", "subject"}`` → ``{"tenant", "subject",
  "subject_id", "key"}``, creating keys on first use.
- ``POST /v1/dictionary/lookup``: ``{"subject_id"}`` → ``{"subject_id", "key"}`` for the
  keys that exist; a destroyed key is simply absent (the dictionary's default, a zero
  key, then fails GCM's authentication and the text reads as NULL).

Both need the dictionary token. ``argus privacy`` uses the admin API with the admin
token: ``POST /v1/subjects/resolve`` (the pseudonym of a subject and whether its key
exists), ``POST /v1/subjects/status`` (the same by pseudonym, for a receipt's check)
and ``POST /v1/subjects/destroy``. ``GET /healthz``, ``/readyz`` and ``/metrics`` are
open (they name no subject). Nothing lists
keys: there is no way to read the store whole, through any token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Callable

from aiohttp import web
from pydantic import SecretStr

from services.common.metrics import Metrics
from services.keys.store import KeyStore, KeyStoreError

MAX_ROWS = 100_000


class BadRequest(web.HTTPBadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


def _rows(body: bytes) -> list[dict[str, Any]]:
    """The distinct rows of a JSONEachRow body. A direct dictionary sends one row per row
    of the block (a 20,000-row insert of 1,000 subjects asks 20,000 times): equal lines are
    parsed and answered once, and ClickHouse maps the answers back by key."""
    out = []
    lines = list(dict.fromkeys(body.splitlines()))
    if len(lines) > MAX_ROWS:
        raise BadRequest(f"more than {MAX_ROWS} distinct rows")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BadRequest(f"row {n + 1} is not JSON") from None
        if not isinstance(row, dict):
            raise BadRequest(f"row {n + 1} is not an object")
        out.append(row)
    return out


def _json_lines(rows: list[dict[str, Any]]) -> web.Response:
    return web.Response(body="".join(json.dumps(r) + "\n" for r in rows).encode(), content_type="application/x-ndjson")


def make_app(store: KeyStore, dictionary_token: SecretStr, admin_token: SecretStr, max_body: int) -> web.Application:
    metrics = Metrics("keys")

    def authorized(request: web.Request, token: SecretStr) -> None:
        got = request.headers.get("Authorization", "")
        want = "Bearer " + token.get_secret_value()
        if not hmac.compare_digest(got.encode(), want.encode()):
            metrics.inc("argus_subject_keys_requests_total", endpoint=request.path, outcome="unauthorized")
            raise web.HTTPUnauthorized(text="a valid bearer token is required")

    async def body(request: web.Request) -> bytes:
        data = bytearray()
        async for chunk in request.content.iter_chunked(65536):  # chunked or not: bounded either way
            data += chunk
            if len(data) > max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=max_body, actual_size=len(data))
        return bytes(data)

    def dictionary(endpoint: str, answer: Callable[[dict[str, Any]], dict[str, Any] | None]):  # noqa: ANN202
        """A dictionary endpoint: each distinct requested key answered (or left out) by ``answer``."""

        async def handle(request: web.Request) -> web.Response:
            authorized(request, dictionary_token)
            rows = _rows(await body(request))
            out = await asyncio.to_thread(lambda: [a for r in rows if (a := answer(r)) is not None])
            metrics.inc("argus_subject_keys_requests_total", endpoint=endpoint, outcome="ok")
            metrics.inc("argus_subject_keys_served_total", len(out), endpoint=endpoint)
            return _json_lines(out)

        return handle

    def ensured(r: dict[str, Any]) -> dict[str, Any] | None:
        tenant, subject = r.get("tenant"), r.get("subject")
        try:
            k = store.ensure(tenant, subject)
        except KeyStoreError:
            return None  # not strings: no key, and the insert fails to seal rather than store in clear
        return {"tenant": tenant, "subject": subject, "subject_id": k.subject_id, "key": k.key.hex()}

    def looked_up(r: dict[str, Any]) -> dict[str, Any] | None:
        k = store.lookup(r.get("subject_id"))
        return None if k is None else {"subject_id": k.subject_id, "key": k.key.hex()}

    ensure, lookup = dictionary("ensure", ensured), dictionary("lookup", looked_up)

    async def subject(request: web.Request) -> tuple[str, str]:
        authorized(request, admin_token)
        try:
            doc = json.loads(await body(request))
            tenant, subj = doc["tenant"], doc["subject"]
            store.subject_id(tenant, subj)  # validates both
        except (ValueError, KeyError, TypeError, KeyStoreError) as exc:
            raise BadRequest(f"expected {{'tenant': str, 'subject': str}}: {type(exc).__name__}") from None
        return tenant, subj

    async def resolve(request: web.Request) -> web.Response:
        tenant, subj = await subject(request)
        sid = store.subject_id(tenant, subj)
        key = await asyncio.to_thread(store.lookup, sid)
        destroyed = await asyncio.to_thread(store.destroyed, sid)
        return web.json_response(
            {
                "subject_id": sid,
                "key_id": key.key_id if key else None,
                "destroyed": [{"key_id": k, "destroyed_at": t} for k, t in destroyed],
            }
        )

    async def status(request: web.Request) -> web.Response:
        authorized(request, admin_token)
        try:
            sid = json.loads(await body(request))["subject_id"]
        except (ValueError, KeyError, TypeError):
            raise BadRequest("expected {'subject_id': str}") from None
        key = await asyncio.to_thread(store.lookup, sid)
        destroyed = await asyncio.to_thread(store.destroyed, sid) if isinstance(sid, str) else []
        return web.json_response(
            {
                "subject_id": sid,
                "key_id": key.key_id if key else None,
                "destroyed": [{"key_id": k, "destroyed_at": t} for k, t in destroyed],
            }
        )

    async def destroy(request: web.Request) -> web.Response:
        tenant, subj = await subject(request)
        d = await asyncio.to_thread(store.destroy, tenant, subj)
        metrics.inc("argus_subject_keys_destroyed_total", len(d.key_ids))
        return web.json_response({"subject_id": d.subject_id, "key_ids": d.key_ids, "destroyed_at": d.destroyed_at})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        try:
            n = await asyncio.to_thread(store.count)  # the store answers
        except Exception as exc:  # noqa: BLE001 - any store failure means not ready
            return web.json_response({"ready": False, "detail": type(exc).__name__}, status=503)
        return web.json_response({"ready": True, "subjects": n})

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/v1/dictionary/ensure", ensure)
    app.router.add_post("/v1/dictionary/lookup", lookup)
    app.router.add_post("/v1/subjects/resolve", resolve)
    app.router.add_post("/v1/subjects/status", status)
    app.router.add_post("/v1/subjects/destroy", destroy)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
