#!/usr/bin/env bash
# Installs the runtime image's packages from runtime-packages.txt (beside this script) and
# prepares the system for `launcher run`. Run as root inside the Dockerfile's runtime stage and,
# identically, inside scripts/image-smoke.sh's debootstrap root filesystem. Leaves no package
# lists and no downloaded .deb files behind.
#
# Usage: install-runtime.sh [--print SUITE]
#   --print SUITE  only print the packages of that suite (`bookworm` or `bookworm-backports`),
#                  one per line: the one parser of the list, also used by the smoke test.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list=$here/runtime-packages.txt

# Prints the packages of suite $1. Fails on a line that is not "<package> <known suite>".
packages_of() {
  awk -v want="$1" '
    { sub(/#.*/, "") }
    NF == 0 { next }
    NF != 2 || ($2 != "bookworm" && $2 != "bookworm-backports") {
      printf "runtime-packages.txt:%d: expected \"<package> bookworm|bookworm-backports\", got \"%s\"\n", NR, $0 > "/dev/stderr"
      bad = 1; next
    }
    $2 == want { print $1 }
    END { exit bad }
  ' "$list"
}

if [[ ${1:-} == --print ]]; then
  packages_of "${2:?--print needs a suite}"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
mapfile -t backports < <(packages_of bookworm-backports)
mapfile -t main < <(packages_of bookworm)

bash "$here/enable-backports.sh"
apt-get update -qq
apt_install() {
  apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "$@"
}
if ((${#backports[@]})); then
  apt_install -t bookworm-backports "${backports[@]}"
fi
if ((${#main[@]})); then
  apt_install "${main[@]}"
fi

# libvirt's QEMU driver refuses to start without the libvirt-qemu user, even when qemu runs as
# libvirtd's own uid. Debian's packages (measured in the smoke test's root filesystem) create it as
# uid 64055 with a group libvirt-qemu of gid 64055; should they not, the same ids are pinned here,
# because the passt pod runs as runAsUser/fsGroup 64055 (deploy/launcher-pod-passt.yaml) and the
# launcher's non-root mode needs a user record for its uid. scripts/image-smoke.sh checks the ids.
getent group libvirt-qemu >/dev/null 2>&1 || groupadd --system --gid 64055 libvirt-qemu
id -u libvirt-qemu >/dev/null 2>&1 || useradd --system --uid 64055 --gid 64055 --no-create-home \
  --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu

# In the root pod qemu runs as libvirtd's own uid, root (the launcher's qemu.conf). Debian ships
# /var/lib/libvirt/qemu owned by libvirt-qemu (0750); libvirtd would chown it to root at every
# start, which needs CAP_CHOWN. Owning it here keeps that capability out of the pod.
chown -R root:root /var/lib/libvirt/qemu

# The launcher's state directories (emptyDirs in a pod; present in the image for `docker run`).
mkdir -p /var/run/kubevirt-private /var/run/kubevirt/container-disks /var/run/libvirt

# No package lists, no .deb cache in the image.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
