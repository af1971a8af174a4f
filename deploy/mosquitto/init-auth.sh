#!/bin/sh
# One-shot init for the broker (service mosquitto-init in docker-compose.yml).
#
# Creates the dynamic-security plugin's file with one account, the admin user the
# control service drives the broker as (CIZO_BROKER_ADMIN_PASSWORD), owned by the
# mosquitto user with mode 0600. Idempotent: an existing file is kept as it is, since
# it holds every account the control service has created since. Everything else (the
# bridge's and control's accounts, each kit's account and role) is created by the
# control service, which converges the broker to the ledger at start and after every
# change (docs/security.md, "The broker's doors"). To rotate the admin password, see
# docs/security.md; deleting the file only makes the control service recreate every
# account at its next reconcile.
set -eu

: "${MQTT_ADMIN_PASSWORD:?MQTT_ADMIN_PASSWORD must be set}"
ADMIN_USER="${MQTT_ADMIN_USER:-cizo-admin}"
DYNSEC_FILE="${DYNSEC_FILE:-/mosquitto/auth/dynamic-security.json}"
dir=$(dirname "$DYNSEC_FILE")

umask 077
mkdir -p "$dir"
if [ -s "$DYNSEC_FILE" ]; then
    echo "mosquitto-init: $DYNSEC_FILE exists; kept as it is"
else
    rm -f "$DYNSEC_FILE"
    mosquitto_ctrl dynsec init "$DYNSEC_FILE" "$ADMIN_USER" "$MQTT_ADMIN_PASSWORD" >/dev/null
    [ -s "$DYNSEC_FILE" ] || { echo "mosquitto-init: mosquitto_ctrl did not write $DYNSEC_FILE" >&2; exit 1; }
    echo "mosquitto-init: $DYNSEC_FILE created with the admin user $ADMIN_USER"
fi
chmod 0600 "$DYNSEC_FILE"
# the broker runs as mosquitto and rewrites the file (and a temporary beside it)
if id mosquitto >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    chown mosquitto:mosquitto "$dir" "$DYNSEC_FILE"
fi
chmod 0700 "$dir"
