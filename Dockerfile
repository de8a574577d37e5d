# syntax=docker/dockerfile:1
#
# One image with every choreo binary; each compose service runs one of them. Two stages: a
# Rust toolchain builds the workspace, and a small runtime image (glibc, CA certificates, no
# shell, no package manager) holds only the binaries, running as a non-root user.
#
# Base images are build arguments with public defaults:
#   docker build -t choreo:local .
#   docker build --build-arg RUST_IMAGE=registry.example/rust:1.95-slim-bookworm \
#                --build-arg RUNTIME_IMAGE=registry.example/distroless/cc-debian12:nonroot -t choreo:local .
# The runtime image must carry the glibc the build image links against (both Debian 12 here).

ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# The binaries the image carries: the agents, the gateway and the CLI (`choreo streams ensure`
# sets up the streams). The benchmark tool stays out.
ARG BINARIES="choreo choreo-gateway choreo-fetcher choreo-triage choreo-security choreo-performance choreo-style choreo-tests choreo-aggregator choreo-editor choreo-notifier"
WORKDIR /src
COPY . .
# The cargo registry and the target folder are cache mounts, so a rebuild after a change
# recompiles only what changed; the binaries are copied out of the cache before it is unmounted.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out/bin /out/data/reports \
    && for binary in ${BINARIES}; do cp "target/release/${binary}" /out/bin/; done

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/bin/ /usr/local/bin/
# A folder the non-root user owns, for the notifier's reports: a named volume mounted here
# takes its ownership.
COPY --from=build --chown=65532:65532 /out/data/ /data/
# Numeric, so the user is non-root whatever RUNTIME_IMAGE is, with or without /etc/passwd.
USER 65532:65532
ENV CHOREO_LOG_FORMAT=json \
    CHOREO_REPORTS_DIR=/data/reports
# Each service names its binary, e.g. `command: ["choreo-security"]`.
CMD ["choreo", "--help"]
