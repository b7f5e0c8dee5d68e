#!/usr/bin/env bash
# build-test-guest.sh [OUTDIR] — the tiny test guest: Debian's kernel plus a busybox-static
# initramfs (cpio newc, gzip) whose /init configures every NIC by DHCP and reports on the serial
# console. Prints two lines: the kernel path, then the initrd path.
#
# Cached by content (kernel version and image, busybox, this script) in <repo>/.cache/test-guest/;
# several callers at once are safe (flock). With OUTDIR, the two files are also copied there as
# OUTDIR/vmlinuz and OUTDIR/initrd.img and those paths are printed.
#
# The kernel is Debian's, unpacked to its ELF form (booted through the PVH entry: much faster
# under TCG); the file keeps the name "vmlinuz".
#
# Kernel command line: "console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests" plus the options below
# (no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check fails and panics):
#   guest.ping=IP[,IP...]   after DHCP (and IPv6 setup), `ping -c 3 -W 2` each: GUEST-PING ip=IP ok|fail
#   guest.listen=PORT       TCP listener answering every connection with "HELLO-FROM-GUEST\n":
#                           GUEST-LISTEN port=PORT
#   guest.ipv6=1            wait (up to 15 s; 40 s with guest.dhcp6=1) for a global address (SLAAC or DHCPv6) and an RA
#                           default route: GUEST-IP6 addrs=A[,B] defroute=GW|none
#   guest.dhcp6=1           also run ISC `dhclient -6` (DUID-LL) on every NIC, in the background
#                           from boot on (busybox has no DHCPv6 client): GUEST-DHCP6 iface=X
#                           ip=... dns=... search="..." or GUEST-DHCP6 iface=X failed (printed
#                           with GUEST-IP6; implies guest.ipv6=1)
#   guest.dhcp=0            do not run DHCP (GUEST-DHCP iface=X skipped)
#   guest.poweroff=SECONDS  SECONDS after GUEST-READY: GUEST-POWEROFF, then `poweroff -f`
#   guest.hold=1            never power off by itself and ignore the ACPI power button
# Without guest.hold, an ACPI power-button press (virsh shutdown, SIGTERM to the launcher) prints
# GUEST-ACPI-POWEROFF and powers off. Serial lines, in order:
#   GUEST-BOOT kernel=VER
#   GUEST-DHCP iface=eth0 ip=... mask=24 router=... dns=... mtu=... hostname=... domain=...
#              search="..." staticroutes="..."        (one per NIC; or "GUEST-DHCP iface=eth0 failed";
#                                                     "GUEST-DHCP none" when the guest has no NIC)
#   GUEST-DHCP6 ...  GUEST-IP6 ...  GUEST-PING ...  GUEST-LISTEN ...  GUEST-READY  [GUEST-POWEROFF]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/$(basename "${BASH_SOURCE[0]}")"
CACHE=${TEST_GUEST_CACHE:-$REPO/.cache/test-guest}
OUTDIR=${1:-}

die() {
  echo "build-test-guest.sh: error: $*" >&2
  exit 1
}

# The newest installed Debian kernel that has its modules (linux-image-amd64).
pick_kernel() {
  if [[ -n ${TEST_GUEST_KERNEL_VERSION:-} ]]; then
    echo "$TEST_GUEST_KERNEL_VERSION"
    return
  fi
  local v best
  best=$(for v in /boot/vmlinuz-*; do
    v=${v#/boot/vmlinuz-}
    [[ -d /lib/modules/$v/kernel ]] && echo "$v"
  done | sort -V | tail -n1)
  [[ -n $best ]] || die "no /boot/vmlinuz-* with modules in /lib/modules (install linux-image-amd64: scripts/setup.sh)"
  echo "$best"
}

KVER=$(pick_kernel)
KERNEL=/boot/vmlinuz-$KVER
[[ -r $KERNEL ]] || die "cannot read $KERNEL"
BUSYBOX=${TEST_GUEST_BUSYBOX:-/bin/busybox}
# ISC dhclient (isc-dhcp-client) for guest.dhcp6=1, with the shared libraries it needs.
DHCLIENT=${TEST_GUEST_DHCLIENT:-/sbin/dhclient}
[[ -x $DHCLIENT ]] || die "no $DHCLIENT (install isc-dhcp-client: scripts/setup.sh)"
[[ -x $BUSYBOX ]] || die "no $BUSYBOX (install busybox-static: scripts/setup.sh)"
# Static (non-PIE) executables have ELF type ET_EXEC (2); Debian's dynamic busybox is PIE (3).
if [[ $(od -An -tu1 -j16 -N1 "$BUSYBOX" | tr -d ' ') != 2 ]]; then
  die "$BUSYBOX is dynamically linked; the initramfs needs busybox-static (scripts/setup.sh)"
fi
for t in cpio gzip modinfo sha256sum flock ldd; do
  command -v "$t" >/dev/null || die "missing tool $t (scripts/setup.sh installs cpio, kmod, coreutils, util-linux)"
done

KEY=$({
  echo "$KVER"
  sha256sum "$KERNEL" "$BUSYBOX" "$DHCLIENT" "$SELF" | cut -d' ' -f1
} | sha256sum | cut -c1-16)
DEST=$CACHE/$KVER-$KEY

emit() {
  if [[ -n $OUTDIR ]]; then
    mkdir -p "$OUTDIR"
    cp -f "$DEST/vmlinuz" "$OUTDIR/vmlinuz"
    cp -f "$DEST/initrd.img" "$OUTDIR/initrd.img"
    echo "$(cd "$OUTDIR" && pwd)/vmlinuz"
    echo "$(cd "$OUTDIR" && pwd)/initrd.img"
  else
    echo "$DEST/vmlinuz"
    echo "$DEST/initrd.img"
  fi
}

if [[ -f $DEST/.complete ]]; then
  emit
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ -f $DEST/.complete ]]; then
  emit
  exit 0
fi

WORK=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc/acpi/PWRF,proc,sys,dev,tmp,run,var/run,lib/modules,root}
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
# Applet links made here, not by `busybox --install` at boot (every instruction counts under TCG).
"$BUSYBOX" --list-full | while read -r a; do
  [[ -e $ROOT/$a || -L $ROOT/$a ]] || ln -s /bin/busybox "$ROOT/$a"
done

# dhclient and its shared libraries (with the dynamic loader), at their host paths.
mkdir -p "$ROOT/var/lib/dhcp" "$ROOT/etc/dhcp"
cp "$DHCLIENT" "$ROOT/sbin/dhclient"
for lib in $(ldd "$DHCLIENT" | grep -o '/[^ ]*'); do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
echo 'request dhcp6.name-servers, dhcp6.domain-search;' >"$ROOT/etc/dhcp/dhclient6.conf"

# Kernel modules, dependencies first (virtio as modules in Debian's kernel; see NOTES.md).
WANT=(virtio_pci virtio_net virtio_blk virtio_console virtio_rng e1000 e1000e 8139cp button evdev)
declare -A SEEN=()
ORDER=()
add_mod() {
  local m=$1 d deps
  [[ -n ${SEEN[$m]:-} ]] && return 0
  SEEN[$m]=1
  deps=$(modinfo -k "$KVER" -F depends "$m" 2>/dev/null) || {
    echo "build-test-guest.sh: warning: module $m not found for $KVER (skipped)" >&2
    return 0
  }
  for d in ${deps//,/ }; do add_mod "$d"; done
  ORDER+=("$m")
}
for m in "${WANT[@]}"; do add_mod "$m"; done
: >"$ROOT/etc/modules.order"
for m in "${ORDER[@]}"; do
  f=$(modinfo -k "$KVER" -F filename "$m")
  [[ $f == /* ]] || continue # built in
  case $f in
    *.ko) cp "$f" "$ROOT/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *) die "unknown module format $f" ;;
  esac
  echo "$m" >>"$ROOT/etc/modules.order"
done

cat >"$ROOT/etc/udhcpc/script" <<'EOF'
#!/bin/sh
# udhcpc hook: apply the lease (address, MTU, routes, hostname, DNS) and record it for /init.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-32}" dev "$interface" ${broadcast:+broadcast $broadcast}
    if [ -n "$staticroutes" ]; then
      # RFC 3442: with classless static routes the router option is ignored.
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        if [ "$2" = 0.0.0.0 ]; then
          ip route replace "$1" dev "$interface"
        else
          ip route replace "$1" via "$2" dev "$interface" onlink
        fi
        shift 2
      done
    elif [ -n "$router" ]; then
      for r in $router; do
        ip route replace default via "$r" dev "$interface" onlink
        break
      done
    fi
    [ -n "$hostname" ] && hostname "$hostname"
    {
      [ -n "$domain" ] && echo "domain $domain"
      [ -n "$search" ] && echo "search $search"
      for d in $dns; do echo "nameserver $d"; done
    } >/etc/resolv.conf
    comma() { echo "$*" | tr ' ' ','; }
    echo "GUEST-DHCP iface=$interface ip=$ip mask=$mask router=$(comma $router) dns=$(comma $dns) mtu=$mtu hostname=$hostname domain=$domain search=\"$search\" staticroutes=\"$staticroutes\"" >"/tmp/lease.$interface"
    ;;
esac
exit 0
EOF

cat >"$ROOT/etc/dhclient6-script" <<'EOF'
#!/bin/sh
# dhclient -6 hook: apply the IA_NA address (routes come from router advertisements) and
# record the lease for /init.
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    [ -n "$new_ip6_address" ] || exit 0
    ip -6 addr add "$new_ip6_address/${new_ip6_prefixlen:-128}" dev "$interface" 2>/dev/null
    echo "GUEST-DHCP6 iface=$interface ip=$new_ip6_address/${new_ip6_prefixlen:-128} dns=$(echo $new_dhcp6_name_servers | tr ' ' ,) search=\"$new_dhcp6_domain_search\"" >"/tmp/lease6.$interface"
    ;;
esac
exit 0
EOF

cat >"$ROOT/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo GUEST-ACPI-POWEROFF >/dev/console
sync
poweroff -f
EOF

cat >"$ROOT/bin/hello" <<'EOF'
#!/bin/sh
echo HELLO-FROM-GUEST
EOF

cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
# The kernel starts /init without a console: attach it, or nothing reaches the serial log.
exec </dev/console >/dev/console 2>&1
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "GUEST-BOOT kernel=$(uname -r)"

# Is there a usable (not tentative) IPv6 address of scope $1 (/proc/net/if_inet6: 20 link,
# 00 global), on device $2 if given? (busybox ip cannot filter on flags.)
has_v6() {
  while read -r _a _i _p scope flags dev; do
    [ "$scope" = "$1" ] || continue
    [ -z "$2" ] || [ "$dev" = "$2" ] || continue
    case "$flags" in [4567cdefCDEF]?) continue ;; esac
    return 0
  done </proc/net/if_inet6
  return 1
}

# Load only the drivers whose devices are present (each insmod costs time under TCG); the order
# file lists dependencies first.
IDS=$(cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device 2>/dev/null | tr '\n' ' ')
want() {
  case "$1" in
    virtio*|failover|net_failover) case "$IDS" in *0x1af4*) return 0 ;; esac; return 1 ;;
    e1000) case "$IDS" in *0x100e*|*0x100f*|*0x1004*) return 0 ;; esac; return 1 ;;
    e1000e) case "$IDS" in *0x10d3*) return 0 ;; esac; return 1 ;;
    8139cp|mii) case "$IDS" in *0x8139*) return 0 ;; esac; return 1 ;;
    *) return 0 ;;
  esac
}
for m in $(cat /etc/modules.order); do
  want "$m" && insmod "/lib/modules/$m.ko" 2>/dev/null
done

PING="" LISTEN="" IPV6=0 POWEROFF="" HOLD=0 DHCP=1 DHCP6=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    guest.ping=*) PING=$(echo "${w#*=}" | tr , ' ') ;;
    guest.listen=*) LISTEN=${w#*=} ;;
    guest.ipv6=*) IPV6=${w#*=} ;;
    guest.poweroff=*) POWEROFF=${w#*=} ;;
    guest.hold=*) HOLD=${w#*=} ;;
    guest.dhcp=*) DHCP=${w#*=} ;;
    guest.dhcp6=*) DHCP6=${w#*=}; [ "$DHCP6" = 1 ] && IPV6=1 ;;
  esac
done

hostname guest
ip link set lo up
mkdir -p /var/log
[ "$HOLD" = 1 ] || acpid -f -c /etc/acpi -l /tmp/acpid.log &

NICS=""
for n in $(ls /sys/class/net); do
  case "$n" in lo|sit*|tunl*|ip6tnl*) ;; *) NICS="$NICS $n" ;; esac
done
for n in $NICS; do ip link set dev "$n" up; done
if [ "$DHCP6" = 1 ]; then
  # In the background, beside DHCPv4: wait for the link-local address (dhclient cannot bind a
  # tentative one), then one attempt (-1); on success dhclient stays as a daemon.
  for n in $NICS; do
    (
      i=0
      while [ $i -lt 100 ] && ! has_v6 20 "$n"; do
        i=$((i + 1))
        sleep 0.1
      done
      dhclient -6 -1 -v -D LL -cf /etc/dhcp/dhclient6.conf -sf /etc/dhclient6-script \
        -lf "/var/lib/dhcp/dhclient6.$n.leases" -pf "/run/dhclient6.$n.pid" "$n" \
        >"/tmp/dhclient6.$n.log" 2>&1
    ) &
  done
fi
if [ -z "$NICS" ]; then
  echo "GUEST-DHCP none"
elif [ "$DHCP" = 1 ]; then
  pids=""
  for n in $NICS; do
    udhcpc -f -q -n -t 5 -T 2 -i "$n" -s /etc/udhcpc/script \
      -O search -O staticroutes -O mtu -O hostname -O domain >"/tmp/udhcpc.$n.log" 2>&1 &
    pids="$pids $!"
  done
  wait $pids
  for n in $NICS; do
    if [ -s "/tmp/lease.$n" ]; then
      cat "/tmp/lease.$n"
    else
      echo "GUEST-DHCP iface=$n failed"
      sed 's/^/  udhcpc: /' "/tmp/udhcpc.$n.log"
    fi
  done
fi

if [ "$IPV6" = 1 ]; then
  # Wall-clock bound (each iteration costs several process starts, slow under TCG).
  addrs="" defroute="" limit=15
  [ "$DHCP6" = 1 ] && limit=40
  end=$(($(date +%s) + limit))
  while :; do
    addrs=""
    has_v6 00 && addrs=$(ip -6 -o addr show | grep 'scope global' | awk '{print $4}' | tr '\n' ',' | sed 's/,$//')
    defroute=$(ip -6 route show default | awk '{print $3; exit}')
    [ -n "$addrs" ] && [ -n "$defroute" ] && break
    [ "$(date +%s)" -lt "$end" ] || break
    sleep 0.2
  done
  if [ "$DHCP6" = 1 ]; then
    for n in $NICS; do
      if [ -s "/tmp/lease6.$n" ]; then
        cat "/tmp/lease6.$n"
      else
        echo "GUEST-DHCP6 iface=$n failed"
        sed 's/^/  dhclient: /' "/tmp/dhclient6.$n.log" 2>/dev/null | tail -n 15
      fi
    done
  fi
  echo "GUEST-IP6 addrs=${addrs:-none} defroute=${defroute:-none}"
fi

for t in $PING; do
  if ping -c 3 -W 2 "$t" >/tmp/ping.log 2>&1; then
    echo "GUEST-PING ip=$t ok"
  else
    echo "GUEST-PING ip=$t fail"
  fi
done

if [ -n "$LISTEN" ]; then
  nc -ll -p "$LISTEN" -e /bin/hello &
  # Report only once the socket listens, so a peer acting on the marker is not refused.
  i=0
  while [ $i -lt 50 ] && ! netstat -ltn 2>/dev/null | grep -q ":$LISTEN "; do
    i=$((i + 1))
    sleep 0.1
  done
  echo "GUEST-LISTEN port=$LISTEN"
fi

echo GUEST-READY
if [ -n "$POWEROFF" ] && [ "$HOLD" != 1 ]; then
  sleep "$POWEROFF"
  echo GUEST-POWEROFF
  sync
  poweroff -f
fi
while true; do sleep 3600; done
EOF
chmod 0755 "$ROOT/init" "$ROOT/etc/udhcpc/script" "$ROOT/etc/dhclient6-script" "$ROOT/etc/acpi/PWRF/00000080" "$ROOT/bin/hello"

mkdir -p "$WORK/out"
# Boot the uncompressed ELF kernel through its PVH entry when the kernel has one: under TCG,
# unpacking Debian's xz-compressed bzImage takes most of the boot time (tens of seconds on a
# loaded machine). qemu (and libvirt's <kernel>) boot such an ELF directly. Fallback: bzImage.
extract_vmlinux() {
  local magic tool off
  for magic in $'\xfd7zXZ\x00':xz $'\x28\xb5\x2f\xfd':zstd $'\x1f\x8b\x08':gzip; do
    tool=${magic##*:}
    command -v "$tool" >/dev/null || continue
    for off in $(LC_ALL=C grep -abo "${magic%:*}" "$KERNEL" | cut -d: -f1 | head -n 5); do
      tail -c +$((off + 1)) "$KERNEL" | "$tool" -dc 2>/dev/null >"$WORK/vmlinux" || true
      if [[ $(head -c 4 "$WORK/vmlinux" | od -An -c | tr -d ' ') == 177ELF ]]; then
        return 0
      fi
    done
  done
  return 1
}
if grep -qx 'CONFIG_PVH=y' "/boot/config-$KVER" 2>/dev/null && extract_vmlinux; then
  mv "$WORK/vmlinux" "$WORK/out/vmlinuz"
else
  echo "build-test-guest.sh: note: booting the compressed bzImage (no PVH ELF could be made)" >&2
  cp "$KERNEL" "$WORK/out/vmlinuz"
fi
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner 0:0) | gzip -9n >"$WORK/out/initrd.img"
touch "$WORK/out/.complete"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
# Older builds (another kernel or script version) are not needed any more.
for old in "$CACHE"/*/; do
  [[ ${old%/} == "$DEST" ]] || rm -rf "${old%/}"
done
emit
