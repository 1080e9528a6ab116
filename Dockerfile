# The Outrigger image: a drop-in for istio/proxyv2 in an injected pod. One binary plays every
# role Istio gives that image (istio/istio pilot/docker/Dockerfile.proxyv2 for the facts: WORKDIR
# /, entrypoint /usr/local/bin/pilot-agent, the data plane at /usr/local/bin/envoy,
# ISTIO_META_ISTIO_PROXY_SHA):
#   istio-proxy          pilot-agent proxy sidecar --domain ...   (agent and proxy in one process)
#   istio-init           pilot-agent istio-iptables ...           (traffic capture)
#   lifecycle hooks      pilot-agent wait | pilot-agent request ...
#   plain proxy          envoy -c bootstrap.yaml ...              (Envoy's command line)
#
#   docker build -t <registry>/outrigger:<tag> .
#
# Needs BuildKit (the default builder of current Docker; Podman/Buildah support it too) for
# RUN --mount. CI cannot build it (no container engine there); it runs the same build script, and
# packaging/check-image-layout.sh checks the same runtime layout without one.

# The toolchain of rust-version in Cargo.toml, on Debian bookworm like the runtime stage, so the
# binary links against the glibc it runs with.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches only speed up rebuilds; the binaries are copied out of the
# cached target directory to /out inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    packaging/build-release.sh /out

FROM debian:bookworm-slim

# What the roles need at run time, as istio/proxyv2's base has it (docker/Dockerfile.base):
# iptables with iptables-{,nft-,legacy-}{save,restore} and the ip6tables ones (istio-iptables
# picks legacy or nft by what the node already uses), iproute2 for the `ip rule`/`ip route` of
# TPROXY capture, ca-certificates. Nothing else: no shell tools for debugging as proxyv2's
# debug base carries. istio-proxy, 1337:1337: the uid/gid injected pods run the proxy as, and
# the owner the capture rules exempt (istio-iptables -u 1337 -g 1337).
# DL3008 (pin apt versions) is ignored on purpose: bookworm's point releases replace the
# packages, a pin would break the build at the next security update rather than keep it stable.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates iptables iproute2 \
    && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old \
    && groupadd --gid 1337 istio-proxy \
    && useradd --uid 1337 --gid 1337 --home-dir /var/lib/istio --no-create-home \
       --shell /usr/sbin/nologin istio-proxy

COPY --from=build /out/outrigger /usr/local/bin/outrigger
# pilot-agent and envoy links, and the emptyDir mount points owned by 1337 (see the script).
RUN --mount=type=bind,source=packaging/image-layout.sh,target=/tmp/image-layout.sh \
    sh /tmp/image-layout.sh /

# Keep in step with `version` in Cargo.toml (check-image-layout.sh checks it).
ARG OUTRIGGER_VERSION=0.1.0
ENV ISTIO_META_ISTIO_PROXY_SHA=outrigger-${OUTRIGGER_VERSION}

WORKDIR /
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/pilot-agent"]
