#!/bin/sh
# First start: a UTF-8 cluster (the service refuses any other encoding) whose superuser
# is POSTGRES_USER with POSTGRES_PASSWORD (scram), and the database POSTGRES_DB. Then
# PostgreSQL on 127.0.0.1:PG_PORT only (the stack shares the host's loopback).
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${POSTGRES_DB:?}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 -c port="$PG_PORT" \
    -c unix_socket_directories=/run/postgresql
