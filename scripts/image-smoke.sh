#!/usr/bin/env bash
# The container image's smoke test, without a container engine.
#
# 1. Builds the Dockerfile's runtime stage as a root filesystem: debootstrap (variant minbase,
#    bookworm, what debian:bookworm-slim is made from) stands in for FROM, then every RUN of the
#    runtime stage is replayed in it with chroot, so the packages come from the same
#    packaging/runtime-packages.txt through the same packaging/install-runtime.sh. Cached in
#    $IMAGE_SMOKE_CACHE/rootfs-<key> (default .cache/), keyed by the hash of everything that goes
#    into it (package list, installer scripts, the runtime stage's FROM/RUN/ENV lines).
# 2. Every run: an overlay (the container's writable layer) over the cached root filesystem, the
#    COPY --from=build of target/release/launcher, then inside a chroot in a private mount and
#    network namespace: the image's contract (no compilers, no package lists, the libvirt-qemu
#    user, the binary's libraries), libvirtd and virtlogd start, qemu 10 with TCG in the
#    capabilities, qemu-img/xorriso/nft/passt run, and `virsh create` of a tiny direct-kernel-boot
#    domain (type='qemu', no NIC) boots to GUEST-READY on its serial log.
# 3. Unless --rootfs-only: the image's ENTRYPOINT (`launcher run`) inside a sandbox pod's network
#    namespace (scripts/sandbox.sh) with the tiny DHCP guest (scripts/build-test-guest.sh) under
#    TCG; the guest must get the pod's IP as its lease, and the HEALTHCHECK command must pass
#    while it runs.
#
# Usage: scripts/image-smoke.sh [--rootfs-only] [--size]
#   --rootfs-only  steps 1 and 2 only (step 3 needs `launcher run` and scripts/sandbox.sh)
#   --size         also print the gzip-compressed size of the root filesystem (slow: ~30 s)
# Environment: IMAGE_SMOKE_CACHE (default .cache), IMAGE_SMOKE_BIN (default target/release/launcher,
# built when stale; e.g. target/debug/launcher to skip the release build), IMAGE_SMOKE_PROC_SYS=rw
# (leave /proc/sys writable, unlike a pod; says so), IMAGE_SMOKE_POD_MANIFEST (another pod than
# deploy/launcher-pod.yaml for the capabilities, no_new_privs and sysctls; says so).
# Needs root and debootstrap (scripts/setup.sh installs it). Prints "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SELF=$REPO/scripts/image-smoke.sh

log() { printf '[image-smoke] %s\n' "$*" >&2; }
die() { printf '[image-smoke] FAIL: %s\n' "$*" >&2; exit 1; }

# Bump when the way the root filesystem is made changes (it is part of the cache key).
RECIPE_VERSION=1
CACHE=${IMAGE_SMOKE_CACHE:-$REPO/.cache}
RUNTIME_FROM='debian:bookworm-slim'
# The pod whose capabilities, no_new_privs and sysctls the container gets (IMAGE_SMOKE_POD_MANIFEST
# overrides it, e.g. to measure a capability set; CI always uses deploy/launcher-pod.yaml).
POD_MANIFEST=${IMAGE_SMOKE_POD_MANIFEST:-$REPO/deploy/launcher-pod.yaml}
[[ -f $POD_MANIFEST ]] || { echo "[image-smoke] FAIL: no pod manifest $POD_MANIFEST" >&2; exit 1; }
export IMAGE_SMOKE_POD_MANIFEST=$POD_MANIFEST

# --- The Dockerfile's runtime stage -------------------------------------------------------------
# Prints the runtime stage's instructions, one per line (continuations joined, comments dropped).
runtime_stage() {
  awk '
    /^[[:space:]]*#/ && !cont { next }
    {
      line = $0
      if (cont) { buf = buf " " line } else { buf = line }
      if (buf ~ /\\[[:space:]]*$/) { sub(/\\[[:space:]]*$/, "", buf); cont = 1; next }
      cont = 0
      gsub(/[[:space:]]+/, " ", buf); sub(/^ /, "", buf); sub(/ $/, "", buf)
      if (buf == "") next
      if (toupper(buf) ~ /^FROM /) { inrt = (buf ~ / AS runtime$/) }
      if (inrt) print buf
    }
  ' Dockerfile
}

# Parses `["a", "b"]` into one word per line (exec form of ENTRYPOINT/HEALTHCHECK CMD).
json_words() {
  sed -E 's/^[^[]*\[//; s/\][[:space:]]*$//' <<<"$1" | tr ',' '\n' | sed -E 's/^[[:space:]]*"//; s/"[[:space:]]*$//'
}

declare -a ENTRYPOINT=() HEALTHCHECK=() RUNS=() ENVS=()
COPY_SRC='' COPY_DST=''
parse_runtime_stage() {
  local ins first=1
  while IFS= read -r ins; do
    if ((first)); then
      [[ $ins == "FROM $RUNTIME_FROM AS runtime" ]] ||
        die "Dockerfile: the runtime stage must start with 'FROM $RUNTIME_FROM AS runtime' (debootstrap stands in for it), got '$ins'"
      first=0
      continue
    fi
    case ${ins%% *} in
      LABEL) ;;
      ENV) ENVS+=("${ins#ENV }") ;;
      RUN) RUNS+=("${ins#RUN }") ;;
      COPY)
        [[ $ins =~ ^COPY\ --from=build\ (/[^ ]+)\ (/[^ ]+)$ ]] ||
          die "Dockerfile: only 'COPY --from=build SRC DST' is understood in the runtime stage, got '$ins'"
        [[ ${BASH_REMATCH[1]} == /out/launcher ]] || die "Dockerfile: the build stage's binary is /out/launcher"
        COPY_SRC=${BASH_REMATCH[1]} COPY_DST=${BASH_REMATCH[2]} ;;
      ENTRYPOINT) mapfile -t ENTRYPOINT < <(json_words "$ins") ;;
      HEALTHCHECK)
        [[ $ins == *' CMD ['* ]] || die "Dockerfile: HEALTHCHECK must use CMD in exec form"
        mapfile -t HEALTHCHECK < <(json_words "${ins#* CMD }") ;;
      *) die "Dockerfile: '${ins%% *}' in the runtime stage is not understood by this smoke test: teach scripts/image-smoke.sh" ;;
    esac
  done < <(runtime_stage)
  ((first == 0)) || die "Dockerfile: no stage 'FROM $RUNTIME_FROM AS runtime'"
  ((${#RUNS[@]})) || die "Dockerfile: the runtime stage has no RUN"
  [[ -n $COPY_DST ]] || die "Dockerfile: the runtime stage does not COPY the launcher"
  [[ ${ENTRYPOINT[*]:-} == "$COPY_DST run" ]] || die "Dockerfile: ENTRYPOINT must be [\"$COPY_DST\", \"run\"], got '${ENTRYPOINT[*]:-}'"
  [[ ${HEALTHCHECK[*]:-} == "$COPY_DST status" ]] || die "Dockerfile: HEALTHCHECK must run [\"$COPY_DST\", \"status\"], got '${HEALTHCHECK[*]:-}'"
  grep -q 'install-runtime.sh' <<<"${RUNS[*]}" || die "Dockerfile: the runtime stage does not run packaging/install-runtime.sh"
}

# Everything that goes into the root filesystem: the package list, the packaging scripts, the
# runtime stage's FROM/RUN/ENV lines, and this script's own functions that build it.
cache_key() {
  {
    echo "recipe $RECIPE_VERSION"
    # The package lines only (editing a comment does not rebuild).
    sed -E 's/#.*//; s/[[:space:]]+$//' packaging/runtime-packages.txt | grep -v '^$'
    cat packaging/install-runtime.sh packaging/enable-backports.sh
    runtime_stage | grep -E '^(FROM|RUN|ENV) '
    declare -f runtime_stage parse_runtime_stage host_debian_sources debian_mirror slim_config \
      mount_build_env inner_replay build_rootfs
  } | sha256sum | cut -c1-16
}

# --- Step 1: the root filesystem ----------------------------------------------------------------
# The machine's own Debian sources in deb822 form: /etc/apt/sources.list.d/debian.sources, or
# else its one-line /etc/apt/sources.list entries for bookworm converted (scripts/setup.sh
# accepts both). No mirror address is written in this repository.
host_debian_sources() {
  local src=/etc/apt/sources.list.d/debian.sources
  if [[ -f $src ]] && grep -Eq '^Suites:.*bookworm( |$)' "$src"; then
    cat "$src"
    return
  fi
  [[ -f /etc/apt/sources.list ]] || return 0
  awk '$1 == "deb" {
         i = 2
         if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } # skip [options]
         if ($(i+1) !~ /^bookworm(-updates|-security)?$/) next
         printf "Types: deb\nURIs: %s\nSuites: %s\nComponents:", $i, $(i+1)
         for (j = i + 2; j <= NF; j++) printf " %s", $j
         printf "\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
       }' /etc/apt/sources.list
}

# The machine's first mirror for the suite bookworm.
debian_mirror() {
  host_debian_sources | awk -v RS= '/Suites:[^\n]*bookworm( |\n|$)/ { print; exit }' \
    | awk '/^URIs:/ { print $2; exit }'
}

# What debian:bookworm-slim configures on top of a minbase debootstrap (debuerreotype's
# minimizing config and slimify): no docs, man pages or locales; services never start at install.
slim_config() {
  local root=$1
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{groff,info,linda,lintian,locale,man}/*
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  # The image's apt sources: the deb822 file of debian:bookworm-slim, made from the machine's own.
  rm -f "$root/etc/apt/sources.list"
  host_debian_sources >"$root/etc/apt/sources.list.d/debian.sources"
}

# Mounts what `docker build` gives a RUN (proc, sys, dev, resolv.conf) into $1. Call only inside
# a private mount namespace: everything disappears with it, on success and on failure.
mount_build_env() {
  local root=$1
  mount -t proc proc "$root/proc"
  mount -t sysfs sysfs "$root/sys"
  mount --rbind /dev "$root/dev"
  touch "$root/etc/resolv.conf"
  mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
}

# Internal: runs inside `unshare --mount`. Replays the runtime stage's RUN lines in root $1.
inner_replay() {
  local root=$1 run src target cmd
  parse_runtime_stage
  mount --make-rprivate /
  mount_build_env "$root"
  for run in "${RUNS[@]}"; do
    cmd=$run
    local -a binds=()
    while [[ $cmd == --mount=* ]]; do
      local m=${cmd%% *}
      cmd=${cmd#* }
      [[ $m =~ ^--mount=type=bind,source=([^,]+),target=([^, ]+)$ ]] ||
        die "Dockerfile: only '--mount=type=bind,source=S,target=T' is understood, got '$m'"
      src=${BASH_REMATCH[1]} target=${BASH_REMATCH[2]}
      mkdir -p "$root$target"
      mount --bind "$REPO/$src" "$root$target"
      mount -o remount,bind,ro "$root$target"
      binds+=("$root$target")
    done
    log "RUN $cmd"
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${ENVS[@]}" \
      chroot "$root" /bin/sh -c "$cmd"
    for b in "${binds[@]}"; do umount "$b" && rmdir "$b" 2>/dev/null || true; done
  done
}

build_rootfs() {
  local dest=$1 tmp mirror
  command -v debootstrap >/dev/null || die "debootstrap is missing: run scripts/setup.sh"
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "no Debian mirror for suite bookworm in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  tmp=$dest.partial
  rm -rf "$tmp"
  mkdir -p "$CACHE/debs"
  log "debootstrap --variant=minbase bookworm (the FROM $RUNTIME_FROM)"
  local t0=$SECONDS
  unshare --mount --propagation private \
    debootstrap --variant=minbase --cache-dir="$CACHE/debs" \
      --keyring=/usr/share/keyrings/debian-archive-keyring.gpg bookworm "$tmp" "$mirror" \
      >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  slim_config "$tmp"
  log "debootstrap took $((SECONDS - t0)) s; replaying the runtime stage's RUN lines"
  t0=$SECONDS
  unshare --mount --propagation private bash "$SELF" __replay "$tmp" >"$CACHE/replay.log" 2>&1 ||
    { tail -30 "$CACHE/replay.log" >&2; die "replaying the runtime stage failed (log: $CACHE/replay.log)"; }
  log "runtime stage took $((SECONDS - t0)) s"
  mv "$tmp" "$dest"
}

# Internal, under the cache's build lock: builds $1 unless another run built it meanwhile.
build_step() {
  local rootfs=$1
  parse_runtime_stage
  if [[ -d $rootfs ]]; then
    log "root filesystem built meanwhile by another run: $rootfs"
    return 0
  fi
  log "building root filesystem $rootfs (package list or recipe changed)"
  # Only one cached root filesystem at a time: they are ~0.3 GB each.
  rm -rf "$CACHE"/rootfs-*
  build_rootfs "$rootfs"
}

# --- Step 2 and 3: run inside the image ---------------------------------------------------------
# Internal, inside `unshare --mount` (and a network namespace): the container's view of the
# image: overlay (writable layer) over the cached root filesystem, the COPY --from=build, the
# pod's /run and /tmp as tmpfs, proc/sys/dev. Prints the merged root.
enter_container() {
  local rootfs=$1 work=$2 m=$2/merged
  mkdir -p "$work/upper" "$work/work" "$m"
  mount --make-rprivate /
  mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/work" "$m"
  install -m 0755 "$IMAGE_SMOKE_BIN" "$m$COPY_DST"
  # /proc and /sys as a container runtime mounts them for an unprivileged container: sysfs
  # read-only, /proc/sys read-only (sysctls cannot be written from inside a pod).
  mount -t proc proc "$m/proc"
  if [[ ${IMAGE_SMOKE_PROC_SYS:-ro} == ro ]]; then
    mount --bind "$m/proc/sys" "$m/proc/sys"
    mount -o remount,bind,ro "$m/proc/sys"
  else
    log "WARNING: IMAGE_SMOKE_PROC_SYS=$IMAGE_SMOKE_PROC_SYS: /proc/sys is writable, unlike in a pod"
  fi
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$m/sys"
  # /dev as a container runtime makes it: a tmpfs with the standard nodes, a private devpts, and
  # the device plugin's devices (/dev/kvm, /dev/net/tun) when the machine has them.
  mount -t tmpfs -o mode=0755,nosuid tmpfs "$m/dev"
  local n
  for n in null zero full random urandom tty kvm net/tun; do
    [[ -e /dev/$n ]] || continue
    mkdir -p "$(dirname "$m/dev/$n")"
    touch "$m/dev/$n"
    mount --bind "/dev/$n" "$m/dev/$n"
  done
  mkdir -p "$m/dev/pts" "$m/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$m/dev/pts"
  ln -s pts/ptmx "$m/dev/ptmx"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$m/dev/shm"
  ln -s /proc/self/fd "$m/dev/fd"
  ln -s /proc/self/fd/0 "$m/dev/stdin"
  ln -s /proc/self/fd/1 "$m/dev/stdout"
  ln -s /proc/self/fd/2 "$m/dev/stderr"
  : >"$m/dev/termination-log"
  mount -t tmpfs -o mode=0755 tmpfs "$m/run"
  mount -t tmpfs -o mode=1777 tmpfs "$m/tmp"
  # (Through $m/run, never $m/var/run: /var/run is an absolute symlink to /run, which outside the
  # chroot would be this machine's /run.)
  mkdir -p "$m/run/lock" "$m/run/kubevirt-private" "$m/run/kubevirt/container-disks" "$m/run/libvirt"
}

# Kills (TERM, then KILL) every process whose root directory is $1: the daemons and qemu this
# container started. They are found by id through /proc/PID/root, nothing is matched by name.
kill_container_processes() {
  local root=$1 pid sig i
  for sig in TERM KILL; do
    for i in $(seq 25); do
      local -a pids=()
      for pid in /proc/[0-9]*; do
        [[ $(readlink "$pid/root" 2>/dev/null) == "$root" ]] && pids+=("${pid#/proc/}")
      done
      ((${#pids[@]})) || return 0
      ((i == 1)) && kill "-$sig" "${pids[@]}" 2>/dev/null
      sleep 0.2
    done
  done
}

# The capabilities deploy/launcher-pod.yaml gives the compute container (drop ALL, add these),
# lower-case and comma-separated for setpriv, e.g. "net_admin,net_raw".
pod_caps() {
  sed -nE 's/^[[:space:]]+add: \[(.*)\][[:space:]]*$/\1/p' "$POD_MANIFEST" | head -n1 \
    | tr -d '" ' | tr 'A-Z' 'a-z'
}

# "--no-new-privs" when deploy/launcher-pod.yaml sets `allowPrivilegeEscalation: false` (the
# runtime then sets the process's no_new_privs flag, which also limits what exec can grant).
pod_nnp() {
  if grep -Eq '^[[:space:]]+allowPrivilegeEscalation: false[[:space:]]*$' "$POD_MANIFEST"; then
    echo --no-new-privs
  fi
}

# The pod's sysctls (spec.securityContext.sysctls of deploy/launcher-pod.yaml), one "name=value"
# a line: what the runtime sets in the pod's network namespace before any container starts.
pod_sysctls() {
  awk '
    /^[[:space:]]+sysctls:[[:space:]]*$/ { in_s = 1; ind = match($0, /[^ ]/); next }
    in_s && match($0, /[^ ]/) <= ind && $0 !~ /^[[:space:]]*$/ { in_s = 0 }
    in_s && /- name:/ { n = $NF; gsub(/"/, "", n) }
    in_s && /value:/ { v = $NF; gsub(/"/, "", v); print n "=" v }
  ' "$POD_MANIFEST"
}

# Sets the pod's sysctls in the current network namespace (outside the container, as the
# runtime does; the container itself sees /proc/sys read-only).
apply_pod_sysctls() {
  local kv
  while IFS= read -r kv; do
    [[ -n $kv ]] || continue
    # (through /proc/sys: no procps needed)
    echo "${kv#*=}" >"/proc/sys/$(tr . / <<<"${kv%%=*}")" || die "setting the pod's sysctl $kv"
    log "pod sysctl $kv (from deploy/launcher-pod.yaml)"
  done < <(pod_sysctls)
}

# The setpriv arguments that make a process what the pod's container is: uid 0 with only the
# pod's capabilities (bounding set = the manifest's `add`, nothing inheritable), like a runtime
# with `drop: [ALL]`, and no_new_privs as `allowPrivilegeEscalation: false` asks.
pod_setpriv() {
  local caps
  caps=$(pod_caps)
  # shellcheck disable=SC2046 # pod_nnp prints one word or nothing
  echo setpriv --bounding-set="-all${caps:+,+${caps//,/,+}}" --inh-caps=-all $(pod_nnp) --
}

# Runs a command in the container as the pod runs it.
in_pod() {
  # shellcheck disable=SC2046
  in_ct $(pod_setpriv) "$@"
}

# The qemu.conf the launcher writes (QEMU_CONF in launcher/src/supervise/daemons.rs): step 2
# runs libvirtd with exactly that, so its capability needs are measured as `launcher run` has them.
launcher_qemu_conf() {
  awk '/^pub const QEMU_CONF: &str = r#"/ { f = 1; sub(/^pub const QEMU_CONF: &str = r#"/, "") }
       f && /^"#;$/ { exit }
       f { print }' "$REPO/launcher/src/supervise/daemons.rs"
}

in_ct() { env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${ENVS[@]}" chroot "$CT" "$@"; }

PASSED=0 FAILED=0
check() {
  local what=$1
  shift
  if "$@" >"$WORK/check.out" 2>&1; then
    PASSED=$((PASSED + 1))
    log "ok   $what"
  else
    FAILED=$((FAILED + 1))
    log "FAIL $what"
    sed 's/^/       | /' "$WORK/check.out" | tail -15 >&2
  fi
}

# The project's tiny test guest (scripts/build-test-guest.sh: Debian's kernel unpacked for a fast
# PVH boot under TCG, a busybox initramfs), copied into $1 as vmlinuz and initrd.img.
test_guest() {
  bash "$REPO/scripts/build-test-guest.sh" "$1" >/dev/null
}
# Its kernel command line without a NIC: no DHCP, power off 1 s after GUEST-READY.
GUEST_CMDLINE='console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests guest.dhcp=0 guest.poweroff=1'

wait_for() { # wait_for SECONDS CMD...: polls every 0.2 s
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Internal: step 2, inside `unshare --mount --net`.
inner_prove() {
  local rootfs=$1
  WORK=$2
  parse_runtime_stage
  ip link set lo up
  enter_container "$rootfs" "$WORK"
  CT=$WORK/merged
  trap 'kill_container_processes "$CT"' EXIT

  check "the launcher's libraries all resolve in the image (ldd)" bash -c \
    "out=\$(chroot '$CT' ldd '$COPY_DST') && ! grep -q 'not found' <<<\"\$out\""
  log "launcher links: $(chroot "$CT" ldd "$COPY_DST" | awk '{print $1}' | grep -v -e vdso -e ld-linux | tr '\n' ' ')"
  check "launcher --version runs" in_ct "$COPY_DST" --version
  check "no compiler in the image (cc gcc c++ g++ clang rustc cargo ld as)" bash -c \
    "for c in cc gcc c++ g++ clang rustc cargo ld as; do chroot '$CT' sh -c \"command -v \$c\" && exit 1; done; exit 0"
  check "no package lists in the image" bash -c "[ -z \"\$(find '$rootfs/var/lib/apt/lists' -type f 2>/dev/null)\" ]"
  check "no .deb files in the image" bash -c "[ -z \"\$(find '$rootfs/var/cache/apt' -name '*.deb' 2>/dev/null)\" ]"
  check "user libvirt-qemu exists" in_ct id libvirt-qemu
  check "libvirt-qemu is uid 64055 and group libvirt-qemu gid 64055 (the passt pod's runAsUser/fsGroup)" bash -c \
    "[ \"\$(chroot '$CT' id -u libvirt-qemu):\$(chroot '$CT' getent group libvirt-qemu | cut -d: -f3)\" = 64055:64055 ]"
  check "every listed package is installed" bash -c "chroot '$CT' dpkg-query -W -f='\${Status} \${Package}\n' \
    \$(bash '$REPO/packaging/install-runtime.sh' --print bookworm-backports) \$(bash '$REPO/packaging/install-runtime.sh' --print bookworm) \
    | grep -v '^install ok installed' | grep . && exit 1 || exit 0"
  check "backports packages are the backports versions (libvirt 11, qemu 10)" bash -c \
    "chroot '$CT' dpkg-query -W -f='\${Version}\n' libvirt-daemon | grep -q '^11\.' && chroot '$CT' dpkg-query -W -f='\${Version}\n' qemu-system-x86 | grep -q '^1:10\.'"
  check "qemu-img runs" in_ct qemu-img --version
  check "xorriso runs" in_ct xorriso -version
  check "nft runs (lists this namespace's ruleset)" in_ct nft list ruleset
  check "passt runs" bash -c "chroot '$CT' passt --version 2>&1 | grep -qi passt"
  check "OVMF firmware present" test -s "$CT/usr/share/OVMF/OVMF_CODE.fd"
  check "swtpm and swtpm_setup run (TPM emulator)" bash -c \
    "chroot '$CT' swtpm --version | grep -q 'TPM emulator version' && chroot '$CT' swtpm_setup --version 2>&1 | grep -q 'setup tool version'"

  # libvirt as the launcher runs it: root daemons, the launcher's own qemu.conf.
  launcher_qemu_conf >"$CT/etc/libvirt/qemu.conf"
  grep -q '^user = ' "$CT/etc/libvirt/qemu.conf" || die "no QEMU_CONF found in launcher/src/supervise/daemons.rs"
  mkdir -p "$CT/var/log/libvirt/qemu"
  local caps sp
  caps=$(pod_caps)
  sp=$(pod_setpriv)
  check "the pod's capabilities ($caps, from deploy/launcher-pod.yaml) are all a process gets" bash -c \
    "chroot '$CT' $sp sh -c 'setpriv --dump; grep -E \"^(Cap(Eff|Bnd)|NoNewPrivs)\" /proc/self/status' >'$WORK/caps.txt' &&
     [ \"\$(sed -n 's/^Capability bounding set: //p' '$WORK/caps.txt' | tr , '\\n' | sort | tr '\\n' ,)\" = \"\$(tr , '\\n' <<<'$caps' | sort | tr '\\n' ,)\" ] &&
     [ \"\$(sed -n 's/^CapEff:\t//p' '$WORK/caps.txt')\" = \"\$(sed -n 's/^CapBnd:\t//p' '$WORK/caps.txt')\" ] &&
     { [ -z '$(pod_nnp)' ] || grep -q '^NoNewPrivs:.1' '$WORK/caps.txt'; }"
  check "virtlogd starts with the pod's capabilities (socket appears)" bash -c "chroot '$CT' $sp virtlogd -d && for i in \$(seq 50); do [ -S '$CT/run/libvirt/virtlogd-sock' ] && exit 0; sleep 0.1; done; exit 1"
  check "libvirtd starts with the pod's capabilities (socket appears)" bash -c "chroot '$CT' $sp libvirtd -d && for i in \$(seq 100); do [ -S '$CT/run/libvirt/libvirt-sock' ] && exit 0; sleep 0.1; done; exit 1"
  in_ct virsh -c qemu:///system capabilities >"$WORK/caps.xml" 2>&1 || true
  in_ct virsh -c qemu:///system version >"$WORK/version.txt" 2>&1 || true
  check "virsh capabilities: qemu-system-x86_64 with domain type qemu (TCG)" bash -c \
    "grep -q '<emulator>/usr/bin/qemu-system-x86_64</emulator>' '$WORK/caps.xml' && grep -q \"<domain type='qemu'\" '$WORK/caps.xml'"
  check "virsh version: libvirt 11, QEMU 10" bash -c "grep -Eq 'libvirt 11\.' '$WORK/version.txt' && grep -Eq 'hypervisor: QEMU 10\.' '$WORK/version.txt'"
  log "$(grep -E 'libvirt|hypervisor' "$WORK/version.txt" | tr '\n' ';' | tr -s ' ')"

  mkdir -p "$CT/tmp/guest"
  cp "$WORK/guest/vmlinuz" "$WORK/guest/initrd.img" "$CT/tmp/guest/"
  local name=smoke-$$
  cat >"$CT/tmp/guest/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/tmp/guest/vmlinuz</kernel>
    <initrd>/tmp/guest/initrd.img</initrd>
    <cmdline>$GUEST_CMDLINE</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='/tmp/guest/serial.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
  local t0
  t0=$(date +%s.%N)
  check "virsh create of a direct-kernel-boot domain (type='qemu')" in_ct virsh -c qemu:///system create /tmp/guest/domain.xml
  check "the guest boots to GUEST-READY on its serial log (TCG)" wait_for 180 grep -q GUEST-READY "$CT/tmp/guest/serial.log"
  log "guest reached GUEST-READY $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after virsh create"
  check "the guest's poweroff ends the domain" wait_for 30 bash -c "! chroot '$CT' virsh -c qemu:///system domstate $name"
  check "virtlogd wrote qemu's log" test -s "$CT/var/log/libvirt/qemu/$name.log"

  # The passt pod's mode (deploy/launcher-pod-passt.yaml): not root, no capability at all.
  # libvirtd then runs as a per-user daemon (qemu:///session) and starts qemu as that user.
  local uid
  uid=$(sed -nE 's/^[[:space:]]+runAsUser: ([0-9]+)$/\1/p' "$REPO/deploy/launcher-pod-passt.yaml" | head -n1)
  mkdir -p "$CT/tmp/session/home" "$CT/tmp/session/run"
  chown -R "$uid:$uid" "$CT/tmp/session"
  chmod 0700 "$CT/tmp/session/run"
  chmod -R a+rX "$CT/tmp/guest"
  local -a as_user=(setpriv --reuid="$uid" --regid="$uid" --clear-groups --bounding-set=-all --inh-caps=-all --
    env HOME=/tmp/session/home XDG_RUNTIME_DIR=/tmp/session/run)
  check "uid $uid (the passt pod's user) with no capability: libvirtd starts as a session daemon" bash -c \
    "chroot '$CT' ${as_user[*]} libvirtd -d && for i in \$(seq 100); do [ -S '$CT/tmp/session/run/libvirt/libvirt-sock' ] && exit 0; sleep 0.1; done; exit 1"
  check "uid $uid with no capability: passt runs" in_ct "${as_user[@]}" passt --version
  sed -e "s|<name>$name</name>|<name>$name-user</name>|" -e "s|/tmp/guest/serial.log|/tmp/session/serial.log|" \
    "$CT/tmp/guest/domain.xml" >"$CT/tmp/session/domain.xml"
  chmod a+r "$CT/tmp/session/domain.xml"
  t0=$(date +%s.%N)
  check "uid $uid with no capability: virsh -c qemu:///session create" in_ct "${as_user[@]}" virsh -c qemu:///session create /tmp/session/domain.xml
  check "uid $uid with no capability: the guest boots to GUEST-READY (TCG)" wait_for 180 grep -q GUEST-READY "$CT/tmp/session/serial.log"
  log "session guest reached GUEST-READY $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s after virsh create"
  if ((FAILED)); then
    log "serial logs:"; tail -3 "$CT/tmp/guest/serial.log" "$CT/tmp/session/serial.log" >&2 || true
    log "qemu log:"; tail -10 "$CT/var/log/libvirt/qemu/$name.log" >&2 || true
  fi
  in_ct virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
  kill_container_processes "$CT"
  printf '%s %s\n' "$PASSED" "$FAILED" >"$WORK/result"
}

main() {
  local rootfs_only=0 size=0
  while (($#)); do
    case $1 in
      --rootfs-only) rootfs_only=1 ;;
      --size) size=1 ;;
      __replay) shift; inner_replay "$@"; return ;;
      __build) shift; build_step "$@"; return ;;
      __prove) shift; inner_prove "$@"; return ;;
      __pod) shift; inner_pod "$@"; return ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; return ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  [[ $EUID -eq 0 ]] || die "must run as root (debootstrap, chroot, namespaces)"
  [[ $POD_MANIFEST -ef $REPO/deploy/launcher-pod.yaml ]] ||
    log "WARNING: IMAGE_SMOKE_POD_MANIFEST=$POD_MANIFEST: the pod's settings come from it, not from deploy/launcher-pod.yaml"
  local t_start=$SECONDS
  parse_runtime_stage
  local key rootfs
  key=$(cache_key)
  rootfs=$CACHE/rootfs-$key
  mkdir -p "$CACHE"
  if [[ -d $rootfs ]]; then
    log "root filesystem cached: $rootfs"
  else
    # One build at a time per cache: a second run (another clone's scripts/test.sh) waits for
    # the first, then uses what it built.
    flock -n "$CACHE/.build.lock" true || log "another run is building a root filesystem in $CACHE: waiting (at most 30 min)"
    flock -w 1800 -o "$CACHE/.build.lock" bash "$SELF" __build "$rootfs" ||
      die "building the root filesystem $rootfs failed"
  fi
  local t_rootfs=$((SECONDS - t_start))
  log "root filesystem: $(du -sh --apparent-size "$rootfs" | cut -f1) apparent, $(du -sh "$rootfs" | cut -f1) on disk; step 1 took ${t_rootfs} s"
  if ((size)); then
    log "gzip -6 of the root filesystem (≈ the image's pull size): $(tar -C "$rootfs" -c . 2>/dev/null | gzip -6 | wc -c | numfmt --to=iec)"
  fi

  if [[ -n ${IMAGE_SMOKE_BIN:-} ]]; then
    [[ -x $IMAGE_SMOKE_BIN ]] || die "IMAGE_SMOKE_BIN=$IMAGE_SMOKE_BIN is not an executable"
    IMAGE_SMOKE_BIN=$(realpath "$IMAGE_SMOKE_BIN")
    log "using IMAGE_SMOKE_BIN=$IMAGE_SMOKE_BIN instead of the release build"
  elif [[ ! -x target/release/launcher ]] || [[ -n $(find launcher/src launcher/Cargo.toml Cargo.lock domxml-templates -newer target/release/launcher -print -quit 2>/dev/null) ]]; then
    log "cargo build --release --locked (the build stage's binary)"
    cargo build --release --locked -p launcher --bin launcher
  fi
  export IMAGE_SMOKE_BIN=${IMAGE_SMOKE_BIN:-$REPO/target/release/launcher}

  local work
  work=$(mktemp -d /tmp/image-smoke.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  mkdir -p "$work/guest"
  test_guest "$work/guest" || die "scripts/build-test-guest.sh failed"
  local t0=$SECONDS
  unshare --mount --net --propagation private bash "$SELF" __prove "$rootfs" "$work" || die "the rootfs proof crashed"
  local p f
  read -r p f <"$work/result"
  log "step 2 (in-image checks) took $((SECONDS - t0)) s"
  if ((!rootfs_only)); then
    STEP3_PASSED=0 STEP3_FAILED=1
    pod_step "$rootfs" "$work" || true
    p=$((p + STEP3_PASSED)) f=$((f + STEP3_FAILED))
  else
    log "--rootfs-only: NOT running the ENTRYPOINT against a sandbox pod (step 3)"
  fi
  log "total $((SECONDS - t_start)) s"
  echo "image-smoke: $p passed, $f failed"
  ((f == 0))
}

# --- Step 3: the ENTRYPOINT in a sandbox pod ----------------------------------------------------
# Outside: makes the sandbox pod and the guest, then runs inner_pod inside the pod's namespaces.
pod_step() {
  local rootfs=$1 work=$2 name info pod_ip rc=0 f
  mkdir -p "$work/pod"
  name=ism$((($$ + RANDOM) % 100000))
  bash scripts/sandbox.sh create "$name" --style flannel || { log "FAIL step 3: sandbox create $name"; return 1; }
  # shellcheck disable=SC2064
  trap "bash '$REPO/scripts/sandbox.sh' destroy '$name' >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
  info=$(bash scripts/sandbox.sh info "$name")
  pod_ip=$(jq -r .pod_ip <<<"$info")
  log "step 3: sandbox pod $name (flannel style, pod IP $pod_ip)"
  local t0=$SECONDS
  bash scripts/sandbox.sh exec "$name" -- unshare --mount --propagation private \
    bash "$SELF" __pod "$rootfs" "$work/pod" "$work/guest" "$pod_ip" || rc=$?
  log "step 3 took $((SECONDS - t0)) s"
  bash scripts/sandbox.sh destroy "$name" >/dev/null 2>&1 || true
  local p=0 fl=1
  [[ -s $work/pod/result ]] && read -r p fl <"$work/pod/result"
  STEP3_PASSED=$p STEP3_FAILED=$fl
  ((rc == 0 && fl == 0))
}

# Internal, inside the sandbox pod's network and mount namespaces (+ a private mount namespace):
# the container as Kubernetes would start it from deploy/launcher-pod.yaml.
inner_pod() {
  local rootfs=$1 guest=$3 pod_ip=$4
  WORK=$2
  parse_runtime_stage
  apply_pod_sysctls
  enter_container "$rootfs" "$WORK"
  CT=$WORK/merged
  trap 'kill_container_processes "$CT"; printf "%s %s\n" "$PASSED" "$FAILED" >"$WORK/result"' EXIT
  # What the kubelet bind-mounts into every container: the pod's resolv.conf, hosts, hostname.
  local f
  for f in resolv.conf hosts hostname; do
    [[ -e /etc/$f ]] || continue
    [[ -e $CT/etc/$f ]] || : >"$CT/etc/$f"
    mount --bind "/etc/$f" "$CT/etc/$f"
  done
  # The container disk volume with the kernel-boot artifacts, and the VMI from the "ConfigMap".
  local kb=$CT/run/kubevirt/container-disks/kernel-boot # /var/run/... inside the container
  mkdir -p "$kb" "$CT/etc/launcher"
  cp "$guest/vmlinuz" "$kb/vmlinuz"
  cp "$guest/initrd.img" "$kb/initrd.img"
  cat >"$CT/etc/launcher/vmi.yaml" <<'VMI'
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: smoke
  namespace: default
spec:
  terminationGracePeriodSeconds: 10
  domain:
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0 quiet panic=-1 no_timer_check noapictimer cryptomgr.notests
        container:
          image: test-guest
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    resources:
      requests:
        memory: 256Mi
    devices:
      autoattachGraphicsDevice: false
      interfaces:
        - name: default
          bridge: {}
  networks:
    - name: default
      pod: {}
VMI
  local caps want_eff
  caps=$(pod_caps)
  # The capability mask of a process started as the pod starts its container (step 2 checked
  # that it holds exactly the manifest's capabilities, by name).
  # shellcheck disable=SC2046
  want_eff=$(chroot "$CT" $(pod_setpriv) sh -c 'grep "^CapEff:" /proc/self/status' | cut -f2)
  log "ENTRYPOINT ${ENTRYPOINT[*]} --accel tcg (capabilities: $caps; CapEff $want_eff; $(pod_nnp))"
  local t0=$SECONDS
  # shellcheck disable=SC2046
  (exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${ENVS[@]}" \
    LAUNCHER_VMI=/etc/launcher/vmi.yaml \
    chroot "$CT" $(pod_setpriv) "${ENTRYPOINT[@]}" --accel tcg \
    >"$WORK/launcher.log" 2>&1) &
  local lpid=$!
  local status=$CT/run/kubevirt-private/status.json serial=''
  sleep 1
  if grep -q 'not implemented yet' "$WORK/launcher.log"; then
    check "launcher run is implemented in this binary (WAITING ON branch run)" false
    return 1
  fi
  # Until status.json names the serial log, or the launcher has exited.
  wait_for 90 bash -c "jq -e '.serial_log' '$status' || ! kill -0 $lpid" || true
  serial=$(jq -r '.serial_log // empty' "$status" 2>/dev/null || true)
  serial=${serial/#\/var\/run\//\/run\/} # read it through $CT/run (/var/run is a symlink)
  check "status.json names the serial log" test -n "$serial"
  # Up to 180 s (TCG on a loaded 2-core machine), or until the launcher exits.
  check "the guest gets the pod's IP ($pod_ip) as its DHCP lease (TCG)" bash -c \
    "for i in \$(seq 900); do grep -q 'GUEST-DHCP iface=eth0 ip=$pod_ip ' '$CT$serial' && exit 0; kill -0 $lpid || exit 1; sleep 0.2; done; exit 1"
  log "lease $((SECONDS - t0)) s after start: $(grep -ao 'GUEST-DHCP iface=eth0 [^ ]* [^ ]* [^ ]*' "$CT$serial" 2>/dev/null | head -n1)"
  # What the launcher and its children really held (no process in the container may hold more).
  local pid line over=''
  for pid in /proc/[0-9]*; do
    [[ $(readlink "$pid/root" 2>/dev/null) == "$CT" ]] || continue
    line="$(tr -d '\0' <"$pid/comm" 2>/dev/null) $(awk '/^(CapEff|CapPrm|CapBnd|NoNewPrivs):/ { printf "%s%s ", $1, $2 }' "$pid/status" 2>/dev/null)"
    log "  in the container: pid ${pid#/proc/} $line"
    # More than the pod's mask in any set is a failure.
    local v
    for v in $(awk '/^Cap(Eff|Prm|Bnd):/ { print $2 }' "$pid/status" 2>/dev/null); do
      (((0x$v & ~0x$want_eff) == 0)) || over+="${pid#/proc/} "
    done
  done
  check "the launcher runs with exactly the pod's capabilities (CapEff $want_eff)" \
    grep -q "^CapEff:[[:space:]]*$want_eff\$" "/proc/$lpid/status"
  if [[ -n $(pod_nnp) ]]; then
    check "the launcher runs with no_new_privs (allowPrivilegeEscalation: false)" grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$lpid/status"
  fi
  check "no process in the container (launcher, libvirtd, virtlogd, qemu) holds a capability beyond the pod's" test -z "$over"
  check "HEALTHCHECK (${HEALTHCHECK[*]}) passes while the VM runs" in_pod "${HEALTHCHECK[@]}"
  kill -TERM "$lpid" 2>/dev/null || true
  local rc=0 deadline=$((SECONDS + 25)) # the VMI's grace 10 s + the pod's 15 s margin
  while kill -0 "$lpid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$lpid" 2>/dev/null; then
    check "SIGTERM ends the launcher within the pod's grace period (25 s)" false
  else
    wait "$lpid" || rc=$?
    check "SIGTERM ends the launcher with exit 0 (was $rc)" test "$rc" -eq 0
  fi
  check "the termination message is written to /dev/termination-log" test -s "$CT/dev/termination-log"
  log "termination message: $(head -c 200 "$CT/dev/termination-log" 2>/dev/null)"
  if ((FAILED)); then
    log "launcher log (last lines):"; tail -15 "$WORK/launcher.log" >&2 || true
    [[ -n $serial ]] && { log "serial log:"; tail -8 "$CT$serial" >&2 || true; }
  fi
  return 0
}

main "$@"; exit $? # one line: bash reads the script as it runs it
