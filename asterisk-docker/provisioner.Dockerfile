# The provisioner service, built from the repository root (see compose.yaml) on Debian
# alone: Debian's Python 3.11 and the wheels `make compose-up` builds on the host into
# build/docker-wheels (the service and every dependency, pinned by constraints.txt), so
# the build needs no package index. Where a registry is reachable, python:3.11-slim-bookworm
# works as the FROM too.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

COPY build/docker-wheels/ /tmp/wheels/
RUN python3 -m venv /opt/provisioner \
 && /opt/provisioner/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
      provisioner \
 && rm -rf /tmp/wheels

# Its own user; the group of Asterisk's image (gid 2000) so it can hand Asterisk the
# files it writes into the shared volume (file_group 2000 in compose.yaml).
RUN groupadd --system --gid 2000 asterisk \
 && useradd --system --uid 2001 --gid asterisk --home-dir /var/lib/provisioner \
      --shell /usr/sbin/nologin provisioner \
 && mkdir -p /var/lib/provisioner /etc/asterisk/provisioner \
 && chown provisioner:asterisk /var/lib/provisioner /etc/asterisk/provisioner

WORKDIR /app
COPY config/ config/
ENV PATH=/opt/provisioner/bin:$PATH
USER provisioner
CMD ["provisioner", "serve"]
