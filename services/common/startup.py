"""One start-up path for every service's ``__main__`` (``python -m services.<name>`` and
``argus <name> run`` are the same ``main``).

:func:`prepare` builds nothing itself: it takes the service's settings (read from the
environment once, by the caller) and sets up what every service needs before it
connects to anything: logging, one log line with the settings (secrets masked), and the
schema registry the codecs use. :func:`run_until_signalled` runs an asyncio service
until SIGTERM or SIGINT sets its stop event (each service then drains and commits).
The faust services hand their app to faust's worker after :func:`prepare`, which
handles the signals itself.

Example::

    settings = IngestSettings()
    prepare(settings)
    return run_until_signalled(lambda stop: IngestService(settings).run(stop))
"""

from __future__ import annotations

import asyncio
import signal
from typing import Awaitable, Callable

from services.common.logging import configure_logging, get_logger
from services.common.schema_registry import configure_registry
from services.common.settings import ServiceSettings


def prepare(settings: ServiceSettings) -> None:
    from services.common.logging import register_secrets

    register_secrets(settings)
    configure_logging(settings.log_level, settings.log_json)
    get_logger(f"argus.{settings.service_name}").info(f"{settings.service_name}.settings", **settings.masked())
    configure_registry(settings.kafka)


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(run())
    return 0
