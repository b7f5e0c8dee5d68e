#!/usr/bin/env bash
# scripts/demo.sh — installs what is missing, builds the launcher, and boots the tiny test guest
# in a sandbox launcher pod, showing its DHCP lease and pings on the serial console.
#
# Usage: scripts/demo.sh            (as root on Debian 12; cleans up everything on exit)
#   DEMO_STYLE=flannel|calico|dual  pod network style (default flannel)
#   DEMO_MODE=launcher|standin      how the guest is booted (see "THE RUN STEP" below)
#   DEMO_SKIP_SETUP=1               do not run scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

STYLE=${DEMO_STYLE:-flannel}
# "launcher": the real thing. "standin": qemu + dnsmasq by hand (from before `run` existed).
MODE=${DEMO_MODE:-launcher}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
  echo "scripts/demo.sh must run as root (it installs packages and creates network namespaces)" >&2
  exit 3
fi

NAME=demo$(($$ % 10000))
WORK=$(mktemp -d /tmp/launcher-demo.XXXXXX)
BG_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  step "cleanup"
  [[ -n $BG_PID ]] && kill "$BG_PID" 2>/dev/null || true
  bash scripts/sandbox.sh destroy "$NAME" || true
  rm -rf "$WORK"
  note "removed sandbox $NAME and $WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z ${DEMO_SKIP_SETUP:-} ]]; then
  step "scripts/setup.sh (Debian packages; idempotent)"
  bash scripts/setup.sh
fi

step "cargo build --release"
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (e.g. apt-get install cargo, or rustup)" >&2
  exit 3
fi
cargo build --release --locked -p launcher
LAUNCHER=$REPO/target/release/launcher
note "$LAUNCHER"

step "the tiny test guest (scripts/build-test-guest.sh)"
mapfile -t G < <(bash scripts/build-test-guest.sh)
KERNEL=${G[0]} INITRD=${G[1]}
note "kernel $KERNEL"
note "initrd $INITRD"
# A kernelBoot container's files are found under <container-disk-dir>/kernel-boot/.
CDD=$WORK/container-disks
mkdir -p "$CDD/kernel-boot"
cp "$KERNEL" "$CDD/kernel-boot/vmlinuz"
cp "$INITRD" "$CDD/kernel-boot/initrd.img"
VMI=$WORK/demo-vmi.yaml

step "a sandbox launcher pod: scripts/sandbox.sh create $NAME --style $STYLE"
bash scripts/sandbox.sh create "$NAME" --style "$STYLE"
INFO=$(bash scripts/sandbox.sh info "$NAME")
jq . <<<"$INFO"
NODE_IP=$(jq -r .node_ip <<<"$INFO")
# The guest pings the node; its address depends on the style.
sed "s/guest.ping=10.244.1.1/guest.ping=$NODE_IP/" scripts/demo-vmi.yaml >"$VMI"
pod() { bash scripts/sandbox.sh exec "$NAME" -- "$@"; }
pod sh -c 'echo "--- inside the pod: $(hostname)"; ip -br addr; ip route; cat /etc/resolv.conf'

# What the launcher can do today; a command that is not implemented yet says so and we go on.
try() {
  local rc=0
  pod "$@" || rc=$?
  ((rc == 0)) || note "(exit code $rc)"
}
step "launcher validate --vmi scripts/demo-vmi.yaml (guest.ping=$NODE_IP)"
try "$LAUNCHER" validate --vmi "$VMI" --container-disk-dir "$CDD"
step "launcher network show (the plan for this pod; changes nothing)"
try "$LAUNCHER" network show --vmi "$VMI" --container-disk-dir "$CDD" --log-format text
step "launcher render (the libvirt domain XML)"
try "$LAUNCHER" render --vmi "$VMI" --container-disk-dir "$CDD" --accel tcg --log-format text

# ============================== THE RUN STEP ==============================================
SERIAL=$WORK/serial.log
PING_TARGETS=""
if [[ $MODE == launcher ]]; then
  # ---- THE REAL THING ----------------------------------------------------------------------
  # `launcher run` inside the pod plumbs eth0 into a bridge, serves the pod IP by DHCP and boots
  # the guest under libvirt with TCG; the guest prints GUEST-DHCP (the pod's own IP) and
  # GUEST-PING (the node) on its serial console. SIGTERM (cleanup) stops it gracefully.
  step "launcher run --accel tcg (inside the pod)"
  RUN_DIR=$WORK/run # under /tmp, which the pod shares, so the host can read status.json
  mkdir -p "$RUN_DIR"
  # Not through the pod() function: a backgrounded function is a subshell, and $! must be the
  # launcher itself (sandbox.sh exec execs nsenter, which execs the launcher).
  bash scripts/sandbox.sh exec "$NAME" -- "$LAUNCHER" run --accel tcg --vmi "$VMI" \
    --container-disk-dir "$CDD" --run-dir "$RUN_DIR" --log-format text >"$WORK/launcher.log" 2>&1 &
  BG_PID=$!
  # status.json names the serial log (<run-dir>/<vmi uid>/virt-serial0-log).
  for _ in $(seq 1 480); do
    if [[ -z ${SERIAL_FROM_STATUS:-} && -s $RUN_DIR/status.json ]]; then
      SERIAL_FROM_STATUS=$(jq -r '.serial_log // empty' "$RUN_DIR/status.json" 2>/dev/null || true)
    fi
    if [[ -n ${SERIAL_FROM_STATUS:-} && -f $SERIAL_FROM_STATUS ]]; then
      cp "$SERIAL_FROM_STATUS" "$SERIAL"
      grep -aq -e GUEST-READY -e GUEST-POWEROFF "$SERIAL" && break
    fi
    kill -0 "$BG_PID" 2>/dev/null || break
    sleep 0.5
  done
  sed 's/^/    launcher: /' "$WORK/launcher.log" | tail -n 20 >&2
  if kill -0 "$BG_PID" 2>/dev/null; then
    step "SIGTERM to the launcher: graceful shutdown (terminationGracePeriodSeconds: 10)"
    kill -TERM "$BG_PID"
    rc=0
    wait "$BG_PID" || rc=$?
    note "launcher exited with $rc (0 = graceful)"
    BG_PID=""
    # The guest's last words (GUEST-ACPI-POWEROFF when it obeyed the ACPI power button).
    [[ -n ${SERIAL_FROM_STATUS:-} && -f $SERIAL_FROM_STATUS ]] && cp "$SERIAL_FROM_STATUS" "$SERIAL"
  fi
else
  # ---- STAND-IN (DEMO_MODE=standin; from before `launcher run` existed) -------------------
  # Shows the guest side working in the pod: a bridge with a tap, dnsmasq standing in for the
  # launcher's DHCP server on a demo subnet, and masquerade towards the node. (dnsmasq cannot
  # serve the pod's own IP in the bridge design, which is why the launcher has its own server.)
  step "stand-in boot: tap on a bridge in the pod, dnsmasq for DHCP, qemu TCG"
  pod sh -euc '
    ip link add br-demo type bridge
    ip addr add 10.0.99.1/24 dev br-demo
    ip link set br-demo mtu 1450 up
    ip tuntap add dev tap-demo mode tap
    ip link set tap-demo mtu 1450 master br-demo up
    sysctl -qw net.ipv4.ip_forward=1
    nft -f - <<EOF
table ip demo {
  chain post { type nat hook postrouting priority srcnat; ip saddr 10.0.99.0/24 oifname "eth0" masquerade; }
}
EOF'
  pod dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --bind-interfaces \
    --interface=br-demo --dhcp-range=10.0.99.50,10.0.99.60,255.255.255.0,1h \
    --dhcp-option=option:mtu,1450 --dhcp-option=option:dns-server,10.96.0.10 \
    --dhcp-option=option:domain-search,default.svc.cluster.local,svc.cluster.local,cluster.local \
    --dhcp-leasefile="$WORK/leases" --pid-file= --log-facility=- 2>"$WORK/dnsmasq.log" &
  PING_TARGETS="10.0.99.1,$NODE_IP"
  pod qemu-system-x86_64 -accel tcg -m 256 -nodefaults -no-reboot -display none \
    -serial "file:$SERIAL" -kernel "$CDD/kernel-boot/vmlinuz" -initrd "$CDD/kernel-boot/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests guest.ping=$PING_TARGETS guest.poweroff=1" \
    -netdev tap,id=n0,ifname=tap-demo,script=no,downscript=no \
    -device virtio-net-pci,netdev=n0,mac=02:00:00:00:de:01,romfile= &
  BG_PID=$!
  for _ in $(seq 1 240); do
    grep -q GUEST-READY "$SERIAL" 2>/dev/null && break
    kill -0 "$BG_PID" 2>/dev/null || break
    sleep 0.5
  done
fi
# ==========================================================================================

step "the guest's serial console"
if [[ -s $SERIAL ]]; then
  grep -aE 'GUEST-[A-Z0-9-]+' "$SERIAL" | sed -E 's/^.*(GUEST-)/\1/; s/^/    /'
else
  note "(no serial output)"
fi
if grep -aq GUEST-READY "$SERIAL" 2>/dev/null; then
  step "done: the guest booted in pod $NAME and configured its network by DHCP"
else
  step "the guest did not reach GUEST-READY"
  exit 1
fi
