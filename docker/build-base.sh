#!/usr/bin/env bash
# Build shardmill-base:bookworm, a minimal Debian image with python3 + venv,
# from the Debian mirror alone.
#
# Why: where no container registry is reachable, `FROM python:3.12-slim`
# cannot be pulled, but the Debian mirror can be, so we debootstrap a root
# filesystem and `docker import` it. Its python3 is 3.11, same as a bookworm
# host, so wheels built on the host fit the image.
# Usage: docker/build-base.sh [--force]   (skips if the image exists)
set -euo pipefail

IMAGE="${SHARDMILL_BASE_IMAGE:-shardmill-base:bookworm}"
MIRROR="$("$(dirname "$0")/apt-mirror.sh")"  # the host's own, or $DEBIAN_MIRROR

if [[ "${1:-}" != "--force" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE already exists (use --force to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
}

root="$(mktemp -d)"
# debootstrap mounts /proc and /sys inside the target; make sure a failed run
# does not leave them mounted before deleting the tree.
cleanup() {
    for m in proc sys dev/pts; do umount -l "$root/$m" 2>/dev/null || true; done
    rm -rf "$root"
}
trap cleanup EXIT

# minbase = essential packages + apt only. passwd gives useradd, which the
# Dockerfile needs (python:3.12-slim has it too).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$root" "$MIRROR"

# Drop downloaded .debs and apt lists: they are only size in an image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
# Docker supplies /dev, /proc, /sys at run time; don't ship device nodes.
tar --numeric-owner -C "$root" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$IMAGE"
docker image ls "$IMAGE"
