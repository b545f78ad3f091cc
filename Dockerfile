# syntax=docker/dockerfile:1
#
# The flotilla image: one binary (`flotilla worker|gateway|train|models|predict|...`), the
# example models in /models and the example settings in /config. Used by docker-compose.yml.
#
#   docker build -t flotilla:latest .
#   docker run --rm flotilla:latest --help

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cached target directory in the same step, since cache mounts are not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flotilla \
 && install -m 0755 target/release/flotilla /usr/local/bin/flotilla

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA certificates for TLS to NATS; nothing else (no shell tools beyond the base image's).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid so volume permissions and Kubernetes runAsUser can rely on it.
RUN groupadd --system --gid 10001 flotilla \
 && useradd --system --uid 10001 --gid flotilla --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin flotilla
COPY --from=build /usr/local/bin/flotilla /usr/local/bin/flotilla
COPY models/ /models/
COPY config/ /config/
USER 10001:10001
WORKDIR /tmp
# 9464: worker /metrics, /healthz, /readyz (metrics_addr). 8080/9465: gateway HTTP/metrics.
EXPOSE 9464 8080 9465
ENTRYPOINT ["flotilla"]
CMD ["--help"]
