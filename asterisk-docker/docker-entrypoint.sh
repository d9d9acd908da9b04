#!/bin/sh
# Fill in manager.conf and pjsip.conf from their .in templates, as asterisk-docker/lab
# does. The AMI secret is AMI_SECRET, or the file AMI_SECRET_FILE names (the compose
# stack's setup makes one per stack); it is never baked in.
#
# A realtime node: PJSIP_DB_FILE names its res_pgsql.conf (its own read-only login, made
# by the stack's setup with `provisioner pjsip-reader`); the tenants' endpoints, AORs and
# auths then come from PostgreSQL (conf/realtime/, as `lab up --pjsip-db` does).
set -eu
if [ -z "${AMI_SECRET:-}" ] && [ -n "${AMI_SECRET_FILE:-}" ]; then
    AMI_SECRET=$(cat "$AMI_SECRET_FILE")
fi
: "${AMI_SECRET:?set AMI_SECRET or AMI_SECRET_FILE (the provisioner's node uses the same)}"
for name in manager pjsip; do
    sed -e "s|@AMI_PORT@|$AMI_PORT|g" -e "s|@SIP_PORT@|$SIP_PORT|g" \
        -e "s|@AMI_USER@|$AMI_USER|g" -e "s|@AMI_SECRET@|$AMI_SECRET|g" \
        "/etc/asterisk/$name.conf.in" > "/etc/asterisk/$name.conf"
done
chown asterisk:asterisk /etc/asterisk/manager.conf /etc/asterisk/pjsip.conf
chmod 640 /etc/asterisk/manager.conf

if [ -n "${PJSIP_DB_FILE:-}" ]; then
    install -o asterisk -g asterisk -m 640 "$PJSIP_DB_FILE" /etc/asterisk/res_pgsql.conf
    for name in sorcery extconfig; do
        install -o asterisk -g asterisk -m 644 "/etc/asterisk/realtime/$name.conf" \
            "/etc/asterisk/$name.conf"
    done
    # The container's file system outlives a restart: add the modules once.
    if ! grep -q '^load = res_sorcery_realtime.so' /etc/asterisk/modules.conf; then
        printf '%s\n' "" "; realtime node: PJSIP objects from PostgreSQL, cached in memory" \
            "load = res_config_pgsql.so" "load = res_sorcery_realtime.so" \
            "load = res_sorcery_memory_cache.so" >> /etc/asterisk/modules.conf
    fi
fi
exec "$@"
