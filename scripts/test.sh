#!/usr/bin/env bash
# The README's test command: installs what is needed, then runs every tier.
# Integration and e2e fixtures start their own real Apache Kafka broker and ClickHouse
# endpoint on free loopback ports (or use --kafka-bootstrap / --clickhouse-dsn).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Ray runs with token authentication (tests/integration/conftest.py makes the session's token)
# the style gate: lint and formatting (pyproject.toml [tool.ruff]) before any test
.venv/bin/ruff check services tests bench
.venv/bin/ruff format --check services tests bench
.venv/bin/argus schemas check
exec .venv/bin/python -m pytest tests "$@"
