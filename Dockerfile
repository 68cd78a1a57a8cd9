# Build and run propersim. The image holds the binary (our templates and static files are compiled
# into it, and copied beside it so they can be edited), Phaser for the pages, and the example
# configuration; the map assets and persona seeds are fetched on first run into /data (mount a
# volume there).
#
# tests/dockerfile.rs checks that the build stage copies everything the compiler reads
# (include_str! folders, the targets Cargo.toml declares) before `cargo build`.

# Phaser for the pages (package.json's pinned dev dependency), served by `serve` from
# node_modules/phaser/dist/phaser.min.js so the map draws without a CDN.
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies alone first, on stub sources (the workspace's manifests, an empty lib.rs for each
# crate): this layer is rebuilt only when a Cargo.toml or Cargo.lock changes, not on every edit
# of our code.
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/kernels/Cargo.toml crates/kernels/
COPY crates/model/Cargo.toml crates/model/
COPY crates/llm/Cargo.toml crates/llm/
COPY crates/train/Cargo.toml crates/train/
RUN mkdir -p src benches crates/core/src crates/kernels/src crates/model/src crates/llm/src crates/train/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/core/src/lib.rs crates/kernels/src/lib.rs crates/model/src/lib.rs crates/llm/src/lib.rs crates/train/src/lib.rs \
    && echo 'fn main() {}' > benches/sweep.rs \
    && cargo build --release --locked \
    && rm -rf src benches crates target/release/propersim target/release/deps/propersim* \
        target/release/deps/libpropersim* target/release/.fingerprint/propersim*
# Our sources, and what they compile in: assets/manifest.sha256, templates/ and static/
# (src/web/embedded.rs), and the bench Cargo.toml declares. build.rs embeds the git commit; with
# no .git here it embeds none, and run.json says "unknown".
COPY build.rs ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
COPY assets ./assets
COPY templates ./templates
COPY static ./static
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/propersim /usr/local/bin/propersim
WORKDIR /app
COPY templates ./templates
COPY static ./static
COPY propersim.toml ./propersim.toml
COPY --from=web /web/node_modules/phaser/dist/phaser.min.js ./node_modules/phaser/dist/phaser.min.js
# Run as an unprivileged user that owns /data.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin propersim \
    && mkdir -p /data && chown propersim:propersim /data
USER propersim
ENV PROPERSIM_STORAGE=/data/storage PROPERSIM_ASSETS=/data/environment PROPERSIM_TEMP_STORAGE=/data/temp_storage
VOLUME /data
EXPOSE 8000
# Healthy once the server answers its landing page (no curl in the slim image: bash's /dev/tcp).
# The first start fetches the assets, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET / HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["propersim"]
CMD ["serve", "--host", "0.0.0.0", "--fork", "base_the_ville_persona_1", "--sim", "docker_run", "--provider", "scripted"]
