#!/usr/bin/env bash
# Print the Debian mirror this host's apt already uses (its main archive, not security), so
# the build scripts fetch from wherever this machine is allowed to: nothing names a host here.
# $DEBIAN_MIRROR wins when set. Sources are read from $APT_SOURCES (default /etc/apt), in
# both formats: sources.list lines and deb822 *.sources files.
set -euo pipefail

if [[ -n "${DEBIAN_MIRROR:-}" ]]; then
    echo "$DEBIAN_MIRROR"
    exit 0
fi
dir="${APT_SOURCES:-/etc/apt}"
files=()
[[ -f "$dir/sources.list" ]] && files+=("$dir/sources.list")
for f in "$dir"/sources.list.d/*.list "$dir"/sources.list.d/*.sources; do
    [[ -f "$f" ]] && files+=("$f")
done

# One "URI SUITES..." line per source; a mirror is one whose suites include a Debian codename
# itself (bookworm, trixie), not only bookworm-security or bookworm-updates.
CODENAMES=" buster bullseye bookworm trixie forky sid "
sources() {
    local f
    for f in "${files[@]}"; do
        case "$f" in
        *.sources)
            # deb822 stanzas: URIs and Suites fields, a blank line between stanzas.
            awk 'BEGIN{RS=""} /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ {
                    u=""; s="";
                    n=split($0, line, "\n");
                    for (i=1; i<=n; i++) {
                        if (line[i] ~ /^URIs:/) { u=line[i]; sub(/^URIs:[ \t]*/, "", u) }
                        if (line[i] ~ /^Suites:/) { s=line[i]; sub(/^Suites:[ \t]*/, "", s) }
                    }
                    if (u != "") print u, s
                }' "$f" ;;
        *)
            # deb [options] URI SUITE COMPONENTS...
            sed -E -n 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+).*/\2 \3/p' "$f" ;;
        esac
    done
}

while read -r uri suites; do
    for suite in $suites; do
        if [[ "$CODENAMES" == *" $suite "* && "$uri" != *security* ]]; then
            echo "${uri%/}"
            exit 0
        fi
    done
done < <(sources)

echo "apt-mirror.sh: no Debian mirror found in $dir/sources.list or $dir/sources.list.d/;" \
    "set DEBIAN_MIRROR to the mirror's URL (the one apt uses)" >&2
exit 1
