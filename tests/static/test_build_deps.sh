#!/usr/bin/env bash
# The build's required libraries are installed wherever the project is
# built: every pkg_check_modules(... REQUIRED ...) module of the CMake files
# must come from a Debian package that deploy/Dockerfile's build stage and
# scripts/install-deps.sh both install. (The Dockerfile once lacked
# libcurl4-openssl-dev and libhiredis-dev for months: no test builds the
# image, podman is not on the test machines.) The package of each module is
# the one that owns its .pc file on this machine (dpkg -S), so a module
# added to CMake without a package in those lists fails here.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log() { echo "[test_build_deps] $*"; }
fail() {
    echo "[test_build_deps] FAIL: $*" >&2
    exit 1
}
# The packages a file names: words that look like Debian package names,
# from its apt-get lines and their continuations.
packages_in() {
    tr -s ' \\\t' '\n' <"$1" | grep -E '^[a-z0-9][a-z0-9.+-]*-dev$' | sort -u
}
packages_in "$SRC/deploy/Dockerfile" >"$WORK/dockerfile.txt"
packages_in "$SRC/scripts/install-deps.sh" >"$WORK/install-deps.txt"
[ -s "$WORK/dockerfile.txt" ] || fail "no -dev packages found in deploy/Dockerfile"

modules=$(cat "$SRC/CMakeLists.txt" "$SRC"/src/*/CMakeLists.txt |
    sed -n 's/^ *pkg_check_modules([A-Za-z_]* REQUIRED [A-Z_ ]*\([^ )]*\)).*/\1/p' | sort -u)
[ "$(echo "$modules" | wc -w)" -ge 9 ] ||
    fail "found only these required modules in the CMake files, the parse is broken: $modules"
checked=0
for m in $modules; do
    dir=$(pkg-config --variable=pcfiledir "$m") || fail "pkg-config does not know $m"
    pkg=$(dpkg -S "$dir/$m.pc" 2>/dev/null | head -1 | cut -d: -f1)
    [ -n "$pkg" ] || pkg=$(dpkg -S "$(readlink -f "$dir/$m.pc")" | head -1 | cut -d: -f1)
    [ -n "$pkg" ] || fail "no Debian package owns $dir/$m.pc"
    grep -qx "$pkg" "$WORK/dockerfile.txt" ||
        fail "CMake requires $m (Debian package $pkg), which deploy/Dockerfile's build stage does not install: add $pkg to its apt-get line"
    grep -qx "$pkg" "$WORK/install-deps.txt" ||
        fail "CMake requires $m (Debian package $pkg), which scripts/install-deps.sh does not install"
    log "$m: $pkg (Dockerfile and install-deps.sh)"
    checked=$((checked + 1))
done
log "ok: $checked required modules, each installed by both"
