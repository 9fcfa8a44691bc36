# The images of Maille, one target each. Build from the repository root:
#   docker build --target maille-controller -t maille-controller .
#   docker build --target maille-proxy -t maille-proxy .
# The build stage compiles both release binaries in one cargo invocation (the dependencies are
# compiled once; cmake is needed by Pingora's zlib-ng); each image is a distroless glibc image
# that runs one binary as a non-root user (uid 65532), nothing else inside.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Symbols stripped, no debug info: the workspace's release profile keeps them for benches.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin maille-controller --bin maille-proxy \
 && install -D -t /out target/release/maille-controller target/release/maille-proxy

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS maille-controller
COPY --from=build /out/maille-controller /usr/local/bin/maille-controller
# API the proxies pull from, and /ready, /live, /metrics.
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/maille-controller"]

# Last, so that a plain `docker build .` gives the proxy image.
FROM runtime AS maille-proxy
COPY --from=build /out/maille-proxy /usr/local/bin/maille-proxy
# Admin (/ready, /live, /metrics); the listener ranges are set by flags (see docs/proxy.md).
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/maille-proxy"]
