# Build and run propersim. The image holds the binary, our templates and static files; the map
# assets and persona seeds are fetched on first run into /data (mount a volume there).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/propersim /usr/local/bin/propersim
WORKDIR /app
COPY templates ./templates
COPY static ./static
COPY propersim.toml ./propersim.toml
ENV PROPERSIM_STORAGE=/data/storage PROPERSIM_ASSETS=/data/environment PROPERSIM_TEMP_STORAGE=/data/temp_storage
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["propersim"]
CMD ["serve", "--host", "0.0.0.0", "--fork", "base_the_ville_persona_1", "--sim", "docker_run", "--provider", "scripted"]
