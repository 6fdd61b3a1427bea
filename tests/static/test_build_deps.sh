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
# The -dev packages a file names (words ending in -dev), from its first
# line through the line before its Nth FROM (the Dockerfile's build stage:
# N=2), or the whole file (N=0).
packages_in() {
    awk -v n="$2" 'n > 0 && /^FROM / && ++from >= n { exit } { print }' "$1" |
        tr -s ' \\\t' '\n' | grep -E '^[a-z0-9][a-z0-9.+-]*-dev$' | sort -u
}
packages_in "$SRC/deploy/Dockerfile" 2 >"$WORK/dockerfile.txt"
packages_in "$SRC/scripts/install-deps.sh" 0 >"$WORK/install-deps.txt"
[ -s "$WORK/dockerfile.txt" ] || fail "no -dev packages found in deploy/Dockerfile's build stage"

# Every pkg_check_modules call (one per line once the CMake files are
# joined and split at each call), its REQUIRED ones' module names: the
# words after the prefix that are not keywords, version bounds cut off.
calls=$(cat "$SRC/CMakeLists.txt" "$SRC"/src/*/CMakeLists.txt | sed 's/#.*//' | tr '\n' ' ' |
    sed 's/pkg_check_modules *(/\n&/g' | grep '^pkg_check_modules' | sed 's/).*//')
n_required=$(echo "$calls" | grep -cw REQUIRED || true)
modules=$(echo "$calls" | grep -w REQUIRED | sed 's/pkg_check_modules *(//' |
    awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^(REQUIRED|QUIET|IMPORTED_TARGET|GLOBAL|NO_CMAKE_PATH|NO_CMAKE_ENVIRONMENT_PATH)$/) print $i }' |
    sed 's/[<>=].*//' | sort -u)
[ "$n_required" -ge 1 ] && [ -n "$modules" ] || fail "no required pkg_check_modules found in the CMake files"
checked=0
for m in $modules; do
    dir=$(pkg-config --variable=pcfiledir "$m") || fail "pkg-config does not know $m"
    pkg=$(dpkg -S "$dir/$m.pc" 2>/dev/null | head -1 | cut -d: -f1 || true)
    [ -n "$pkg" ] || pkg=$(dpkg -S "$(readlink -f "$dir/$m.pc")" 2>/dev/null | head -1 | cut -d: -f1 || true)
    [ -n "$pkg" ] || fail "no Debian package owns $dir/$m.pc"
    grep -qxF "$pkg" "$WORK/dockerfile.txt" ||
        fail "CMake requires $m (Debian package $pkg), which deploy/Dockerfile's build stage does not install: add $pkg to its apt-get line"
    grep -qxF "$pkg" "$WORK/install-deps.txt" ||
        fail "CMake requires $m (Debian package $pkg), which scripts/install-deps.sh does not install"
    log "$m: $pkg (Dockerfile and install-deps.sh)"
    checked=$((checked + 1))
done
log "ok: $checked modules of $n_required required pkg_check_modules calls, each installed by both"
