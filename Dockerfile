# One image with every choreo binary; each compose service runs one of them. A Rust toolchain
# builds the workspace, and a small runtime image (glibc, CA certificates, no shell, no package
# manager) holds only the binaries, running as a non-root user. The `nats` target is the NATS
# server compose runs: the same runtime with nats-server and `choreo` (its health check is
# `choreo ping`, as neither image has a shell).
#
# Base images are build arguments with public defaults:
#   docker build -t choreo:local .
#   docker build --target nats -t choreo-nats:local .
#   docker build --build-arg RUST_IMAGE=registry.example/rust:1.95-slim-bookworm \
#                --build-arg RUNTIME_IMAGE=registry.example/distroless/cc-debian12:nonroot -t choreo:local .
# The runtime image must carry the glibc the build image links against (both Debian 12 here).
#
# Without a registry, scripts/images makes the same two images from the binaries cargo built
# on the machine (it reads BINARIES and the runtime stages' USER, ENV, ENTRYPOINT and CMD from
# here). No `# syntax=` line: it would pull a frontend image. The cache mounts need BuildKit
# (the default builder since Docker 23, or DOCKER_BUILDKIT=1), whose built-in Dockerfile
# frontend has had them since Docker 20.10; the legacy builder refuses them.

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG NATS_SERVER_IMAGE=docker.io/library/nats:2.14-alpine

FROM ${RUST_IMAGE} AS build
# The binaries the image carries: the agents, the gateway and the CLI (`choreo streams ensure`
# sets up the streams, `choreo ping` checks health). The benchmark tool stays out.
ARG BINARIES="choreo choreo-gateway choreo-fetcher choreo-triage choreo-security choreo-performance choreo-style choreo-tests choreo-aggregator choreo-editor choreo-notifier"
WORKDIR /src
COPY . .
# The cargo registry and the target folder are cache mounts, so a rebuild after a change
# recompiles only what changed; the binaries are copied out of the cache before it is unmounted,
# without their debug information (the release profile's line tables are most of each binary;
# the symbols stay, so backtraces name functions).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out/bin /out/data/reports /out/nats/data \
    && for binary in ${BINARIES}; do cp "target/release/${binary}" /out/bin/; done \
    && strip --strip-debug /out/bin/*

# The official image's static nats-server binary.
FROM ${NATS_SERVER_IMAGE} AS nats-server

FROM ${RUNTIME_IMAGE} AS nats
COPY --from=nats-server /usr/local/bin/nats-server /usr/local/bin/nats-server
COPY --from=build /out/bin/choreo /usr/local/bin/choreo
# JetStream's store, owned by the non-root user (a named volume mounted at /data takes it).
COPY --from=build --chown=65532:65532 /out/nats/ /
USER 65532:65532
ENTRYPOINT ["nats-server"]
CMD ["--jetstream", "--store_dir", "/data", "--http_port", "8222"]

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/bin/ /usr/local/bin/
# A folder the non-root user owns, for the notifier's reports: a named volume mounted here
# takes its ownership.
COPY --from=build --chown=65532:65532 /out/data/ /data/
# Numeric, so the user is non-root whatever RUNTIME_IMAGE is, with or without /etc/passwd.
USER 65532:65532
ENV CHOREO_LOG_FORMAT=json CHOREO_REPORTS_DIR=/data/reports
# Each service names its binary, e.g. `command: ["choreo-security"]`.
CMD ["choreo", "--help"]
