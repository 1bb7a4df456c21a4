# syntax=docker/dockerfile:1
# The search service in a container: `docker compose up` (see docker-compose.yml and docs/operations.md).

# Build stage: the release binary, with the toolchain the workspace asks for (rust-version 1.89+).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cloze \
    && install -m 0755 target/release/cloze /usr/local/bin/cloze

# Run stage: the binary and its settings on a slim Debian of the same release (same glibc),
# curl for the health check, and an unprivileged user that owns only the data folder.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home cloze \
    && mkdir -p /data/index /models \
    && chown cloze:cloze /data/index
COPY --from=build /usr/local/bin/cloze /usr/local/bin/cloze
COPY configs/server.toml /etc/cloze/server.toml
USER 10001:10001
WORKDIR /data
# Collections live here: mount a volume on it. Models for semantic search go under /models.
ENV CLOZE_DATA_DIR=/data/index
VOLUME ["/data/index"]
EXPOSE 7700
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "http://127.0.0.1:7700/health"]
# Listening beyond loopback needs CLOZE_ADMIN_KEY: without a key the server stays on loopback,
# where nothing outside the container reaches it.
ENTRYPOINT ["cloze"]
CMD ["serve", "--config", "/etc/cloze/server.toml", "--bind", "0.0.0.0:7700"]
