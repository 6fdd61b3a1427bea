#!/usr/bin/env bash
# scripts/install-deps.sh - install everything outboxd needs to build and test
# on Debian 12 (run as root; idempotent: does nothing that is already done).
#
#   scripts/install-deps.sh            # packages + Kafka classpath for tests
#   INSTALL_DEPS_SKIP_KAFKA=1 scripts/install-deps.sh   # packages only
#   INSTALL_DEPS_SKIP_REGISTRY=1 ...   # without the test registry and venv
#   INSTALL_DEPS_SKIP_DEBEZIUM=1 ...   # without Kafka Connect + Debezium
#   INSTALL_DEPS_SKIP_TOXIPROXY=1 ...   # without Toxiproxy (fault tests)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config
  # libraries
  libpq-dev librdkafka-dev libavro-dev libyaml-dev libcmocka-dev libjansson-dev
  libcurl4-openssl-dev libmicrohttpd-dev libsystemd-dev
  # test stack: PostgreSQL 15 and a Kafka broker run from Maven Central jars
  postgresql postgresql-contrib openjdk-17-jre-headless maven
  # tools used by the scripts and tests
  clang-format procps iproute2
  # schema registry tests: curl, unzip (tests/stack/registry.sh), a Python
  # venv for the fastavro / confluent-kafka / prometheus_client tools; fault
  # tests and other PostgreSQL versions: curl drives Toxiproxy, unzip and
  # xz-utils unpack the servers (tests/stack/toxiproxy.sh, stack.sh)
  curl unzip python3-venv openssl xz-utils
  # systemd-analyze verify/security for the deploy/systemd units
  systemd
  # the shop (src/shop): Redis client, and the demo's Redis, gateway and JSON tool
  libhiredis-dev redis-server nginx jq
  # fuzzing (tests/fuzz, bench/fuzz.sh): clang 14 with libFuzzer
  clang-14 libfuzzer-14-dev libclang-rt-14-dev
)

say() { printf 'install-deps: %s\n' "$*"; }

SUDO=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || {
    say "must run as root (or with sudo available)" >&2
    exit 1
  }
  SUDO=(sudo)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  say "all ${#PACKAGES[@]} Debian packages already installed"
else
  say "missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get update"
  "${SUDO[@]}" apt-get update -q
  say "apt-get install ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Toxiproxy for the fault tests (tests/stack/toxiproxy.sh), built once from
# the Go module proxy into ~/.cache/outboxd (needs Go >= 1.23 on PATH).
if [[ ${INSTALL_DEPS_SKIP_TOXIPROXY:-0} != 1 ]]; then
  say "toxiproxy: $("$ROOT/tests/stack/toxiproxy.sh" install)"
fi

if [[ ${INSTALL_DEPS_SKIP_KAFKA:-0} == 1 ]]; then
  say "skipping the Kafka classpath (INSTALL_DEPS_SKIP_KAFKA=1)"
  exit 0
fi

# Resolve (and cache) the Kafka broker classpath now, so the first test run
# does not pay for maven. The jars go to ~/.m2, the classpath file to
# ~/.cache/outboxd (see tests/stack/stack.sh).
say "resolving the Kafka classpath (tests/stack/pom.xml)"
cp_file=$(env -u STACK_KAFKA_CP "$ROOT/tests/stack/stack.sh" classpath)
say "Kafka classpath: $cp_file ($(tr ':' '\n' <"$cp_file" | wc -l) jars)"

# The schema registry of the test stack (Apicurio, built once from Maven
# Central: ~2 minutes cold) and the Python venv of the registry tests'
# consumers (fastavro, confluent-kafka from PyPI).
if [[ ${INSTALL_DEPS_SKIP_REGISTRY:-0} != 1 ]]; then
  say "building the test schema registry (tests/stack/registry.sh build)"
  say "registry jar: $("$ROOT/tests/stack/registry.sh" build)"
  say "Python venv: $("$ROOT/tests/stack/pyvenv.sh")"
fi
# Kafka Connect + Debezium for the side-by-side test and bench/peer.sh
# (tests/stack/debezium/pom.xml; test-only, ~1 minute of downloads once).
if [[ ${INSTALL_DEPS_SKIP_DEBEZIUM:-0} != 1 ]]; then
  say "resolving the Kafka Connect + Debezium classpath (tests/stack/debezium.sh classpath)"
  say "Debezium classpath: $("$ROOT/tests/stack/debezium.sh" classpath)"
  # Apicurio's AvroConverter on Connect's plugin.path (the Avro side-by-side
  # test; tests/stack/debezium/apicurio/pom.xml).
  say "Connect plugins: $("$ROOT/tests/stack/debezium.sh" plugins)"
fi
say "done"
