#!/usr/bin/env bash
# Installs everything the launcher, its tests, the demo and the benchmarks need, from Debian's
# packages. Idempotent: a second run installs nothing and takes a few seconds.
#
# libvirt 11.3 and qemu 10.0 come from bookworm-backports (the stack KubeVirt ships). The
# backports source is made by copying the machine's own Debian source entry and changing its
# suite, so no mirror address is written here (see ../shared/NOTES.md).
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
  echo "scripts/setup.sh must run as root (it installs Debian packages)" >&2
  exit 3
fi

export DEBIAN_FRONTEND=noninteractive

BACKPORTS_PKGS=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
)
MAIN_PKGS=(
  libxml2-utils qemu-utils xorriso ovmf passt nftables dnsmasq-base kea-admin
  isc-dhcp-client busybox-static linux-image-amd64 iproute2 procps cpio kmod
  util-linux iperf3 time jq kea-dhcp4-server g++ debootstrap
)
MAIN_PKGS+=(swtpm swtpm-tools) # domain: libvirt refuses <tpm> (emulator) without swtpm
MAIN_PKGS+=(python3 libseccomp2) # passt_e2e: a seccomp filter (libseccomp via ctypes) that denies user namespaces

enable_backports() {
  local target=/etc/apt/sources.list.d/launcher-backports.sources
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
    return 0
  fi
  local src=/etc/apt/sources.list.d/debian.sources
  if [[ -f $src ]]; then
    # First deb822 stanza that lists "bookworm" as a suite: copy it, change the suite.
    awk -v RS= -v ORS='\n\n' '/Suites:[^\n]*bookworm( |\n|$)/ && !done { print; done=1 }' "$src" \
      | sed -E 's/^Suites:.*/Suites: bookworm-backports/' >"$target.tmp"
  elif [[ -f /etc/apt/sources.list ]]; then
    target=/etc/apt/sources.list.d/launcher-backports.list
    grep -E '^deb .* bookworm( |$)' /etc/apt/sources.list | head -n1 \
      | sed -E 's/ bookworm( |$)/ bookworm-backports\1/' >"$target.tmp"
  else
    echo "no Debian source entry found to derive bookworm-backports from" >&2
    exit 3
  fi
  if [[ ! -s $target.tmp ]]; then
    echo "could not derive a bookworm-backports entry from $src" >&2
    exit 3
  fi
  mv "$target.tmp" "$target"
  log "enabled bookworm-backports in $target"
  APT_UPDATED=0
}

missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

APT_UPDATED=${APT_UPDATED:-0}
apt_update() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
}

enable_backports
mapfile -t need_bp < <(missing "${BACKPORTS_PKGS[@]}")
mapfile -t need_main < <(missing "${MAIN_PKGS[@]}")
if ((${#need_bp[@]} + ${#need_main[@]} > 0)); then
  apt_update
  if ((${#need_bp[@]})); then
    log "installing from bookworm-backports: ${need_bp[*]}"
    apt-get install -y -qq --no-install-recommends -t bookworm-backports \
      -o Dpkg::Options::=--force-confold "${need_bp[@]}" >/dev/null
  fi
  if ((${#need_main[@]})); then
    log "installing: ${need_main[*]}"
    apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confold "${need_main[@]}" >/dev/null
  fi
fi

# libvirt's QEMU driver needs this user to exist even when qemu runs as root (NOTES.md).
id -u libvirt-qemu >/dev/null 2>&1 || useradd -r -s /usr/sbin/nologin libvirt-qemu

# Check the versions that matter, so a wrong suite fails here and not deep inside a test.
lv=$(dpkg-query -W -f='${Version}' libvirt-daemon)
case $lv in
  9.*|8.*|7.*) echo "libvirt $lv is too old: bookworm-backports (11.x) is required" >&2; exit 3 ;;
esac
log "ok: libvirt $lv, qemu $(dpkg-query -W -f='${Version}' qemu-system-x86)"
