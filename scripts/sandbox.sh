#!/usr/bin/env bash
# sandbox.sh — make and remove realistic fake launcher pods on one machine (tests and the demo).
#
# A sandbox NAME is:
#   netns NAME        the pod: eth0 (a veth, MTU 1450 by default), lo; persistent private mount and
#                     UTS namespaces (tmpfs /run, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
#                     /var/cache/libvirt; the pod's /etc/resolv.conf, /etc/hosts, /etc/hostname;
#                     a sysfs of the pod's own netns on /sys; its own hostname)
#   netns NAME-node   the node: the other end of eth0 ("vp-NAME"), the pod's gateway, forwarding on,
#                     an uplink veth "up-NAME" towards netns NAME-stub (a "remote" host 10.244.0.254)
#   netns NAME-g<k>   stand-ins for a VM's NIC (add-guest), each with its own mount/UTS namespaces
#   netns NAME-node2  a second "node" for Multus-style secondary interfaces (add-secondary)
# State lives in /run/launcher-sandbox/NAME (a private bind mount, so namespaces can be pinned).
# NAME: 1-8 characters [a-z0-9] (interface names such as "vp-NAME" must fit 15 characters).
# See docs/sandbox.md for what each style models.
set -euo pipefail

STATE_ROOT=/run/launcher-sandbox
NETNS_DIR=/run/netns
PROG=${0##*/}

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}
log() { [[ -n ${SANDBOX_VERBOSE:-} ]] && echo "$PROG: $*" >&2 || true; }

usage() {
  cat <<'EOF'
usage:
  sandbox.sh create NAME [--style flannel|calico|dual] [--mtu 1450] [--hostname HOST]
  sandbox.sh exec NAME -- CMD...     run CMD inside the pod (net+mount+UTS); exit code passes through
                                     (NAME may also be a guest namespace NAME-g<k>)
  sandbox.sh node NAME -- CMD...     run CMD in the pod's node namespace (NAME-node)
  sandbox.sh node2 NAME -- CMD...    run CMD in the secondary node namespace (NAME-node2)
  sandbox.sh info NAME               one JSON object describing the sandbox
  sandbox.sh snapshot NAME           normalized links/addresses/routes (v4+v6), nft ruleset and sysctls
  sandbox.sh add-guest NAME --bridge BR --mac MAC [--ifname PORT] [--guest-ifname eth0]
                                     prints the new guest netns name NAME-g<k>
  sandbox.sh add-secondary NAME --ifname net1 [--style flannel|l2] [--subnet 10.245.1.0/24]
                                     prints one JSON object describing the secondary network
  sandbox.sh destroy NAME            remove everything of NAME; idempotent
  sandbox.sh destroy-all             destroy every sandbox this script made
  sandbox.sh list                    names of existing sandboxes
EOF
}

need_root() {
  [[ $EUID -eq 0 ]] || die "must run as root (it creates network and mount namespaces)"
}

check_tools() {
  local t missing=()
  for t in ip nsenter unshare mount umount jq nft sysctl flock findmnt; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (run scripts/setup.sh)"
}

valid_name() {
  [[ $1 =~ ^[a-z0-9]{1,8}$ ]] || die "invalid sandbox name \"$1\": use 1-8 characters [a-z0-9] (veth names such as vp-$1 must fit 15 characters)"
}

# The state root must be a private mount: the kernel refuses to bind a namespace file into a
# shared mount ("unshare: mount ... failed: Invalid argument").
ensure_state_root() {
  mkdir -p "$STATE_ROOT"
  exec 9>"$STATE_ROOT.lock"
  flock 9
  if ! mountpoint -q "$STATE_ROOT"; then
    mount --bind "$STATE_ROOT" "$STATE_ROOT"
  fi
  mount --make-private "$STATE_ROOT"
  flock -u 9
  exec 9>&-
}

# Test hook: SANDBOX_TEST_FAIL_AT=<point> makes create fail at that point (tests/sandbox.rs proves
# that a half-made sandbox is removed). Points: netns, links, mntns.
fail_point() {
  [[ ${SANDBOX_TEST_FAIL_AT:-} != "$1" ]] || die "injected failure at \"$1\" (SANDBOX_TEST_FAIL_AT)"
}

ns_exists() { [[ -e $NETNS_DIR/$1 ]]; }

sd() { echo "$STATE_ROOT/$1"; }

meta_get() { # NAME KEY
  local f
  f="$(sd "$1")/meta"
  [[ -f $f ]] || die "no sandbox \"$1\" (create it with: $PROG create $1)"
  sed -n "s/^$2=//p" "$f" | tail -n1
}
meta_set() { # NAME KEY VALUE
  echo "$2=$3" >>"$(sd "$1")/meta"
}

in_ns() { # NETNS CMD...
  local ns=$1
  shift
  nsenter --net="$NETNS_DIR/$ns" -- "$@"
}

sysctl_ns() { # NETNS key=value...
  local ns=$1
  shift
  in_ns "$ns" sysctl -q -w "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Private mount + UTS namespaces, pinned by bind mounts of their namespace files under DIR.
# Runs inside netns NS so that the fresh sysfs shows that namespace's devices.
make_mntns() { # NETNS DIR HOSTNAME RESOLV_CONTENT HOSTS_CONTENT
  local ns=$1 dir=$2 host=$3
  mkdir -p "$dir"
  printf '%s' "$4" >"$dir/resolv.conf"
  printf '%s' "$5" >"$dir/hosts"
  printf '%s\n' "$host" >"$dir/hostname"
  : >"$dir/mnt"
  : >"$dir/uts"
  # shellcheck disable=SC2016
  nsenter --net="$NETNS_DIR/$ns" -- unshare --mount="$dir/mnt" --uts="$dir/uts" --propagation private -- \
    /bin/sh -eu -c '
      dir=$1 host=$2
      # The pod sees its own resolv.conf, hosts and hostname (bind mounts, like the kubelet does).
      resolv_target=$(readlink -f /etc/resolv.conf || echo /etc/resolv.conf)
      case $resolv_target in
        /run/*) resolv_late=1 ;;
        *) resolv_late=0; [ -e "$resolv_target" ] || : >"$resolv_target"
           mount --bind "$dir/resolv.conf" "$resolv_target" ;;
      esac
      [ -e /etc/hosts ] && mount --bind "$dir/hosts" /etc/hosts
      [ -e /etc/hostname ] && mount --bind "$dir/hostname" /etc/hostname
      if [ "$resolv_late" = 1 ]; then cp "$dir/resolv.conf" /tmp/.sandbox-resolv.$$; fi
      # Detach everything mounted under /run in this copy (other pods state, /run/netns files),
      # so this namespace pins nothing of anyone else; then give the pod a fresh /run.
      for m in $(awk "{print \$5}" /proc/self/mountinfo | grep -E "^/run(/|\$)" | sort -r); do
        umount -l "$m" 2>/dev/null || true
      done
      mount -t tmpfs -o mode=0755,nosuid,nodev sandbox-run /run
      mkdir -p /run/lock
      if [ "$resolv_late" = 1 ]; then
        mkdir -p "$(dirname "$resolv_target")"
        mv /tmp/.sandbox-resolv.$$ "$resolv_target"
      fi
      # libvirt directories: private tmpfs each, seeded with the package skeleton (like an image).
      for d in /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
        skel=/run/.sandbox-skel$d
        mkdir -p "$skel"
        [ -d "$d" ] && cp -a "$d/." "$skel/"
        mkdir -p "$d"
        mount -t tmpfs -o mode=0755 sandbox-libvirt "$d"
        cp -a "$skel/." "$d/"
      done
      rm -rf /run/.sandbox-skel
      # A sysfs for this network namespace (as ip netns exec does); cgroup2 if the kernel allows.
      umount -l /sys 2>/dev/null || true
      mount -t sysfs sandbox-sys /sys
      mount -t cgroup2 sandbox-cgroup /sys/fs/cgroup 2>/dev/null || true
      hostname "$host"
    ' sh "$dir" "$host"
}

enter_args() { # DIR NETNS -> nsenter args on stdout (one per line)
  local dir=$1 ns=$2 wd=$PWD
  case $wd in /run | /run/*) wd=/ ;; esac
  printf '%s\n' "--net=$NETNS_DIR/$ns" "--mount=$dir/mnt" "--uts=$dir/uts" "--wd=$wd"
}

# ---------------------------------------------------------------------------------------------
cmd_create() {
  local name="" style=flannel mtu=1450 host=""
  [[ $# -ge 1 ]] || die "create: missing NAME"
  name=$1
  shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --style) style=${2:?--style needs a value}; shift 2 ;;
      --style=*) style=${1#*=}; shift ;;
      --mtu) mtu=${2:?--mtu needs a value}; shift 2 ;;
      --mtu=*) mtu=${1#*=}; shift ;;
      --hostname) host=${2:?--hostname needs a value}; shift 2 ;;
      --hostname=*) host=${1#*=}; shift ;;
      *) die "create: unknown argument \"$1\"" ;;
    esac
  done
  valid_name "$name"
  case $style in flannel | calico | dual) ;; *) die "create: --style must be flannel, calico or dual, not \"$style\"" ;; esac
  [[ $mtu =~ ^[0-9]+$ ]] && ((mtu >= 1280 && mtu <= 65535)) || die "create: --mtu must be 1280..65535, not \"$mtu\""
  host=${host:-$name}
  [[ $host =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "create: invalid hostname \"$host\""
  need_root
  check_tools
  ensure_state_root

  local s
  s=$(sd "$name")
  local n
  for n in "$name" "$name-node" "$name-node2" "$name-stub"; do
    ns_exists "$n" && die "network namespace \"$n\" already exists (remove it: $PROG destroy $name)"
  done
  mkdir "$s" 2>/dev/null || die "sandbox \"$name\" already exists (remove it: $PROG destroy $name)"
  # From here on, any failure removes the half-made sandbox.
  # shellcheck disable=SC2064
  trap "rc=\$?; if ((rc != 0)); then echo \"$PROG: create $name failed; cleaning up\" >&2; cmd_destroy $name || true; fi" EXIT

  local pod=$name node=$name-node stub=$name-stub
  local nv=vp-$name uv=up-$name
  local pod_ip=10.244.1.5 prefix=24 gw=10.244.1.1 node_ip=10.244.1.1
  local pod_ip6="" gw6="" node_ip6="" remote_ip6=""
  {
    echo "name=$name"
    echo "style=$style"
    echo "mtu=$mtu"
    echo "hostname=$host"
    echo "created=$(date +%s)"
  } >"$s/meta"

  # Few processes: each `ip -batch` configures one namespace (create is ~0.4 s idle, but every
  # exec costs on a loaded CI machine).
  printf 'netns add %s\n' "$pod" "$node" "$stub" | ip -batch -
  fail_point netns
  local ns
  for ns in "$pod" "$node" "$stub"; do
    sysctl_ns "$ns" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
      net.ipv4.ip_forward="$([[ $ns == "$node" ]] && echo 1 || echo 0)" \
      net.ipv6.conf.all.forwarding="$([[ $ns != "$pod" ]] && echo 1 || echo 0)"
  done

  local nodecmds=() podcmds=() stubcmds=()
  # The pod's eth0 and its node-side peer; the node's uplink towards a "remote" host (calico
  # needs a route out of another interface).
  nodecmds+=(
    "link set lo up"
    "link add $nv mtu $mtu type veth peer name eth0 netns $pod mtu $mtu"
    "link add $uv type veth peer name eth0 netns $stub"
    "addr add 10.244.0.1/24 dev $uv"
    "link set $uv up"
    "route add default via 10.244.0.254 dev $uv"
  )
  stubcmds+=(
    "link set lo up"
    "addr add 10.244.0.254/24 dev eth0"
    "link set eth0 up"
    "route add 10.244.1.0/24 via 10.244.0.1 dev eth0"
  )
  podcmds+=("link set lo up")
  case $style in
    flannel | dual)
      nodecmds+=("addr add $gw/24 dev $nv" "link set $nv up")
      podcmds+=("addr add $pod_ip/24 dev eth0" "link set eth0 up" "route add default via $gw dev eth0")
      ;;
    calico)
      prefix=32
      gw=169.254.1.1
      node_ip=10.244.0.1
      # Calico gives the host side a fixed MAC and no address; the node answers ARP for the
      # pod's gateway by proxy ARP (sysctl below) because it routes 169.254.1.1 out of another
      # interface (the uplink's default route).
      nodecmds+=(
        "link set $nv address ee:ee:ee:ee:ee:ee"
        "link set $nv up"
        "route add $pod_ip/32 dev $nv scope link"
      )
      podcmds+=(
        "addr add $pod_ip/32 dev eth0"
        "link set eth0 up"
        "route add 169.254.1.1 dev eth0 scope link"
        "route add default via 169.254.1.1 dev eth0"
      )
      ;;
  esac
  if [[ $style == dual ]]; then
    pod_ip6=fd00:10:244:1::5
    gw6=fd00:10:244:1::1
    node_ip6=$gw6
    remote_ip6=fd00:10:244::fe
    nodecmds+=(
      "addr add $gw6/64 dev $nv nodad"
      "addr add fd00:10:244::1/64 dev $uv nodad"
      "route add ::/0 via $remote_ip6 dev $uv"
    )
    podcmds+=("addr add $pod_ip6/64 dev eth0 nodad" "route add ::/0 via $gw6 dev eth0")
    stubcmds+=("addr add $remote_ip6/64 dev eth0 nodad" "route add fd00:10:244:1::/64 via fd00:10:244::1 dev eth0")
  fi
  printf '%s\n' "${nodecmds[@]}" | ip -n "$node" -batch - || die "configuring node namespace $node failed"
  printf '%s\n' "${stubcmds[@]}" | ip -n "$stub" -batch - || die "configuring namespace $stub failed"
  printf '%s\n' "${podcmds[@]}" | ip -n "$pod" -batch - || die "configuring pod namespace $pod failed"
  [[ $style != calico ]] || sysctl_ns "$node" "net.ipv4.conf.$nv.proxy_arp=1"

  local resolv hosts
  resolv="nameserver 10.96.0.10"$'\n'
  [[ $style == dual ]] && resolv+="nameserver fd00:10:96::a"$'\n'
  resolv+="search default.svc.cluster.local svc.cluster.local cluster.local"$'\n'
  resolv+="options ndots:5"$'\n'
  hosts="127.0.0.1	localhost"$'\n'"::1	localhost ip6-localhost ip6-loopback"$'\n'"$pod_ip	$host"$'\n'
  [[ -n $pod_ip6 ]] && hosts+="$pod_ip6	$host"$'\n'
  fail_point links
  make_mntns "$pod" "$s/pod" "$host" "$resolv" "$hosts"
  fail_point mntns

  {
    echo "pod_ip=$pod_ip"
    echo "pod_prefix=$prefix"
    echo "gateway=$gw"
    echo "node_ip=$node_ip"
    echo "remote_ip=10.244.0.254"
    echo "pod_ip6=$pod_ip6"
    echo "gateway6=$gw6"
    echo "node_ip6=$node_ip6"
    echo "remote_ip6=$remote_ip6"
    echo "pod_mac=$(ip -n "$pod" -j link show dev eth0 | jq -r '.[0].address')"
    echo "node_veth=$nv"
    echo "uplink_veth=$uv"
    echo "guests=0"
    echo "secondaries=0"
  } >>"$s/meta"
  trap - EXIT
  log "created $name ($style, mtu $mtu)"
}

# ---------------------------------------------------------------------------------------------
cmd_exec() {
  [[ $# -ge 1 ]] || die "exec: missing NAME"
  local name=$1 dir ns
  shift
  [[ ${1:-} == -- ]] && shift
  [[ $# -ge 1 ]] || die "exec: missing command (exec NAME -- CMD...)"
  if [[ $name =~ ^([a-z0-9]{1,8})-(g[0-9]+)$ ]]; then
    dir=$(sd "${BASH_REMATCH[1]}")/${BASH_REMATCH[2]}
  else
    valid_name "$name"
    dir=$(sd "$name")/pod
  fi
  ns=$name
  [[ -e $dir/mnt ]] || die "no sandbox \"$name\" (create it with: $PROG create NAME)"
  ns_exists "$ns" || die "network namespace \"$ns\" is missing (sandbox half-destroyed?)"
  local args
  mapfile -t args < <(enter_args "$dir" "$ns")
  exec nsenter "${args[@]}" -- "$@"
}

cmd_node() { # node|node2 NAME -- CMD
  local which=$1 name=${2:-}
  [[ -n $name ]] || die "$which: missing NAME"
  shift 2
  [[ ${1:-} == -- ]] && shift
  [[ $# -ge 1 ]] || die "$which: missing command ($which NAME -- CMD...)"
  valid_name "$name"
  local ns=$name-node
  [[ $which == node2 ]] && ns=$name-node2
  ns_exists "$ns" || die "no network namespace \"$ns\" (sandbox \"$name\" missing${which:+ or no secondary network})"
  exec nsenter --net="$NETNS_DIR/$ns" -- "$@"
}

# ---------------------------------------------------------------------------------------------
cmd_info() {
  [[ $# -ge 1 ]] || die "info: missing NAME"
  local name=$1 s
  valid_name "$name"
  s=$(sd "$name")
  [[ -f $s/meta ]] || die "no sandbox \"$name\""
  local k args=() guests=() secs=() i
  for k in name style hostname pod_mac pod_ip gateway node_ip remote_ip pod_ip6 gateway6 node_ip6 remote_ip6 node_veth uplink_veth; do
    args+=(--arg "$k" "$(meta_get "$name" "$k")")
  done
  for ((i = 1; i <= $(meta_get "$name" guests); i++)); do
    [[ -d $s/g$i ]] && guests+=("$(cat "$s/g$i/info.json")")
  done
  for ((i = 1; i <= $(meta_get "$name" secondaries); i++)); do
    [[ -f $s/sec$i.json ]] && secs+=("$(cat "$s/sec$i.json")")
  done
  local gj sj
  gj=$(printf '%s\n' "${guests[@]}" | jq -s -c 'map(select(. != null))')
  sj=$(printf '%s\n' "${secs[@]}" | jq -s -c 'map(select(. != null))')
  jq -n -c "${args[@]}" \
    --argjson mtu "$(meta_get "$name" mtu)" \
    --argjson pod_prefix "$(meta_get "$name" pod_prefix)" \
    --argjson guests "$gj" --argjson secondaries "$sj" '
    def nn: if . == "" then null else . end;
    {name: $name, pod_netns: $name, node_netns: ($name + "-node"), stub_netns: ($name + "-stub"),
     style: $style, mtu: $mtu, pod_mac: $pod_mac, pod_ip: $pod_ip, pod_prefix: $pod_prefix, gateway: $gateway,
     node_ip: $node_ip, remote_ip: $remote_ip,
     pod_ip6: ($pod_ip6|nn), pod_prefix6: (if $pod_ip6 == "" then null else 64 end),
     gateway6: ($gateway6|nn), node_ip6: ($node_ip6|nn), remote_ip6: ($remote_ip6|nn),
     hostname: $hostname, node_veth: $node_veth, uplink_veth: $uplink_veth,
     state_dir: ("/run/launcher-sandbox/" + $name),
     guests: $guests, secondaries: $secondaries}'
}

# ---------------------------------------------------------------------------------------------
cmd_snapshot() {
  [[ $# -ge 1 ]] || die "snapshot: missing NAME"
  local name=$1 ns
  if [[ $name =~ ^([a-z0-9]{1,8})-(g[0-9]+|node|node2|stub)$ ]]; then ns=$name; else
    valid_name "$name"
    ns=$name
  fi
  ns_exists "$ns" || die "no network namespace \"$ns\""
  local strip='walk(if type == "object" then with_entries(select(.key | test("^(ifindex|link_index|link_netnsid|stats|stats64|valid_life_time|preferred_life_time|expires|used|age|.*_timer|gc_timer)$") | not)) else . end)'
  echo "### links (ip -j -d link)"
  in_ns "$ns" ip -j -d link show | jq -S "$strip | sort_by(.ifname)"
  echo "### addresses (ip -j addr)"
  in_ns "$ns" ip -j addr show | jq -S "$strip | map({ifname, addr_info: (.addr_info | sort_by(.local))}) | sort_by(.ifname)"
  echo "### routes ipv4 (ip -j -4 route show table all)"
  in_ns "$ns" ip -j -4 route show table all | jq -S "$strip | sort_by(.table // \"\", .type // \"\", .dst, .dev // \"\")"
  echo "### routes ipv6 (ip -j -6 route show table all)"
  in_ns "$ns" ip -j -6 route show table all | jq -S "$strip | sort_by(.table // \"\", .type // \"\", .dst, .dev // \"\")"
  echo "### rules (ip -j rule, ip -j -6 rule)"
  in_ns "$ns" ip -j -4 rule show | jq -S -c '.[]'
  in_ns "$ns" ip -j -6 rule show | jq -S -c '.[]'
  echo "### nftables (nft list ruleset)"
  in_ns "$ns" nft list ruleset
  echo "### sysctls"
  # One grep over the relevant /proc/sys files (sysctl -a reads thousands); "a/b/c:v" -> "a.b.c = v".
  # shellcheck disable=SC2016
  in_ns "$ns" sh -c 'cd /proc/sys && grep -H "" \
      net/ipv4/ip_forward net/ipv4/ip_unprivileged_port_start net/ipv4/ping_group_range \
      net/ipv4/conf/*/forwarding net/ipv4/conf/*/proxy_arp net/ipv4/conf/*/proxy_arp_pvlan \
      net/ipv4/conf/*/rp_filter net/ipv4/conf/*/arp_ignore net/ipv4/conf/*/arp_announce \
      net/ipv4/conf/*/route_localnet net/ipv4/conf/*/send_redirects net/ipv4/conf/*/accept_local \
      net/ipv4/conf/*/src_valid_mark net/ipv6/conf/*/forwarding net/ipv6/conf/*/accept_ra \
      net/ipv6/conf/*/autoconf net/ipv6/conf/*/disable_ipv6 net/ipv6/conf/*/accept_dad \
      net/ipv6/conf/*/proxy_ndp net/ipv6/conf/*/addr_gen_mode $(ls -d net/bridge/* 2>/dev/null) \
      2>/dev/null' | sed -E 's#^([^:]*):(.*)$#\1 = \2#; :a; s#^([^ ]*)/#\1.#; ta' | tr '\t' ' ' | LC_ALL=C sort
}

# ---------------------------------------------------------------------------------------------
cmd_add_guest() {
  [[ $# -ge 1 ]] || die "add-guest: missing NAME"
  local name=$1 br="" mac="" port="" gif=eth0
  shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --bridge) br=${2:?}; shift 2 ;;
      --mac) mac=${2:?}; shift 2 ;;
      --ifname) port=${2:?}; shift 2 ;;
      --guest-ifname) gif=${2:?}; shift 2 ;;
      *) die "add-guest: unknown argument \"$1\"" ;;
    esac
  done
  valid_name "$name"
  need_root
  [[ -n $br ]] || die "add-guest: --bridge BR is required"
  [[ $mac =~ ^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$ ]] || die "add-guest: --mac must look like 02:00:00:00:00:01, not \"$mac\""
  local s
  s=$(sd "$name")
  [[ -f $s/meta ]] || die "no sandbox \"$name\""
  ip -n "$name" -d link show dev "$br" 2>/dev/null | grep -q ' bridge ' ||
    die "add-guest: no bridge \"$br\" in pod \"$name\" (create it first)"
  local k
  exec 8>>"$s/meta.lock"
  flock 8
  k=$(($(meta_get "$name" guests) + 1))
  meta_set "$name" guests "$k"
  flock -u 8
  local g=$name-g$k
  port=${port:-sbg$k}
  [[ ${#port} -le 15 ]] || die "add-guest: --ifname \"$port\" is longer than 15 characters"
  ip -n "$name" link show dev "$port" >/dev/null 2>&1 && die "add-guest: interface \"$port\" already exists in pod \"$name\""
  mkdir -p "$s/g$k"
  ip netns add "$g" || die "add-guest: cannot create netns \"$g\""
  local ok=0
  # shellcheck disable=SC2317
  cleanup_guest() {
    if ((ok == 0)); then
      echo "$PROG: add-guest $name failed; removing $g" >&2
      kill_in_namespaces "$g" "$s/g$k"
      ip -n "$name" link del "$port" 2>/dev/null || true
      remove_pins "$s/g$k"
      ip netns del "$g" 2>/dev/null || true
      rm -rf "$s/g$k"
    fi
  }
  trap cleanup_guest EXIT
  local mtu
  mtu=$(meta_get "$name" mtu) # a VM's NIC and its tap get the pod's MTU
  ip -n "$name" link add "$port" mtu "$mtu" type veth peer name "$gif" netns "$g" mtu "$mtu" address "$mac"
  ip -n "$name" link set "$port" master "$br"
  ip -n "$name" link set "$port" up
  ip -n "$g" link set lo up
  ip -n "$g" link set "$gif" up
  make_mntns "$g" "$s/g$k" "$g" "" "127.0.0.1	localhost"$'\n'
  jq -n -c --arg netns "$g" --arg mac "$mac" --arg bridge "$br" --arg port "$port" --arg ifname "$gif" \
    '{netns: $netns, mac: $mac, bridge: $bridge, pod_port: $port, ifname: $ifname}' >"$s/g$k/info.json"
  ok=1
  trap - EXIT
  echo "$g"
}

# ---------------------------------------------------------------------------------------------
ip2int() {
  local IFS=.
  # shellcheck disable=SC2206
  local o=($1)
  echo $(((o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]))
}
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }

cmd_add_secondary() {
  [[ $# -ge 1 ]] || die "add-secondary: missing NAME"
  local name=$1 ifname="" style=flannel subnet=10.245.1.0/24
  shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --ifname) ifname=${2:?}; shift 2 ;;
      --style) style=${2:?}; shift 2 ;;
      --subnet) subnet=${2:?}; shift 2 ;;
      *) die "add-secondary: unknown argument \"$1\"" ;;
    esac
  done
  valid_name "$name"
  need_root
  [[ -n $ifname && ${#ifname} -le 15 ]] || die "add-secondary: --ifname IF (at most 15 characters) is required"
  case $style in flannel | l2) ;; *) die "add-secondary: --style must be flannel or l2, not \"$style\"" ;; esac
  [[ $subnet =~ ^([0-9]{1,3}(\.[0-9]{1,3}){3})/([0-9]{1,2})$ ]] || die "add-secondary: --subnet must be an IPv4 CIDR like 10.245.1.0/24, not \"$subnet\""
  local net=${BASH_REMATCH[1]} plen=${BASH_REMATCH[3]}
  ((plen >= 8 && plen <= 29)) || die "add-secondary: --subnet prefix must be 8..29"
  local s
  s=$(sd "$name")
  [[ -f $s/meta ]] || die "no sandbox \"$name\""
  ip -n "$name" link show dev "$ifname" >/dev/null 2>&1 && die "add-secondary: interface \"$ifname\" already exists in pod \"$name\""
  local base gw pod_ip mtu
  base=$(($(ip2int "$net") & ~((1 << (32 - plen)) - 1) & 0xffffffff))
  gw=$(int2ip $((base + 1)))
  pod_ip=$(int2ip $((base + 5)))
  mtu=$(meta_get "$name" mtu)
  local k n2=$name-node2
  exec 8>>"$s/meta.lock"
  flock 8
  k=$(($(meta_get "$name" secondaries) + 1))
  meta_set "$name" secondaries "$k"
  if ! ns_exists "$n2"; then
    ip netns add "$n2"
    ip -n "$n2" link set lo up
    sysctl_ns "$n2" net.ipv4.ip_forward=1 net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  fi
  flock -u 8
  local v=s$k-$name
  ip -n "$n2" link add "$v" mtu "$mtu" type veth peer name "$ifname" netns "$name" mtu "$mtu"
  ip -n "$n2" addr add "$gw/$plen" dev "$v"
  ip -n "$n2" link set "$v" up
  if [[ $style == flannel ]]; then
    ip -n "$name" addr add "$pod_ip/$plen" dev "$ifname"
  fi
  ip -n "$name" link set "$ifname" up
  local out
  out=$(jq -n -c --arg ifname "$ifname" --arg style "$style" --arg subnet "$subnet" \
    --arg pod_ip "$([[ $style == flannel ]] && echo "$pod_ip")" --argjson prefix "$plen" \
    --arg gateway "$gw" --arg node_netns "$n2" --arg node_veth "$v" \
    '{ifname: $ifname, style: $style, subnet: $subnet,
      pod_ip: (if $pod_ip == "" then null else $pod_ip end), prefix: $prefix,
      gateway: $gateway, node_ip: $gateway, node_netns: $node_netns, node_veth: $node_veth}')
  echo "$out" >"$s/sec$k.json"
  echo "$out"
}

# ---------------------------------------------------------------------------------------------
# Kill every process whose network namespace is one of NETNS... or whose mount/UTS namespace is
# pinned under one of the given DIRs (arguments that contain a "/" are pin dirs).
kill_in_namespaces() {
  local ids=() a f id
  for a in "$@"; do
    if [[ $a == */* ]]; then
      for f in "$a/mnt" "$a/uts"; do
        [[ -e $f ]] && id=$(stat -L -c '%i' "$f" 2>/dev/null) && [[ $id != "" ]] &&
          mountpoint -q "$f" && ids+=("${f##*/}:[$id]")
      done
    else
      [[ -e $NETNS_DIR/$a ]] && id=$(stat -L -c '%i' "$NETNS_DIR/$a" 2>/dev/null) &&
        mountpoint -q "$NETNS_DIR/$a" && ids+=("net:[$id]")
    fi
  done
  ((${#ids[@]})) || return 0
  local pat round pids
  pat=$(printf '%s\n' "${ids[@]}" | sed 's/[][]/\\&/g' | paste -sd'|')
  for round in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    mapfile -t pids < <(find /proc/[0-9]*/ns/ -maxdepth 1 \( -name net -o -name mnt -o -name uts \) -printf '%h %l\n' 2>/dev/null |
      grep -E " ($pat)\$" | sed -E 's#^/proc/([0-9]+)/ns.*#\1#' | sort -un | grep -vx "$$" || true)
    ((${#pids[@]})) || return 0
    if ((round == 1)); then
      kill -TERM "${pids[@]}" 2>/dev/null || true
    elif ((round >= 5)); then
      kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    sleep 0.1
  done
  echo "$PROG: warning: processes still alive in sandbox namespaces: ${pids[*]}" >&2
}

remove_pins() { # DIR
  local f
  for f in "$1/mnt" "$1/uts"; do
    if mountpoint -q "$f" 2>/dev/null; then umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null || true; fi
  done
}

cmd_destroy() {
  [[ $# -ge 1 ]] || die "destroy: missing NAME"
  local name=$1
  valid_name "$name"
  need_root
  local s nss=() pins=() f d
  s=$(sd "$name")
  for f in "$NETNS_DIR/$name" "$NETNS_DIR/$name-node" "$NETNS_DIR/$name-node2" "$NETNS_DIR/$name-stub" "$NETNS_DIR/$name"-g*; do
    [[ -e $f ]] && nss+=("${f##*/}")
  done
  if [[ -d $s ]]; then
    for d in "$s/pod" "$s"/g*; do
      [[ -d $d ]] && pins+=("$d")
    done
  fi
  kill_in_namespaces "${nss[@]}" "${pins[@]}"
  for d in "${pins[@]}"; do remove_pins "$d"; done
  for f in "${nss[@]}"; do
    ip netns delete "$f" 2>/dev/null || {
      umount -l "$NETNS_DIR/$f" 2>/dev/null || true
      rm -f "$NETNS_DIR/$f"
    }
  done
  rm -rf "$s" "$s.lock" 2>/dev/null || true
  log "destroyed $name"
  return 0
}

cmd_list() {
  local d
  [[ -d $STATE_ROOT ]] || return 0
  for d in "$STATE_ROOT"/*/; do
    [[ -d $d ]] && basename "$d"
  done
  return 0
}

cmd_destroy_all() {
  local n
  for n in $(cmd_list); do
    [[ $n =~ ^[a-z0-9]{1,8}$ ]] && cmd_destroy "$n"
  done
  return 0
}

main() {
  [[ $# -ge 1 ]] || {
    usage >&2
    exit 2
  }
  local cmd=$1
  shift
  case $cmd in
    create) cmd_create "$@" ;;
    exec) cmd_exec "$@" ;;
    node) cmd_node node "$@" ;;
    node2) cmd_node node2 "$@" ;;
    info) cmd_info "$@" ;;
    snapshot) cmd_snapshot "$@" ;;
    add-guest) cmd_add_guest "$@" ;;
    add-secondary) cmd_add_secondary "$@" ;;
    destroy) cmd_destroy "$@" ;;
    destroy-all) need_root; cmd_destroy_all ;;
    list) cmd_list ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
