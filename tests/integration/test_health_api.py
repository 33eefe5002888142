"""The health server: probes and metrics stay open (on loopback by default); its control
routes (the alerting API) need their bearer token, and without one are refused."""

from __future__ import annotations


async def test_the_health_servers_control_routes_need_their_token() -> None:
    import httpx
    from aiohttp import web
    from pydantic import SecretStr

    from services.common.health import HealthServer, Readiness
    from services.common.metrics import Metrics
    from services.common.settings import HealthSettings

    async def api(_: web.Request) -> web.Response:
        return web.json_response(["secret state"])

    async def ready() -> Readiness:
        return Readiness(True, "t", True, True)

    for token, calls in (
        (SecretStr("s3cret-token"), {"Bearer s3cret-token": 200, "Bearer wrong": 401, "": 401, "s3cret-token": 401}),
        (None, {"Bearer anything": 401, "": 401}),
    ):
        server = HealthServer(HealthSettings(), Metrics("t"), lambda: 0.0, ready, {"/api/v2/x": api}, token)
        port = await server.start()
        try:
            async with httpx.AsyncClient() as http:
                for header, code in calls.items():
                    headers = {"Authorization": header} if header else {}
                    r = await http.get(f"http://127.0.0.1:{port}/api/v2/x", headers=headers)
                    assert r.status_code == code, (token, header)
                assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200  # stays open
        finally:
            await server.stop()
