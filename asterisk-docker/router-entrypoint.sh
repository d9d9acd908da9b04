#!/bin/sh
# The router's kamailio.cfg from the lab's template: addresses and ports from the
# environment, the database URL of its read-only login (`provisioner router-reader`)
# from the file ROUTER_DB_FILE names (the stack's setup writes it; the config that
# holds it is readable by root only). Kamailio then runs in the foreground as its
# own user; when it dies, its children die with the container.
set -eu
: "${ROUTER_DB_FILE:?set ROUTER_DB_FILE (a file holding the router login's URL)}"
db_url=$(cat "$ROUTER_DB_FILE")
config=/run/kamailio/kamailio.cfg
umask 077
sed -e "s|@SIP_IP@|$SIP_IP|g" -e "s|@SIP_PORT@|$SIP_PORT|g" \
    -e "s|@PHONE_PORT@|${PHONE_PORT:-5064}|g" \
    -e "s|@RPC_IP@|$RPC_IP|g" -e "s|@RPC_PORT@|$RPC_PORT|g" \
    -e "s|@CARRIER_IP@|$CARRIER_IP|g" -e "s|@DB_URL@|$db_url|g" \
    -e "s|@MODULES@|/usr/lib/x86_64-linux-gnu/kamailio/modules/|g" \
    -e "s|@PROBE_INTERVAL@|${PROBE_INTERVAL:-1}|g" \
    -e "s|@PROBE_THRESHOLD@|${PROBE_THRESHOLD:-2}|g" \
    /usr/share/provisioner-router/kamailio.cfg.in > "$config"
kamailio -c -f "$config" >/dev/null 2>&1 || kamailio -c -f "$config"
exec kamailio -f "$config" -DD -E -m "$SHM_MB" -M 16 -Y /run/kamailio \
    -u kamailio -g kamailio
