#!/usr/bin/env bash
# bench-netsetup.sh — wall time of `launcher network setup` (bridge binding) in a sandbox pod,
# against a peer: the same plumbing done with one `ip`/`nft`/`sysctl` process per operation
# (how shell-based launchers do it). A benchmark, not a test: it prints numbers and ratios.
#
# usage: scripts/bench-netsetup.sh [--runs 10] [--style flannel|calico]
#   LAUNCHER=path  use this binary (default: target/release/launcher, built if missing)
# Needs root (sandbox pods are network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10 style=flannel
while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --style) style=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--style flannel|calico]" >&2; exit 2 ;;
  esac
done
[[ $EUID -eq 0 ]] || { echo "$0: needs root" >&2; exit 1; }
LAUNCHER=${LAUNCHER:-$PWD/target/release/launcher}
if [[ ! -x $LAUNCHER ]]; then
  echo "building $LAUNCHER (release)..." >&2
  cargo build --release -p launcher >&2
fi
name=bn$$
name=${name:0:8}
work=$(mktemp -d /tmp/bench-netsetup.XXXXXX)
cleanup() { bash scripts/sandbox.sh destroy "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
bash scripts/sandbox.sh create "$name" --style "$style" >/dev/null
cat >"$work/vmi.yaml" <<'YAML'
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: bench}
spec:
  domain:
    resources: {requests: {memory: 128Mi}}
    devices:
      interfaces: [{name: default, bridge: {}}]
  networks: [{name: default, pod: {}}]
YAML
inpod() { bash scripts/sandbox.sh exec "$name" -- "$@"; }
now_us() { echo $(($(date +%s%N) / 1000)); }

# The peer: the same plumbing, one process per operation.
info=$(bash scripts/sandbox.sh info "$name")
pod_ip=$(jq -r .pod_ip <<<"$info")
prefix=$(jq -r .pod_prefix <<<"$info")
mtu=$(jq -r .mtu <<<"$info")
mac=$(inpod cat /sys/class/net/eth0/address)
bmac=02:6b:36:${mac:9:8}
if [[ $style == calico ]]; then
  routes_add="ip route add 169.254.1.1 dev eth0 scope link; ip route add default via 169.254.1.1 dev eth0"
else
  routes_add="ip route add default via 10.244.1.1 dev eth0"
fi
ruleset=$(inpod "$LAUNCHER" network show --vmi "$work/vmi.yaml" --run-dir "$work/run" --log-format json 2>/dev/null |
  jq -r '.steps[] | select(.op == "nft-table") | .ruleset')
printf '%s' "$ruleset" >"$work/ruleset.nft"
cat >"$work/peer-setup.sh" <<PEER
set -e
nft -f $work/ruleset.nft
ip link add k6t-eth0 address $bmac mtu $mtu type bridge
sysctl -q -w net.ipv4.conf.k6t-eth0.arp_ignore=1
ip addr add 169.254.75.10/32 dev k6t-eth0
ip link set eth0 down
ip addr flush dev eth0
ip link set eth0 name eth0-nic
ip link set eth0-nic address $bmac
ip link add eth0 address $mac mtu $mtu type veth peer name eth0-sb
ip addr add $pod_ip/$prefix dev eth0
ip link set eth0-nic master k6t-eth0
ip link set eth0-nic type bridge_slave learning off
ip link set eth0-nic up
ip tuntap add dev tap0 mode tap vnet_hdr
ip link set tap0 mtu $mtu
ip link set tap0 master k6t-eth0
ip link set tap0 up
ip link set k6t-eth0 up
PEER
cat >"$work/peer-teardown.sh" <<PEER
ip link del tap0; ip link del eth0
ip link set eth0-nic down; ip link set eth0-nic nomaster; ip link set eth0-nic name eth0
ip link set eth0 address $mac; ip addr add $pod_ip/$prefix dev eth0; ip link set eth0 up
$routes_add
nft delete table bridge launcher_dhcp_guard; ip link del k6t-eth0
PEER

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
: >"$work/internal" ; : >"$work/wall" ; : >"$work/peer"
for ((i = 1; i <= runs; i++)); do
  out=$(inpod bash -c "s=\$((\$(date +%s%N)/1000)); '$LAUNCHER' network setup --vmi '$work/vmi.yaml' --run-dir '$work/run' --log-format json 2>'$work/log' >/dev/null; e=\$((\$(date +%s%N)/1000)); echo \$((e-s))")
  echo "$out" >>"$work/wall"
  grep '"network setup done"' "$work/log" | jq -r '.fields.elapsed_us // .elapsed_us' >>"$work/internal"
  inpod "$LAUNCHER" network teardown --run-dir "$work/run" --log-format json 2>/dev/null
  out=$(inpod bash -c "s=\$((\$(date +%s%N)/1000)); bash $work/peer-setup.sh; e=\$((\$(date +%s%N)/1000)); echo \$((e-s))")
  echo "$out" >>"$work/peer"
  inpod bash "$work/peer-teardown.sh" >/dev/null 2>&1 || true
done
internal=$(median <"$work/internal")
wall=$(median <"$work/wall")
peer=$(median <"$work/peer")
awk -v i="$internal" -v w="$wall" -v p="$peer" -v n="$runs" -v s="$style" 'BEGIN {
  printf "network setup, bridge binding, %s pod, median of %d runs\n", s, n
  printf "  launcher (in-process, excluding process start): %7.2f ms   target < 20 ms: %s\n", i/1000, (i < 20000 ? "met" : "MISSED")
  printf "  launcher (wall, including process start):       %7.2f ms\n", w/1000
  printf "  peer (ip/nft/sysctl, one process per step):     %7.2f ms\n", p/1000
  printf "  ratio peer / launcher wall:                     %7.2fx\n", p/w
}'
