#!/bin/sh
# Entrypoint of every celery-durable container: set up the metrics directory, then run the
# command as PID 1's child (compose runs it under `init: true`).
#
# Prometheus multiprocess mode names its files by process id, and process ids repeat across
# containers: a container that writes metrics (a worker) gets its own subdirectory, named by
# its hostname, of the shared volume at $CELERY_DURABLE_METRICS_DIR; the metrics server mounts
# that volume read-only and sums every subdirectory.
set -eu

if [ -n "${CELERY_DURABLE_METRICS_DIR:-}" ] && [ -z "${PROMETHEUS_MULTIPROC_DIR:-}" ] \
    && [ -d "$CELERY_DURABLE_METRICS_DIR" ] && [ -w "$CELERY_DURABLE_METRICS_DIR" ]; then
    PROMETHEUS_MULTIPROC_DIR="$CELERY_DURABLE_METRICS_DIR/$(hostname)"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    export PROMETHEUS_MULTIPROC_DIR
fi

exec "$@"
