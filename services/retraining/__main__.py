"""Entry point: ``python -m services.retraining`` (also ``argus retraining run``);
``python -m services.retraining check [FILE]`` validates a policy file."""

from __future__ import annotations

import sys

from services.common.configfile import ConfigError
from services.common.startup import prepare, run_until_signalled
from services.retraining.config import load_config
from services.retraining.settings import RetrainingSettings


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
    from services.common.governance import Refused
    from services.retraining.service import RetrainingService
    from services.retraining.settings import check_policies

    try:
        provenance = check_policies(settings)  # only policies an operator signed (unless a demo allows others)
    except Refused as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return 2
    prepare(settings)
    from services.common.logging import get_logger

    get_logger("argus.retraining").info("retraining.policies", config=str(settings.config_file), provenance=provenance)
    return run_until_signalled(lambda stop: RetrainingService(settings, config).run(stop))


if __name__ == "__main__":
    sys.exit(main())
