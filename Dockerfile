# A static baton binary (musl, rustls, no OpenSSL) on an empty base image.
# Build: docker build -t baton .   (or: buildah bud -t baton .)
# tests/image/check.sh runs the same cargo command and builds this final stage with buildah.
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
# The signal reboot method needs only CAP_KILL over PID 1 (hostPID); the command method needs
# root to enter PID 1's namespaces. The manifests set the user per method.
ENTRYPOINT ["/baton", "agent"]
