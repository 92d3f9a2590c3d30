# The IntelliHealth server, built exactly as the README's first command builds it
# (`cargo build --release`, the committed Cargo.lock), in a small runtime image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin intellihealth

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/intellihealth --create-home intellihealth
COPY --from=build /src/target/release/intellihealth /usr/local/bin/intellihealth
USER intellihealth
ENV INTELLIHEALTH_LISTEN=0.0.0.0:8080 \
    INTELLIHEALTH_DATA_DIR=/var/lib/intellihealth
EXPOSE 8080
VOLUME /var/lib/intellihealth
CMD ["intellihealth", "serve"]
