# Multi-stage build of Strand's binaries. Build: docker build -t strand:latest .
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -name 'strand*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/strand --create-home strand
COPY --from=build /out/ /usr/local/bin/
USER strand
ENV STRAND_DATA_DIR=/var/lib/strand \
    STRAND_LISTEN=0.0.0.0:7171 \
    STRAND_KAFKA_LISTEN=0.0.0.0:9092 \
    STRAND_HTTP_LISTEN=0.0.0.0:7180 \
    RUST_LOG=info
VOLUME ["/var/lib/strand"]
EXPOSE 7171 9092 7180
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsS http://127.0.0.1:7180/health || exit 1
ENTRYPOINT ["strand-broker"]
