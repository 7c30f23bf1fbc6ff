# The vidi-operator image: one binary for the controller (`run`), the GPU gate init container
# (`gpu gate`) and the CLI. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/vidi-dev/vidi-operator:0.1.0 .
# (BuildKit, the default builder: RUN --mount caches cargo's registry and target dir.)
#
# The runtime is distroless/cc rather than distroless/static: `gpu gate` loads NVIDIA's
# libnvidia-ml.so with dlopen (nvml-wrapper), which a fully static musl binary cannot do. The
# NVIDIA container runtime mounts that library into the gate container; nothing else is needed.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the build reads; the workspace member and the bench target must exist for cargo to
# load the manifest.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests/standin ./tests/standin
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin vidi-operator \
 && install -D -m 0755 target/release/vidi-operator /out/vidi-operator \
 && /out/vidi-operator --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="vidi-operator" \
      org.opencontainers.image.description="Lets a heavy GPU job (Vidi 1.5 9B) borrow a shared GPU safely" \
      org.opencontainers.image.source="https://github.com/vidi-dev/vidi-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/vidi-operator /usr/local/bin/vidi-operator
# distroless "nonroot": uid/gid 65532, no shell, no package manager.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vidi-operator"]
CMD ["run"]
