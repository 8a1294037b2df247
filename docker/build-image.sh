#!/usr/bin/env bash
# Build shardmill:latest with no Python package index reachable from inside Docker (only the
# Debian mirror the host's apt uses, for etcd).
#
#   1. pick a base image: python:3.12-slim if it is present or can be pulled,
#      else shardmill-base:bookworm built from the Debian mirror (build-base.sh);
#      BASE_IMAGE=... in the environment overrides the choice.
#   2. on the host, build shardmill's wheel into docker/dist/own and gather its
#      dependencies' wheels, matching the base image's Python, into dist/deps (kept
#      in ~/.cache while pyproject.toml is unchanged); the Dockerfile installs each
#      with --no-index, in a layer of its own.
#   3. docker build with docker/ as the (small) context; tags $TAG and $TAG-build
#      (the build stage). An unchanged tree gives the same wheels byte for byte, so
#      the rebuild is all cache hits (about 10 s).
# Usage: docker/build-image.sh [extra docker build args...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
wheels="$here/dist/wheels"
TAG="${SHARDMILL_IMAGE:-shardmill:latest}"
PY="${PYTHON:-python3}"

# --- 1. base image
if [[ -z "${BASE_IMAGE:-}" ]]; then
    if docker image inspect python:3.12-slim >/dev/null 2>&1 ||
       timeout 120 docker pull -q python:3.12-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.12-slim
    else
        echo "no registry access: using a debootstrapped base image"
        "$here/build-base.sh"
        BASE_IMAGE=shardmill-base:bookworm
    fi
fi
base_py="$(docker run --rm --entrypoint python3 "$BASE_IMAGE" \
           -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
host_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
echo "base image $BASE_IMAGE (Python $base_py), host Python $host_py"

# --- 2. wheels. Build from a copy of the tree so setuptools' build/ and
# *.egg-info don't land in the work tree (and stale ones aren't reused).
src="$(mktemp -d)"
trap 'rm -rf "$src"' EXIT
tar -C "$repo" --exclude=./.git --exclude=./docker --exclude=./build \
    --exclude='*.egg-info' --exclude=.venv --exclude=__pycache__ -c . | tar -C "$src" -x
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Byte-reproducible wheels: with fixed zip timestamps an unchanged tree gives identical
# wheels, so Docker's layer cache (keyed on file content) makes the rebuild a no-op, and any
# change to what goes into a wheel busts it. 315532800 = 1980-01-01, the zip format's epoch.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-315532800}"
own="$here/dist/own"
deps="$here/dist/deps"
rm -rf "$own" && mkdir -p "$own"
"$PY" -m pip wheel -q --no-deps --wheel-dir "$own" "$src"
# The dependencies' wheels (dist/deps, installed in a layer of their own) are kept from one
# build to the next, also across checkouts (a cache under ~/.cache), while what decides them
# is the same: pyproject.toml and both Pythons. Gathering them asks the package index about
# each (~25 s); a code change alone skips that.
key="$(sha256sum <"$repo/pyproject.toml" | cut -c1-16)-py$base_py-py$host_py"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/shardmill/docker-deps/$key"
if [[ ! -f "$cache/.complete" ]]; then
    rm -rf "$wheels" "$cache" && mkdir -p "$wheels" "$cache"
    if [[ "$base_py" == "$host_py" ]]; then
        # Same interpreter version: host-built wheels fit; sdists get built too.
        "$PY" -m pip wheel -q --wheel-dir "$wheels" "$src"
    else
        # Different Python (e.g. 3.12 image, 3.11 host): binary wheels of the dependencies
        # for the image's Python (our own wheel is pure Python).
        arch="$(uname -m)"
        plats=()
        for p in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux1; do
            plats+=(--platform "${p}_${arch}")
        done
        "$PY" -m pip download -q --only-binary=:all: --implementation cp \
            --python-version "$base_py" "${plats[@]}" \
            --dest "$wheels" "$own"/shardmill-*.whl
    fi
    for whl in "$wheels"/*.whl; do
        case "$(basename "$whl")" in
            shardmill-*) ;;
            *) cp "$whl" "$cache/" ;;
        esac
    done
    touch "$cache/.complete"
fi
rm -rf "$deps" && mkdir -p "$deps" && cp "$cache"/*.whl "$deps/"
ls "$own" "$deps"

# --- 3. image (classic builder works; BuildKit is used if the CLI has buildx).
# The build stage gets a tag of its own ($TAG-build) so that the image a rebuild replaces
# can be deleted: every code change would otherwise leave ~450 MB of untagged images behind.
# Unchanged wheels mean both builds are cache hits and nothing is replaced.
old_ids="$(docker image inspect -f '{{.Id}}' "$TAG" "$TAG-build" 2>/dev/null || true)"
# etcd (the `ha` profile's arbiter) comes from the mirror the host's apt uses, when it has one.
mirror="$("$here/apt-mirror.sh" 2>/dev/null || true)"
build=(docker build -f "$here/Dockerfile" --build-arg BASE_IMAGE="$BASE_IMAGE"
       --build-arg DEBIAN_MIRROR="$mirror")
"${build[@]}" --target build -t "$TAG-build" "$@" "$here"
"${build[@]}" -t "$TAG" "$@" "$here"
new_ids="$(docker image inspect -f '{{.Id}}' "$TAG" "$TAG-build")"
for id in $old_ids; do
    # Still used (a container, another tag): rm refuses, and that is fine.
    grep -qx "$id" <<<"$new_ids" || docker image rm "$id" >/dev/null 2>&1 || true
done
docker run --rm "$TAG" --help >/dev/null && echo "built $TAG"
