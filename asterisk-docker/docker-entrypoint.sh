#!/bin/sh
# Fill in manager.conf and pjsip.conf from their .in templates, as asterisk-docker/lab
# does. AMI_SECRET must be given (compose.yaml passes it); it is never baked in.
set -eu
: "${AMI_SECRET:?set AMI_SECRET (the provisioner's asterisk node uses the same)}"
for name in manager pjsip; do
    sed -e "s|@AMI_PORT@|$AMI_PORT|g" -e "s|@SIP_PORT@|$SIP_PORT|g" \
        -e "s|@AMI_USER@|$AMI_USER|g" -e "s|@AMI_SECRET@|$AMI_SECRET|g" \
        "/etc/asterisk/$name.conf.in" > "/etc/asterisk/$name.conf"
done
chown asterisk:asterisk /etc/asterisk/manager.conf /etc/asterisk/pjsip.conf
chmod 640 /etc/asterisk/manager.conf
exec "$@"
