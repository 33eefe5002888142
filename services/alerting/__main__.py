"""Entry point: ``python -m services.alerting`` (also ``argus alerting run``) runs a faust
worker; ``python -m services.alerting check [FILE]`` validates a configuration."""

from __future__ import annotations

import sys

from services.alerting.config import ConfigError, load_config
from services.alerting.settings import AlertingSettings
from services.common.startup import prepare


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = AlertingSettings()
    path = argv[1] if argv[:1] == ["check"] and len(argv) > 1 else settings.config_file
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if argv[:1] == ["check"]:
        print(
            f"{path}: {len(config.rules)} rules, {len(config.receivers)} receivers, "
            f"{len(config.inhibit_rules)} inhibition rules: valid"
        )
        return 0
    from services.alerting.settings import check_rules
    from services.common.governance import Refused

    try:
        provenance = check_rules(settings)  # only rules an operator signed (unless a demo allows others)
    except Refused as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return 2
    prepare(settings)
    from services.common.logging import get_logger

    get_logger("argus.alerting").info("alerting.rules", config=str(settings.config_file), provenance=provenance)
    from faust.worker import Worker

    from services.alerting.app import create_app
    from services.common.faust_support import declare_internal_topics

    app = create_app(settings, config)
    declare_internal_topics(app, settings.kafka)
    Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
