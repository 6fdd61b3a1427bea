# Helpers for tests of the metrics endpoint. Source after lib.sh.
#
# The exposition is checked with prometheus_client's own parser (from PyPI,
# pinned, in a venv under ~/.cache/outboxd, created on first use).
PROM_CLIENT_VERSION=0.21.1
PROM_VENV=${OUTBOXD_CACHE:-$HOME/.cache/outboxd}/venv-prom-$PROM_CLIENT_VERSION

prom_venv() {
    if ! "$PROM_VENV/bin/python" -c "import prometheus_client" 2>/dev/null; then
        log "creating $PROM_VENV (prometheus_client $PROM_CLIENT_VERSION from PyPI)"
        python3 -m venv "$PROM_VENV" || fail "python3 -m venv failed (install python3-venv)"
        "$PROM_VENV/bin/pip" install -q "prometheus_client==$PROM_CLIENT_VERSION" ||
            fail "pip install prometheus_client failed"
    fi
}

# free_port: a TCP port nobody listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# http_get URL [OUTFILE]: prints the status code; body to OUTFILE (or /dev/null).
http_get() {
    curl -s -m 10 -o "${2:-/dev/null}" -w '%{http_code}' "$1" || true
}

# scrape PORT FILE: fetches /metrics and validates it; FILE gets the parsed
# samples, one per line: name{labels} value.
scrape() {
    local port=$1 file=$2 raw
    raw="$file.raw"
    local code
    code=$(http_get "http://127.0.0.1:$port/metrics" "$raw")
    [ "$code" = 200 ] || fail "GET /metrics answered $code"
    "$PROM_VENV/bin/python" "$OUTBOXD_SOURCE_DIR/tests/tools/promcheck.py" "$raw" >"$file" ||
        fail "the exposition does not parse: $(head -c 2000 "$raw")"
}

# sample FILE NAME LABELS: the value of NAME{LABELS} (labels sorted, as
# promcheck prints them), or empty.
sample() {
    awk -v k="$2{$3}" '$1 == k { print $2 }' "$1"
}
