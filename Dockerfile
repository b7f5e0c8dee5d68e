# syntax=docker/dockerfile:1
#
# The launcher pod's image. Two stages:
#   build    Debian bookworm + the Rust toolchain: `cargo build --release --locked`. The launcher
#            speaks libvirt's RPC protocol itself, so the build needs no libvirt headers.
#   runtime  debian:bookworm-slim + exactly the packages in packaging/runtime-packages.txt,
#            installed by packaging/install-runtime.sh, + the binary. No compiler, no package lists.
#
# No container engine runs on the development machines: scripts/image-smoke.sh builds the
# runtime stage's root filesystem with debootstrap, replays this file's runtime-stage RUN lines
# in it, and runs the launcher inside it. Keep the runtime stage to the instructions that script
# understands (FROM, LABEL, ENV, RUN [--mount=type=bind,...], COPY --from=build /out/launcher,
# ENTRYPOINT and HEALTHCHECK in exec form); it fails on anything else.
#
#   docker build -t launcher .
#   docker run --rm --device /dev/kvm --device /dev/net/tun --cap-drop ALL \
#     --cap-add NET_ADMIN --cap-add NET_RAW --cap-add DAC_OVERRIDE --cap-add SETPCAP \
#     --security-opt no-new-privileges --sysctl net.ipv4.ip_unprivileged_port_start=67 \
#     -v $PWD/vmi.yaml:/etc/launcher/vmi.yaml:ro -e LAUNCHER_VMI=/etc/launcher/vmi.yaml launcher
# (the capabilities and the sysctl of deploy/launcher-pod.yaml; docs/packaging.md says why)

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# Extra Debian packages for the build (from bookworm-backports), if a fork ever needs any: the
# launcher links no C library beyond libc (its libvirt client is its own, see
# launcher/src/supervise/rpc.rs), so the default is none.
ARG BUILD_PACKAGES=""
# The image's own Debian source entry, copied with the suite changed: no mirror address here.
RUN --mount=type=bind,source=packaging,target=/tmp/packaging \
    if [ -n "$BUILD_PACKAGES" ]; then \
      bash /tmp/packaging/enable-backports.sh \
      && apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           -t bookworm-backports $BUILD_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p launcher --bin launcher \
 && install -D -m 0755 target/release/launcher /out/launcher

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="launcher" \
      org.opencontainers.image.description="Entrypoint of a KubeVirt-style launcher pod: turns a VMI into a running, networked VM" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,source=packaging,target=/tmp/packaging \
    bash /tmp/packaging/install-runtime.sh
COPY --from=build /out/launcher /usr/bin/launcher
# `launcher status` exits 0 only while the domain runs (the pod's readiness probe uses it too).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/usr/bin/launcher", "status"]
ENTRYPOINT ["/usr/bin/launcher", "run"]
