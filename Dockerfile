# Multi-stage build of Strand's binaries: `docker build -t strand:latest .` (or `docker compose build`).
# Plain Dockerfile syntax, so it builds with BuildKit and with the classic builder alike.

# --- build: every binary target of the workspace, in release mode -------------------------------
# Dependencies are built in a layer of their own (cargo-chef): a change to Strand's sources
# rebuilds only Strand's crates. The image has everything librdkafka's own ./configure build
# needs (gcc, make, pkg-config, libssl-dev, zlib1g-dev): no cmake, no libcurl.
FROM rust:1-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

# The recipe: every manifest and the lock file, nothing that changes with the sources.
FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins --example order_services \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -name 'strand*' -exec cp {} /out/ \; \
    && cp target/release/examples/order_services /out/strand-example-order-services \
    && test -x /out/strand-broker && test -x /out/strand-saga && test -x /out/strand-bridge \
    && ls -l /out

# --- runtime: the binaries on a slim Debian, run as the unprivileged user `strand` ---------------
FROM debian:bookworm-slim
# curl serves the HEALTHCHECK below; ca-certificates and libssl3 are for TLS to Kafka clusters
# (librdkafka in the bridge and the orchestrator links the system OpenSSL).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/strand --shell /usr/sbin/nologin strand \
    && install -d -o strand -g strand -m 0750 /var/lib/strand
# strand-saga (orchestrator with an embedded broker), strand-broker, strand-bridge, the `strand`
# CLI, strand-bench, and the example participants of the order saga.
COPY --from=build /out/ /usr/local/bin/
USER strand
WORKDIR /var/lib/strand
ENV STRAND_DATA_DIR=/var/lib/strand \
    STRAND_LISTEN=0.0.0.0:7171 \
    STRAND_KAFKA_LISTEN=0.0.0.0:9092 \
    STRAND_HTTP_LISTEN=0.0.0.0:7180 \
    STRAND_SAGA_API_LISTEN=0.0.0.0:7190 \
    RUST_LOG=info
VOLUME ["/var/lib/strand"]
# 7171 native protocol, 9092 Kafka protocol, 7180 HTTP (/health, /metrics), 7190 saga API
EXPOSE 7171 9092 7180 7190
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:7180/health || exit 1
# Everything in one process; `--entrypoint strand-broker` runs the broker alone.
#
# The defaults above bind every interface with nothing secured: fine behind a private network,
# not beyond it (strand-saga warns at start, naming each open listener). To secure it, mount a
# certificate and key (and a client CA) and set, for example:
#   STRAND_NATIVE_LISTENERS=SASL_SSL://0.0.0.0:7171  STRAND_KAFKA_LISTENERS=SASL_SSL://0.0.0.0:9092
#   STRAND_HTTP_LISTENERS=SSL://0.0.0.0:7180  STRAND_TLS_CERT_FILE=...  STRAND_TLS_KEY_FILE=...
#   STRAND_AUTHORIZER_ENABLED=true  STRAND_SUPER_USERS=User:admin,User:saga
#   STRAND_SAGA_BROKER_TLS_CA=...  STRAND_SAGA_BROKER_USER=saga  STRAND_SAGA_BROKER_PASSWORD_FILE=...
#   STRAND_SAGA_API_TLS_CERT_FILE=...  STRAND_SAGA_JWT_ISSUER=...  STRAND_SAGA_JWT_KEY_FILES=...
# and create the first users with `strand-saga user add NAME --password-file FILE` before the
# start. compose.yaml's `secure` profile does all of it; README "Security" explains each part.
ENTRYPOINT ["strand-saga"]
