#!/bin/sh
# Scheduled backups (services backup-ledger and backup-influxdb in docker-compose.yml).
#
#   every.sh NAME COMMAND [ARG...]   every BACKUP_INTERVAL_S seconds, run
#                                    `COMMAND [ARG...] $BACKUP_DIR/NAME-<UTC time>.partial`,
#                                    then rename it without ".partial" (a backup cut short
#                                    never looks complete) and delete NAME-* backups older
#                                    than BACKUP_KEEP_DAYS days. A failed run is logged and
#                                    retried at the next interval; it never deletes anything.
#   every.sh --check                 healthcheck: exit 0 while the newest successful backup
#                                    is younger than two intervals.
#
# The first backup is taken at start, so a fresh `docker compose up` shows one at once.
set -eu

: "${BACKUP_DIR:?BACKUP_DIR must be set}"
: "${BACKUP_INTERVAL_S:?BACKUP_INTERVAL_S must be set}"
STAMP_FILE="$BACKUP_DIR/.last-success"

if [ "${1:-}" = "--check" ]; then
    stale_min=$(( 2 * BACKUP_INTERVAL_S / 60 + 1 ))
    [ -n "$(find "$STAMP_FILE" -mmin "-$stale_min" 2>/dev/null)" ]
    exit
fi

: "${BACKUP_KEEP_DAYS:?BACKUP_KEEP_DAYS must be set}"
[ "$#" -ge 2 ] || { echo "usage: every.sh NAME COMMAND [ARG...] | every.sh --check" >&2; exit 2; }
name="$1"
shift
mkdir -p "$BACKUP_DIR"

while :; do
    out="$BACKUP_DIR/$name-$(date -u +%Y%m%dT%H%M%SZ)"
    if "$@" "$out.partial"; then
        mv "$out.partial" "$out"
        touch "$STAMP_FILE"
        echo "backup: wrote $out"
        # only once a new backup exists: older ones beyond the retention go
        find "$BACKUP_DIR" -mindepth 1 -maxdepth 1 -name "$name-*" ! -name '*.partial' \
            -mtime "+$BACKUP_KEEP_DAYS" -exec rm -rf {} +
    else
        echo "backup: $name FAILED (exit $?); next attempt in ${BACKUP_INTERVAL_S}s" >&2
        rm -rf "$out.partial"
    fi
    [ "${BACKUP_ONCE:-}" = "1" ] && exit 0
    sleep "$BACKUP_INTERVAL_S"
done
