# A static baton binary (musl, rustls, no OpenSSL) on an empty base image.
# Build: docker build -t baton .   (or: buildah bud -t baton .)
# tests/image/check.sh runs the same cargo command; tests/real-node/images.sh builds this final
# stage (cut out of this file) with buildah for the real-node tests.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools tzdata ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/baton /baton

FROM scratch
# CA certificates for the API server's TLS; zoneinfo for reboot windows in named time zones.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/share/zoneinfo /usr/share/zoneinfo
COPY --from=build /baton /baton
# The entrypoint is the bare binary and the subcommand an argument: `docker run baton drain NODE`
# works, and the manifests pass `args: [agent]` (tests/tests/install.rs checks the pair). The
# manifests set the user and capabilities per reboot method.
ENTRYPOINT ["/baton"]
CMD ["agent"]
