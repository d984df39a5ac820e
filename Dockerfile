# The node image, built from source: for machines that reach an image registry
# (docker build -t polity:latest .). Machines that reach none use
# scripts/docker-image.sh, which builds deploy/docker/Dockerfile.local from
# host-built binaries on a debootstrapped base; both produce the same runtime
# layout (everything below "runtime layout" is identical; deploy/tests checks it).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p polity-node -p polity-testnet --bins \
 && install -m 755 target/release/polity target/release/polity-testnet /usr/local/bin/

FROM ${RUNTIME_IMAGE}
# What polity-base gets from debootstrap --include on the local path.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini busybox \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/polity /usr/local/bin/polity-testnet /usr/local/bin/

# --- runtime layout (keep identical in Dockerfile and deploy/docker/Dockerfile.local) ---
# An unprivileged user owns the data dir; nothing else in the image is writable by it.
RUN groupadd --system --gid 10001 polity \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/polity \
      --no-create-home --shell /usr/sbin/nologin polity \
 && mkdir -p /var/lib/polity /etc/polity \
 && chown 10001:10001 /var/lib/polity \
 && chmod 700 /var/lib/polity
COPY deploy/docker/node.toml /etc/polity/node.toml
COPY deploy/docker/entrypoint.sh /usr/local/bin/polity-entrypoint
# The identity key, the sled database, federation.pb and endpoints.json.
VOLUME ["/var/lib/polity"]
WORKDIR /var/lib/polity
# 7001 gRPC (clients, operators), 7002 HTTP (/health, /ready, /metrics),
# 7100 libp2p (TCP and QUIC).
EXPOSE 7001/tcp 7002/tcp 7100/tcp 7100/udp
USER 10001:10001
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
  CMD ["busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:7002/health"]
# tini is PID 1: it forwards SIGTERM to the node, which drains and exits (graceful
# shutdown in node/src/runtime/start.rs), and reaps exec: executors' children.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/polity-entrypoint"]
CMD ["polity", "node", "--config", "/etc/polity/node.toml"]
