"""The platform's contracts and default configurations, shipped inside the package
(as ``sentry-kafka-schemas`` ships its topics and schemas) and found with
:mod:`importlib.resources`, so an installed wheel carries everything a service needs:

- ``schemas/``: topics, Avro schemas and golden examples (the repository's top-level
  ``schemas/``, the single contract between services);
- ``clickhouse/``: the versioned ClickHouse migrations (the tables SREs query);
- ``alerting.yaml`` and ``retraining.yaml``: the default rules and policies (the Helm
  chart's files).

In the repository these are links to the files' homes; building the wheel copies the
files themselves.

Example::

    >>> (contract_path("schemas") / "topics" / "feedback.yaml").exists()
    True
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def contract_path(*parts: str) -> Path:
    """A file or directory of the shipped contracts, on disk."""
    return Path(str(files(__name__).joinpath(*parts)))
