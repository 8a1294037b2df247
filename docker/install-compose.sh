#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin on a Debian bookworm host.
#
# Why: bookworm only ships docker-compose v1 (python), which breaks against
# Docker Engine 20.10 when recreating containers (KeyError: 'ContainerConfig').
# No container registry or GitHub release download is reachable here, but the
# Debian mirror is, and trixie's `docker-compose` package (2.26.x) carries the
# Go v2 binary. We fetch just that .deb through a *temporary* apt source so the
# host's apt configuration and package state stay untouched.
set -euo pipefail

MIRROR="$("$(dirname "$0")/apt-mirror.sh")"  # the host's own, or $DEBIAN_MIRROR
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
TARGET="$PLUGIN_DIR/docker-compose"

# Fast no-op when a v2 plugin already works (idempotent; --force to redo).
if [[ "${1:-}" != "--force" ]] && docker compose version >/dev/null 2>&1; then
    docker compose version
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"

# bookworm's current debian-archive-keyring (2023.3+deb12u2 here) already holds the
# trixie signing keys, so the temporary source is verified; [trusted=yes] is
# only a fallback for hosts without the keyring file. An older keyring gives
# NO_PUBKEY: `apt-get install debian-archive-keyring` fixes that.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ -r "$keyring" ]]; then
    opt="[signed-by=$keyring]"
else
    opt="[trusted=yes]"
fi
echo "deb $opt $MIRROR trixie main" > "$tmp/sources.list"

# All apt state (source list, package lists, cache) lives in $tmp.
APT=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=-
     -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache"
     -o Dir::Cache::archives="$tmp/archives" -o Debug::NoLocking=1
     -o APT::Get::List-Cleanup=0
     # mktemp dirs are 0700, so apt's unprivileged _apt downloader can't write
     # there; run the fetch as root instead of warning about it.
     -o APT::Sandbox::User=root)
apt-get "${APT[@]}" -qq update
# `apt-get download` fetches only this package, no dependency resolution, and
# installs nothing: the Go binary only needs libc (GLIBC_2.34; bookworm has 2.36).
(cd "$tmp" && apt-get "${APT[@]}" -qq download docker-compose)

deb="$(ls "$tmp"/docker-compose_*.deb)"
echo "fetched $(basename "$deb")"
dpkg-deb -x "$deb" "$tmp/root"

# The v2 binary lives in the Docker CLI plugin dir inside the package;
# fall back to /usr/bin in case a future package moves it.
src=""
for p in usr/libexec/docker/cli-plugins/docker-compose usr/lib/docker/cli-plugins/docker-compose usr/bin/docker-compose; do
    if [[ -f "$tmp/root/$p" && ! -L "$tmp/root/$p" ]]; then src="$tmp/root/$p"; break; fi
done
[[ -n "$src" ]] || { echo "docker-compose binary not found in $deb" >&2; exit 1; }

echo "using ${src#"$tmp/root"} from the package"
install -D -m 0755 "$src" "$TARGET"
docker compose version
