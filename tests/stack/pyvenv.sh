#!/usr/bin/env bash
# tests/stack/pyvenv.sh - the Python venv of the schema-registry tests'
# consumers (fastavro, confluent-kafka with its Avro and schema-registry
# extras, from PyPI), created once under ~/.cache/outboxd/venv-<hash of
# the requirements>. Prints the venv's python.
set -euo pipefail
SRC=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
REQ=$SRC/requirements.txt
cache=${OUTBOXD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/outboxd}
venv=$cache/venv-$(sha256sum "$REQ" | cut -c1-12)
# Debian's interpreter, not whatever a version manager puts first on PATH.
py=${OUTBOXD_PYTHON:-/usr/bin/python3}
[[ -x $py ]] || py=$(command -v python3)
if [[ -x $venv/bin/python && -f $venv/.complete ]]; then
  printf '%s\n' "$venv/bin/python"
  exit 0
fi
mkdir -p "$cache"
exec 9>>"$venv.lock"
flock -w 900 9 || { echo "pyvenv: timed out waiting for $venv.lock" >&2; exit 1; }
if [[ ! -f $venv/.complete ]]; then
  echo "pyvenv: creating $venv (fastavro, confluent-kafka from PyPI)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv" >&2 || { echo "pyvenv: python3 -m venv failed: run scripts/install-deps.sh (python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  : >"$venv/.complete"
fi
printf '%s\n' "$venv/bin/python"
