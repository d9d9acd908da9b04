# PostgreSQL for the compose stack, from Debian alone (bookworm's PostgreSQL 15). Where a
# registry is reachable, the official postgres:15 (or newer) image takes its place with
# the same POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB variables.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /run/postgresql

LABEL org.provisioner.image=postgres
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data PG_PORT=5432
USER postgres
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
