"""Entry point: ``python -m services.retraining`` (also ``argus retraining run``);
``python -m services.retraining check [FILE]`` validates a policy file."""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common.configfile import ConfigError
from services.common.logging import configure_logging, get_logger
from services.common.schema_registry import configure_registry
from services.retraining.config import load_config
from services.retraining.settings import RetrainingSettings


async def _run(settings: RetrainingSettings) -> None:
    from services.retraining.service import RetrainingService

    config = load_config(settings.config_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await RetrainingService(settings, config).run(stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = RetrainingSettings()
    path = argv[1] if argv[:1] == ["check"] and len(argv) > 1 else settings.config_file
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if argv[:1] == ["check"]:
        print(f"{path}: {len(config.policies)} policies: valid")
        return 0
    configure_logging(settings.log_level, settings.log_json)
    get_logger("argus.retraining").info("retraining.settings", **settings.masked())
    configure_registry(settings.kafka)
    asyncio.run(_run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
