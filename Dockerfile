# pgmesh in a container: `docker build -t pgmesh .` (used by docker-compose.yml).
# The build stage needs protoc for the etcd-client crate; the runtime image only the binary.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgmesh && strip target/release/pgmesh

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pgmesh /usr/local/bin/pgmesh
USER nobody
ENTRYPOINT ["pgmesh"]
