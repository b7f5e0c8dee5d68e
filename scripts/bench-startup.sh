#!/usr/bin/env bash
# bench-startup.sh — how fast `launcher run` brings a VM up, and how much memory it holds.
#
# For each of N runs (default 5; BENCH_RUNS=N): a fresh sandbox pod (scripts/sandbox.sh), the tiny
# test guest (scripts/build-test-guest.sh, kernelBoot, one bridge interface, --accel tcg), then
# `launcher run` until status.json says "running". Reported, as the median over the runs:
#   - each phase's own time (status.json phase_us), the libvirt define and create calls, and the
#     total from the launcher's start to virDomainCreate returning (guest boot excluded);
#   - "plumb+render+define": plumbing + DHCP up + disks + render + virDomainDefineXML, the part
#     comparable to KubeVirt's ~60 ms from discovery to "domain defined" (target: < 50 ms);
#   - the launcher's RSS: peak (VmHWM) and steady (`ps -o rss`, 5 s after running; target
#     <= 12.5 MiB = 12800 KiB, measured the way KubeVirt's tests measure virt-launcher);
#   - libvirtd's and qemu's RSS, separately.
# Ratios are printed against the peers/targets above. Needs root. Uses the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${BENCH_RUNS:-5}
STEADY_WAIT=${BENCH_STEADY_WAIT:-5}

[[ $EUID -eq 0 ]] || {
  echo "bench-startup.sh must run as root (sandbox pods)" >&2
  exit 3
}
command -v jq >/dev/null || {
  echo "jq is missing (scripts/setup.sh)" >&2
  exit 3
}

# BENCH_NO_BUILD=1 uses target/release/launcher as it is.
[[ -n ${BENCH_NO_BUILD:-} ]] || cargo build --release -q -p launcher
LAUNCHER=$REPO/target/release/launcher
mapfile -t G < <(bash scripts/build-test-guest.sh)

WORK=$(mktemp -d /tmp/bench-startup.XXXXXX)
NAME=""
LPID=""
cleanup() {
  [[ -n $LPID ]] && kill -QUIT "$LPID" 2>/dev/null && sleep 3 || true
  [[ -n $NAME ]] && bash scripts/sandbox.sh destroy "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/cdd/kernel-boot"
cp "${G[0]}" "$WORK/cdd/kernel-boot/vmlinuz"
cp "${G[1]}" "$WORK/cdd/kernel-boot/initrd.img"
cat >"$WORK/vmi.yaml" <<'EOF'
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: bench, namespace: default, uid: 0be1c400-0000-4000-8000-000000000001}
spec:
  terminationGracePeriodSeconds: 10
  domain:
    cpu: {cores: 1}
    memory: {guest: 256Mi}
    resources: {requests: {memory: 256Mi}}
    firmware:
      kernelBoot:
        kernelArgs: "console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests guest.hold=1"
        container: {image: x, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd.img}
    devices:
      autoattachGraphicsDevice: false
      interfaces: [{name: default, bridge: {}, macAddress: "02:00:00:00:be:01"}]
  networks: [{name: default, pod: {}}]
EOF

child_named() { # PID COMM -> first child pid with that comm
  local t k
  for t in /proc/"$1"/task/*; do
    for k in $(cat "$t/children" 2>/dev/null); do
      [[ $(cat /proc/"$k"/comm 2>/dev/null) == "$2" ]] && { echo "$k"; return; }
    done
  done
}
rss() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }

: >"$WORK/samples"
for i in $(seq 1 "$RUNS"); do
  NAME=bs$(($$ % 1000))$i
  bash scripts/sandbox.sh create "$NAME" >/dev/null
  RD=$WORK/run$i
  bash scripts/sandbox.sh exec "$NAME" -- "$LAUNCHER" run --vmi "$WORK/vmi.yaml" --run-dir "$RD" \
    --container-disk-dir "$WORK/cdd" --accel tcg --termination-log "$WORK/term$i" \
    --log-format json 2>"$WORK/log$i" &
  LPID=$!
  for _ in $(seq 1 600); do
    [[ $(jq -r .phase "$RD/status.json" 2>/dev/null) == running ]] && break
    kill -0 "$LPID" 2>/dev/null || { echo "launcher exited: $(cat "$WORK/term$i")" >&2; exit 1; }
    sleep 0.1
  done
  sleep "$STEADY_WAIT"
  steady=$(rss "$LPID")
  peak=$(awk '/VmHWM/ {print $2}' /proc/"$LPID"/status)
  lvd=$(child_named "$LPID" libvirtd)
  qpid=$(jq -r .qemu_pid "$RD/status.json")
  lvd_rss=$(rss "$lvd")
  q_rss=$(rss "$qpid")
  {
    jq -r '.phase_us[] | "\(.[0]) \(.[1])"' "$RD/status.json"
    jq -rR 'fromjson? | select(.message=="libvirt call done") | "libvirt-\(.step) \(.duration_us // (.duration_ms * 1000))"' "$WORK/log$i"
    jq -rR 'fromjson? | select(.message=="virDomainCreate returned") | "total-to-create-returned \(.since_start_us // (.since_start_ms * 1000))"' "$WORK/log$i"
    echo "launcher-rss-steady-kib $steady"
    echo "launcher-rss-peak-kib $peak"
    echo "libvirtd-rss-kib $lvd_rss"
    echo "qemu-rss-kib $q_rss"
  } | sed "s/^/$i /" >>"$WORK/samples"
  kill -QUIT "$LPID"
  wait "$LPID" || true
  LPID=""
  bash scripts/sandbox.sh destroy "$NAME" >/dev/null
  NAME=""
done

# plumb+render+define per run = plumbing + dhcp-up + preparing-disks + rendering + libvirt-define
awk '$2 ~ /^(plumbing|dhcp-up|preparing-disks|rendering|libvirt-define)$/ {s[$1]+=$3}
     END {for (r in s) print r, "plumb+render+define", s[r]}' "$WORK/samples" >>"$WORK/samples"

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

printf '\n%-28s %14s\n' "metric (median of $RUNS)" "value"
for key in validating cleanup plumbing dhcp-up preparing-disks rendering libvirt-up defining \
  starting libvirt-define libvirt-create plumb+render+define total-to-create-returned; do
  v=$(awk -v k="$key" '$2==k {print $3}' "$WORK/samples" | median)
  printf '%-28s %11.2f ms\n' "$key" "$(echo "$v / 1000" | bc -l)"
done
for key in launcher-rss-steady-kib launcher-rss-peak-kib libvirtd-rss-kib qemu-rss-kib; do
  v=$(awk -v k="$key" '$2==k {print $3}' "$WORK/samples" | median)
  printf '%-28s %11.1f MiB\n' "${key%-kib}" "$(echo "$v / 1024" | bc -l)"
done
prd=$(awk '$2=="plumb+render+define" {print $3}' "$WORK/samples" | median)
st=$(awk '$2=="launcher-rss-steady-kib" {print $3}' "$WORK/samples" | median)
printf '\nratio plumb+render+define / KubeVirt 60 ms:   %.2f (target < 50 ms: %s)\n' \
  "$(echo "$prd / 60000" | bc -l)" "$( (($prd < 50000)) && echo met || echo MISSED)"
printf 'ratio steady RSS / 12.5 MiB target:          %.2f (%s)\n' \
  "$(echo "$st / 12800" | bc -l)" "$( (($st <= 12800)) && echo met || echo MISSED)"
printf 'ratio steady RSS / KubeVirt virt-launcher 73 MB (lowest measured): %.2f\n' \
  "$(echo "$st * 1024 / 73000000" | bc -l)"
