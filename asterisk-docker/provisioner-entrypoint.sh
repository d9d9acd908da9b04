#!/bin/sh
# The stack's AMI secret into the node list: compose.yaml writes `@AMI_SECRET@` where it
# goes (the secret is the stack's, made once by stack-setup, and is in no file of the
# repository nor in any container's environment as compose sees it).
set -eu
if [ -n "${AMI_SECRET_FILE:-}" ] && [ -s "$AMI_SECRET_FILE" ]; then
    secret=$(cat "$AMI_SECRET_FILE")
    PROVISIONER_ASTERISK_NODES=$(printf '%s' "${PROVISIONER_ASTERISK_NODES:-}" \
        | sed "s|@AMI_SECRET@|$secret|g")
    export PROVISIONER_ASTERISK_NODES
fi
exec "$@"
