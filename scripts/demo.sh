#!/usr/bin/env bash
# The README's first command: installs what is needed, then runs the end-to-end demo
# on the local default stack (left running afterwards; `.venv/bin/argus stack down` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export ARGUS_STACK_KAFKA_LIBS="$PWD/.argus/kafka/libs"
exec .venv/bin/argus demo "$@"
