"""Entry point: ``python -m services.ingest`` (also ``argus ingest run``)."""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common.logging import configure_logging, get_logger
from services.common.schema_registry import configure_registry
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings


async def _main() -> None:
    settings = IngestSettings()
    configure_logging(settings.log_level, settings.log_json)
    get_logger("argus.ingest").info("ingest.settings", **settings.masked())
    configure_registry(settings.kafka)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await IngestService(settings).run(stop)


def main(argv: list[str] | None = None) -> int:  # noqa: ARG001 (no verbs: `argus ingest run`)
    asyncio.run(_main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
