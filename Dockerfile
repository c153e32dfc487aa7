# syntax=docker/dockerfile:1
# One image with every binary of the download service: intake, processor, notifier, presigner
# and download-admin, each chosen by the container's command (`intake`, `processor provision`,
# `download-admin tenant list`, ...). Build from the repository root (needs BuildKit):
#
#   docker build -t download-service:dev .
#
# deploy/compose/compose.yaml builds and runs it; deploy/compose/check lints this file.

ARG RUST_VERSION=1.95.0

# --- build: the workspace's release binaries, with the registry and target dir cached between
# builds. --locked: exactly Cargo.lock's versions, as CI builds them.
FROM rust:${RUST_VERSION}-slim-trixie AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p intake -p processor -p notifier -p presigner -p admin \
    && mkdir -p /out \
    && cp target/release/intake target/release/processor target/release/notifier \
          target/release/presigner target/release/download-admin /out/

# --- probe: busybox, statically linked, run under the name `wget`, so the runtime image has an
# HTTP client for Compose healthchecks (GET /readyz) and still no shell. Kubernetes probes need
# none of it.
FROM busybox:1.37.0-musl AS probe

# --- runtime: glibc and CA certificates only (distroless, Debian 13 like the builder).
# Distroless publishes rolling tags only: pin a digest (`cc-debian13:nonroot@sha256:...`) where
# builds must be reproducible. Its `nonroot` user (65532) is replaced by 10001 below.
FROM gcr.io/distroless/cc-debian13:nonroot AS runtime
COPY --from=probe /bin/busybox /usr/local/bin/wget
COPY --from=builder /out/ /usr/local/bin/
# Listen on every interface in a container (the services default to 127.0.0.1).
ENV HOST=0.0.0.0
# The API (intake), the streams (notifier), /metrics and probes of processor and presigner.
EXPOSE 3000 3001 9090
# No root, no home, no passwd entry needed.
USER 10001:10001
CMD ["intake"]
