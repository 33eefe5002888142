"""Entry point: ``python -m services.inference [serve|bridge|deploy]``.

- ``serve`` (default): start or join Ray, deploy the Serve application, run the Kafka
  bridge, the serving-state applier (canaries, promotions and rollbacks written as
  records on ``argus.serving.state``) and the health endpoint until SIGTERM/SIGINT.
- ``deploy``: (re)deploy the application with the current settings and exit. With only
  weights or tunables changed this reconfigures running replicas: it is how a canary
  is widened or a version rolled back without a restart.
- ``bridge``: run only the Kafka bridge against an application already deployed on the
  Ray cluster at ``ARGUS_INFERENCE_RAY_ADDRESS``.
- ``serve-config``: print the Serve config the code applies (KubeRay's serveConfigV2).
- ``states``: run only the serving-state applier against that cluster's application
  (KubeRay: one replica beside the bridges, which scale on their lag; the canary weights
  and rollbacks it applies are the same Serve application's).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from services.common.health import HealthServer
from services.common.logging import get_logger
from services.common.startup import prepare, run_until_signalled
from services.inference.settings import InferenceSettings


def _ray_auth(settings: InferenceSettings) -> None:
    """Ray's control plane (GCS, raylets, job submission) listens beyond loopback; without
    token authentication anyone who reaches it runs code here. A local cluster makes its
    own token (~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH); joining one needs the same token.
    Ray reads the mode when it is imported: call this before anything imports ray."""
    if "ray" in sys.modules and os.environ.get("RAY_AUTH_MODE") != settings.ray_auth_mode:
        raise RuntimeError("ray was imported before its authentication mode was set")
    os.environ["RAY_AUTH_MODE"] = settings.ray_auth_mode
    if settings.serve_low_latency:  # read when ray.serve is imported, like the auth mode
        from services.inference.serveconfig import LOW_LATENCY_CALLER_ENV

        for name, value in LOW_LATENCY_CALLER_ENV.items():
            os.environ.setdefault(name, value)
    if settings.ray_auth_mode != "token":
        get_logger("argus.inference").warning(
            "inference.ray_unauthenticated", detail="RAY_AUTH_MODE=disabled: anyone reaching Ray's ports can run code"
        )


def _init_ray(settings: InferenceSettings) -> None:
    import ray

    if settings.ray_address:
        ray.init(address=settings.ray_address, namespace="serve", ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(num_cpus=settings.ray_num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)


def _start_serve(settings: InferenceSettings) -> None:
    from ray import serve

    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})


async def _run_bridge(settings: InferenceSettings, router, stop: asyncio.Event, apply_states: bool) -> None:  # noqa: ANN001
    from services.common.kafka import make_producer
    from services.inference.app import deploy
    from services.inference.bridge import InferenceBridge
    from services.inference.gateway import TenantGateway
    from services.inference.serving import ServingStateApplier

    bridge = InferenceBridge(settings, router)
    gateway = TenantGateway(settings, bridge.metrics) if settings.gateway.enabled else None

    def last_progress() -> float:  # live while both loops advance
        return min(bridge.last_progress, gateway.last_progress) if gateway is not None else bridge.last_progress

    async def readiness():  # noqa: ANN202
        ready = await bridge.readiness()
        if gateway is None:
            return ready
        gw = await gateway.readiness()
        return dataclasses.replace(
            ready,
            ready=ready.ready and gw.ready,
            assigned_partitions=ready.assigned_partitions + gw.assigned_partitions,
            lag={**ready.lag, **gw.lag},
            committed={**ready.committed, **gw.committed},
            detail="; ".join(x for x in (ready.detail, gw.detail and f"gateway: {gw.detail}") if x),
        )

    health = HealthServer(settings.health, bridge.metrics, last_progress, readiness)
    port = await health.start()
    log = get_logger("argus.inference")
    log.info("inference.health", port=port)
    producer = make_producer(settings.kafka)
    await producer.start()
    applier = ServingStateApplier(settings, producer, deploy, bridge.metrics)
    tasks = [asyncio.create_task(bridge.run(stop), name="bridge")]
    if gateway is not None:
        tasks.append(asyncio.create_task(gateway.run(stop), name="tenant-gateway"))
    if apply_states:
        tasks.append(asyncio.create_task(applier.run(stop), name="serving-state"))
    try:
        done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        for r in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r
    finally:
        await producer.stop()
        await health.stop()


async def _run_states(settings: InferenceSettings, stop: asyncio.Event) -> None:
    from services.common.health import Readiness
    from services.common.kafka import make_producer
    from services.common.metrics import Metrics
    from services.inference.app import deploy
    from services.inference.serving import ServingStateApplier

    metrics = Metrics("inference-serving")
    producer = make_producer(settings.kafka)
    await producer.start()
    applier = ServingStateApplier(settings, producer, deploy, metrics)

    async def readiness() -> Readiness:
        caught_up = applier.reader.caught_up.is_set()
        return Readiness(
            ready=caught_up,
            service="inference-serving",
            kafka_connected=True,
            sink_healthy=True,
            detail="" if caught_up else "reading the serving-state topic",
        )

    # alive while the reader polls the topic (it does every fraction of a second, records or not)
    health = HealthServer(settings.health, metrics, lambda: applier.reader.last_progress, readiness)
    await health.start()
    try:
        await applier.run(stop)
    finally:
        await producer.stop()
        await health.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.inference", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "bridge", "deploy", "states", "serve-config"]
    )
    ap.add_argument("--trust-file", help="serve-config: where every Ray node mounts the trust file")
    args = ap.parse_args(argv)
    settings = InferenceSettings()
    if args.command == "serve-config":  # print only: no Ray, no Kafka
        from services.inference.applied import serve_config_v2

        sys.stdout.write(serve_config_v2(settings, args.trust_file))
        return 0
    prepare(settings)
    log = get_logger("argus.inference")
    _ray_auth(settings)

    from ray import serve

    from services.inference.app import deploy

    _init_ray(settings)
    if args.command in ("serve", "deploy"):
        _start_serve(settings)
        router = deploy(settings)
        log.info("inference.deployed", app=settings.app_name, routing=settings.routing_config())
        if args.command == "deploy":
            return 0
    elif args.command == "states":
        return run_until_signalled(lambda stop: _run_states(settings, stop))
    else:
        router = serve.get_app_handle(settings.app_name)
    return run_until_signalled(lambda stop: _run_bridge(settings, router, stop, apply_states=args.command == "serve"))


if __name__ == "__main__":
    sys.exit(main())
