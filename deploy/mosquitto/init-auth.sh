#!/bin/sh
# One-shot init for the broker (service mosquitto-init in docker-compose.yml).
#
# Builds /mosquitto/auth/passwd from secrets in the environment with mosquitto_passwd
# and copies the ACL next to it, both owned by the mosquitto user with mode 0600
# (Mosquitto 2 warns about, and later versions refuse, files others can read).
#
# Kit accounts: a hashed password file (lines "kit_id:$7$...", made with
# `mosquitto_passwd`) placed at /mosquitto/kits/passwd (named volume mosquitto-kits) is
# appended. After changing it, run this service again and send the broker SIGHUP:
#   docker compose run --rm mosquitto-init && docker compose kill -s SIGHUP mosquitto
set -eu

: "${MQTT_BRIDGE_PASSWORD:?MQTT_BRIDGE_PASSWORD must be set}"
: "${MQTT_CONTROL_PASSWORD:?MQTT_CONTROL_PASSWORD must be set}"

# These names are fixed: deploy/mosquitto/acl grants rights to them.
BRIDGE_USER=cizo-bridge
CONTROL_USER=cizo-control

AUTH_DIR=/mosquitto/auth
KITS_FILE=/mosquitto/kits/passwd
ACL_SOURCE=/init/acl

umask 077
mkdir -p "$AUTH_DIR"
tmp="$AUTH_DIR/passwd.tmp"
rm -f "$tmp"

mosquitto_passwd -c -b "$tmp" "$BRIDGE_USER" "$MQTT_BRIDGE_PASSWORD"
mosquitto_passwd -b "$tmp" "$CONTROL_USER" "$MQTT_CONTROL_PASSWORD"

kits=0
if [ -s "$KITS_FILE" ]; then
    # A kit may never take over a service account.
    grep -v -e "^${BRIDGE_USER}:" -e "^${CONTROL_USER}:" -e '^[[:space:]]*$' -e '^#' \
        "$KITS_FILE" >>"$tmp" || true
    kits=$(grep -c -v -e "^${BRIDGE_USER}:" -e "^${CONTROL_USER}:" -e '^[[:space:]]*$' \
        -e '^#' "$KITS_FILE" || true)
fi

cp "$ACL_SOURCE" "$AUTH_DIR/acl.tmp"
chown mosquitto:mosquitto "$tmp" "$AUTH_DIR/acl.tmp"
chmod 0600 "$tmp" "$AUTH_DIR/acl.tmp"
mv -f "$tmp" "$AUTH_DIR/passwd"
mv -f "$AUTH_DIR/acl.tmp" "$AUTH_DIR/acl"

echo "mosquitto-init: password file written (2 service accounts, ${kits} kit accounts), ACL installed"
