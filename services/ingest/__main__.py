"""Entry point: ``python -m services.ingest`` (also ``argus ingest run``)."""

from __future__ import annotations

import sys

from services.common.startup import prepare, run_until_signalled
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings


def main(argv: list[str] | None = None) -> int:  # noqa: ARG001 (no verbs: `argus ingest run`)
    settings = IngestSettings()
    prepare(settings)
    return run_until_signalled(lambda stop: IngestService(settings).run(stop))


if __name__ == "__main__":
    sys.exit(main())
