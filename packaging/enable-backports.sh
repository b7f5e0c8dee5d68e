#!/usr/bin/env bash
# Enables bookworm-backports without writing any mirror address: copies this system's own Debian
# source entry (deb822 /etc/apt/sources.list.d/debian.sources, as in the debian:bookworm* images)
# and changes its suite. The same way as scripts/setup.sh. Used by the Dockerfile's two stages and
# by scripts/image-smoke.sh inside its root filesystem. Idempotent.
set -euo pipefail

target=/etc/apt/sources.list.d/backports.sources
src=/etc/apt/sources.list.d/debian.sources

if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  exit 0
fi
if [[ ! -f $src ]]; then
  echo "enable-backports: $src is missing: no Debian source entry to derive bookworm-backports from" >&2
  exit 3
fi
# The first stanza that lists the suite "bookworm": copy it, make its suite bookworm-backports.
awk -v RS= -v ORS='\n\n' '/Suites:[^\n]*bookworm( |\n|$)/ && !done { print; done=1 }' "$src" \
  | sed -E 's/^Suites:.*/Suites: bookworm-backports/' >"$target.tmp"
if ! grep -q '^Suites: bookworm-backports$' "$target.tmp"; then
  rm -f "$target.tmp"
  echo "enable-backports: no stanza with suite bookworm in $src" >&2
  exit 3
fi
mv "$target.tmp" "$target"
echo "enable-backports: wrote $target" >&2
