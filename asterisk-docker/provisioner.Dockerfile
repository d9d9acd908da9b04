# The provisioner service, built from the repository root (see compose.yaml) on Debian
# alone: Debian's Python 3.11 and the wheels `make compose-up` builds on the host into
# build/docker-wheels (the service and every dependency, pinned by constraints.txt; not
# the embedded PostgreSQL, which a stack with its own never uses), so the build needs no
# package index. Where a registry is reachable, python:3.11-slim-bookworm works as the
# FROM too.
#
# Two stages: the wheels are copied and installed in the first, and only the venv comes
# over to the second, so no layer of the image keeps the wheels.
FROM debian:bookworm-slim AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
LABEL org.provisioner.image=provisioner

FROM base AS install
COPY build/docker-wheels/ /tmp/wheels/
RUN python3 -m venv /opt/provisioner \
 && /opt/provisioner/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
      provisioner

FROM base
COPY --from=install /opt/provisioner /opt/provisioner
# Its own user, in the group of Asterisk's image (gid 2000): what it writes into a node's
# output volume (setgid, of that group) Asterisk can read, and nobody else.
RUN groupadd --system --gid 2000 asterisk \
 && useradd --system --uid 2001 --gid asterisk --home-dir /var/lib/provisioner \
      --shell /usr/sbin/nologin provisioner \
 && mkdir -p /var/lib/provisioner \
 && chown provisioner:asterisk /var/lib/provisioner

WORKDIR /app
COPY config/ config/
COPY asterisk-docker/stack-setup /usr/local/bin/stack-setup
COPY asterisk-docker/provisioner-entrypoint.sh /usr/local/bin/provisioner-entrypoint.sh
ENV PATH=/opt/provisioner/bin:$PATH
USER provisioner
ENTRYPOINT ["/usr/local/bin/provisioner-entrypoint.sh"]
CMD ["provisioner", "serve"]
