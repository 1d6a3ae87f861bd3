#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ answer on loopback; start them when installed but down.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}

is_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {  # name host port seconds
    for _ in $(seq 1 "$4"); do
        if is_open "$2" "$3"; then return 0; fi
        sleep 1
    done
    echo "$1 did not start listening on $2:$3 within $4 s" >&2
    return 1
}

if ! is_open "$PG_HOST" "$PG_PORT"; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "PostgreSQL is down; starting it"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
        wait_for PostgreSQL "$PG_HOST" "$PG_PORT" 60
    else
        echo "PostgreSQL is not listening on $PG_HOST:$PG_PORT and is not installed here." >&2
        echo "Start a PostgreSQL 13+ server there (trust auth for user root), or set" >&2
        echo "CELERY_DURABLE_TEST_PG to an admin URL of one." >&2
        exit 1
    fi
fi

if ! is_open "$AMQP_HOST" "$AMQP_PORT"; then
    if command -v rabbitmq-server >/dev/null; then
        echo "RabbitMQ is down; starting it"
        rabbitmq-server -detached
        wait_for RabbitMQ "$AMQP_HOST" "$AMQP_PORT" 90
    else
        echo "RabbitMQ is not listening on $AMQP_HOST:$AMQP_PORT and is not installed here." >&2
        echo "Start a RabbitMQ server there (guest/guest), or set CELERY_BROKER_URL." >&2
        exit 1
    fi
fi
echo "services: PostgreSQL $PG_HOST:$PG_PORT and RabbitMQ $AMQP_HOST:$AMQP_PORT answer"
