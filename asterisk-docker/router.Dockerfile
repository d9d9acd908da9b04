# The SIP router for the compose stack: Debian's Kamailio with its PostgreSQL module and
# the very config the lab's router runs (router/kamailio.cfg.in), filled in at start by
# router-entrypoint.sh from the environment and the stack's router login.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      kamailio kamailio-postgres-modules \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/kamailio /usr/share/provisioner-router \
 && chown kamailio:kamailio /run/kamailio

COPY router/kamailio.cfg.in /usr/share/provisioner-router/kamailio.cfg.in
COPY router-entrypoint.sh /usr/local/bin/router-entrypoint.sh

LABEL org.provisioner.image=router
# Its SIP port faces the carrier (CARRIER_IP may send calls); the JSON-RPC port is the
# provisioner's. SHM_MB: Kamailio's shared memory, where the number table lives.
ENV SIP_IP=127.0.0.3 SIP_PORT=5060 RPC_IP=127.0.0.3 RPC_PORT=5071 CARRIER_IP=127.0.0.2 \
    SHM_MB=64
ENTRYPOINT ["/usr/local/bin/router-entrypoint.sh"]
