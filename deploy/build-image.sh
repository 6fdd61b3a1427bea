#!/usr/bin/env bash
# deploy/build-image.sh - build the outboxd container image with podman.
#
#   deploy/build-image.sh [TAG]          (default outboxd:0.1.0; run as root)
#
# With a registry at hand this is just
#   podman build -f deploy/Dockerfile -t outboxd:0.1.0 .
# Without one (air-gapped hosts, this project's CI), the Debian base images
# are made locally with debootstrap from the Debian archive and imported
# under the names the Dockerfile uses; BASE_DIR keeps them between runs.
# Set PODMAN_ISOLATION=chroot where the OCI runtime cannot create containers
# (nested sandboxes without cgroup delegation).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=${1:-outboxd:0.1.0}
RELEASE=${DEBIAN_RELEASE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_DIR=${BASE_DIR:-$HOME/.cache/outboxd/debootstrap-$RELEASE}
say() { printf 'build-image: %s\n' "$*" >&2; }

command -v podman >/dev/null || { say "podman missing: apt-get install podman"; exit 1; }

if ! podman image exists "localhost/debian:$RELEASE"; then
    command -v debootstrap >/dev/null || { say "debootstrap missing: apt-get install debootstrap"; exit 1; }
    if [[ ! -x $BASE_DIR/bin/sh ]]; then
        say "debootstrap --variant=minbase $RELEASE into $BASE_DIR (from $MIRROR)"
        rm -rf "$BASE_DIR"
        debootstrap --variant=minbase "$RELEASE" "$BASE_DIR" "$MIRROR" >&2
        # Package lists and caches are not part of an image.
        rm -rf "$BASE_DIR"/var/cache/apt/archives/*.deb "$BASE_DIR"/var/lib/apt/lists/*
    fi
    say "importing the base as localhost/debian:$RELEASE (and -slim)"
    tar -C "$BASE_DIR" -c . | podman import - "localhost/debian:$RELEASE" >/dev/null
    podman tag "localhost/debian:$RELEASE" "localhost/debian:$RELEASE-slim"
fi

args=(build --pull=never --network=host --build-arg "DEBIAN_RELEASE=$RELEASE" -f "$ROOT/deploy/Dockerfile" -t "$TAG")
[[ -n ${PODMAN_ISOLATION:-} ]] && args+=(--isolation="$PODMAN_ISOLATION")
say "podman ${args[*]} $ROOT"
podman "${args[@]}" "$ROOT"
podman image inspect "$TAG" --format 'build-image: {{.Id}} user {{.Config.User}}, {{.Size}} bytes' >&2
