"""Entry point: ``python -m services.drift`` runs a faust worker (no web server).

``python -m services.drift reset-reference MODEL VERSION`` pins a new reference window
for one stream (``VERSION`` ``*`` for prompt features)."""

from __future__ import annotations

import sys

from services.common.faust_support import declare_internal_topics
from services.common.startup import prepare
from services.drift.settings import DriftSettings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = DriftSettings()
    prepare(settings)
    from services.drift.app import create_app, request_reference_reset

    app = create_app(settings)
    declare_internal_topics(app, settings.kafka)  # before the worker subscribes, or the reset is sent
    if argv[:1] == ["reset-reference"]:
        import asyncio

        async def send() -> None:
            await app.producer.start()
            await request_reference_reset(app, f"{argv[1]}|{argv[2]}")
            await app.producer.flush()
            await app.producer.stop()

        asyncio.run(send())
        return 0
    from faust.worker import Worker

    Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
