# syntax=docker/dockerfile:1
#
# mesgate image: the gateway (`mesgate`, the entrypoint) and the MES simulator
# (`mes-sim`, for demos and load tests) in one small Debian image.
#
#   docker build -t mesgate:local .
#   docker run --rm -p 8080:8080 \
#       -v "$PWD/config/docker.toml:/etc/mesgate/mesgate.toml:ro" \
#       -e MESGATE_UPSTREAM=http://mes.example:8080 -e MESGATE_REDIS_URL=off mesgate:local
#
# Configuration
#   The gateway reads /etc/mesgate/mesgate.toml (see CMD). The image ships a copy of
#   config/ there (mesgate.toml, demo.toml, docker.toml), so it starts as is, but that
#   mesgate.toml points at an MES on 127.0.0.1, the container itself: mount your own
#   file over /etc/mesgate/mesgate.toml (read-only), or set the variables below.
#   These environment variables win over the file, which is how one config file serves
#   several environments:
#     MESGATE_LISTEN        client listener, e.g. 0.0.0.0:8080
#     MESGATE_UPSTREAM      base URL of the MES, e.g. http://mes-sim:9090
#     MESGATE_REDIS_URL     shared tier, e.g. redis://redis:6379 (`off`: L1 only)
#     MESGATE_ADMIN_LISTEN  admin listener (health, readiness, metrics, purge)
#     MESGATE_ADMIN_TOKEN   bearer token for purge and reload; those are off without one
#   RUST_LOG sets the log filter (default info); logs go to stderr.
#   `mesgate check-config /etc/mesgate/mesgate.toml` validates a file (exit 2 when bad).
#   SIGHUP (`docker kill -s HUP <container>`) reloads the file; a bad one is refused and
#   the old rules keep serving.
#
# Admin listener and the health check
#   HEALTHCHECK below calls http://127.0.0.1:9901/healthz from inside the container, so
#   a loopback admin listener (`[admin] listen = "127.0.0.1:9901"`, what the shipped
#   mesgate.toml says) is enough for Docker's own health status. Anything outside the
#   container, such as Prometheus scraping /metrics or an operator purging, needs it on
#   all interfaces: config/docker.toml (used by docker-compose.yml) says "0.0.0.0:9901".
#   The image does not set MESGATE_ADMIN_LISTEN itself, because the environment would
#   then silently win over whatever the mounted file says. /healthz, /readyz and
#   /metrics are unauthenticated: publish 9901 on a private network or loopback only.
#   With the admin listener turned off (`listen = ""`) the health check fails; override
#   it (`--health-cmd` / compose `healthcheck:`) or disable it then.
#
# Other commands, same image (arguments replace CMD, so a plain `run` needs
# `--config /etc/mesgate/mesgate.toml` again: the binary's default path is relative):
#   docker run --rm mesgate:local check-config /etc/mesgate/mesgate.toml
#   docker run --rm -p 9090:9090 --entrypoint mes-sim mesgate:local --listen 0.0.0.0:9090
#   docker run --rm -p 8080:8080 -e MESGATE_LISTEN=0.0.0.0:8080 mesgate:local demo

# ---------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Only what the two binaries need: the workspace manifest and lock (built with --locked),
# the gateway's sources, the simulator crate (mes-sim/: its manifest and sources; mesgate
# depends on it and it builds the `mes-sim` binary), and config/ (src/demo.rs embeds
# config/demo.toml with include_str!). examples/ and tests/ are left out: Cargo discovers
# them only when they exist, and building the two binaries by name never needs them.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY mes-sim ./mes-sim
COPY config ./config

# The cache mounts keep the registry and target/ between builds (BuildKit), so target/
# is not in any layer: the binaries are copied out of it in the same step. Both packages
# are default members of the workspace, so `--bin` finds each in its own package.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin mesgate --bin mes-sim \
    && mkdir -p /out \
    && cp target/release/mesgate target/release/mes-sim /out/

# ---------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for outbound TLS of future upstreams, curl for HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid, so volume permissions and Kubernetes'
# runAsNonRoot (which needs a numeric USER) work.
RUN groupadd --system --gid 10001 mesgate \
    && useradd --system --uid 10001 --gid mesgate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin mesgate

COPY --from=builder /out/mesgate /out/mes-sim /usr/local/bin/
COPY config/ /etc/mesgate/

USER 10001:10001

# 8080: clients (listen). 9901: admin (healthz, readyz, metrics, purge).
EXPOSE 8080 9901

HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1

# mesgate runs as PID 1 and handles SIGTERM and SIGINT itself (graceful shutdown); it
# starts no child processes, so no init is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mesgate"]
CMD ["--config", "/etc/mesgate/mesgate.toml"]
