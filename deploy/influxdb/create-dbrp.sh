#!/bin/bash
# One-shot init (service influxdb-init in docker-compose.yml), run on EVERY `docker compose
# up`: it must succeed on the hundredth start as on the first. Each step lists what
# exists and creates only what is missing; it never matches error text.
#
# 1. One bucket per retention tier, mapped to an InfluxDB 1.x database name so the v1
#    wire API the bridge, the rollup job and Grafana use (/write, /query) reaches it:
#
#      raw readings      bucket ${INFLUX_BUCKET}         -> db ${INFLUX_V1_DB}
#      hourly aggregates bucket ${INFLUX_BUCKET}_hourly  -> db ${INFLUX_V1_DB}_hourly
#      daily aggregates  bucket ${INFLUX_BUCKET}_daily   -> db ${INFLUX_V1_DB}_daily
#
#    Retention comes from the same values the control service reads
#    (CIZO_RAW_RETENTION_DAYS, CIZO_AGGREGATE_RETENTION_DAYS), and is re-applied on every
#    run, so changing it in .env and running `docker compose up -d` changes the buckets.
#    InfluxDB 2.x has no continuous queries: `cizo control` runs the rollup job itself
#    (telemetry/rollups.py), hence a DBRP mapping for every tier.
#
# 2. One v1 (username/password) authorization per service, scoped to the buckets it needs
#    (least privilege: the setup-operator token in INFLUX_TOKEN stays with this job and
#    the backup job):
#
#      cizo-bridge   write raw
#      cizo-rollup   read raw, read + write hourly/daily (the rollup job reads its
#                    watermarks and the hours it sums into days from the tiers)
#      cizo-control  read raw, hourly, daily (dashboards, analytics)
#      cizo-grafana  read raw, hourly, daily
#
#    The password is (re)set from the environment on every run: rotating one is editing
#    .env and `docker compose up -d` (docs/deploy.md). Bucket permissions are fixed when
#    an authorization is created; to change them, delete it (influx v1 auth delete) and
#    run this job again.
#
# The influx CLI reads INFLUX_HOST, INFLUX_TOKEN and INFLUX_ORG from the environment.
set -euo pipefail

: "${INFLUX_HOST:?INFLUX_HOST must be set}"
: "${INFLUX_TOKEN:?INFLUX_TOKEN must be set}"
: "${INFLUX_ORG:?INFLUX_ORG must be set}"
: "${INFLUX_BUCKET:?INFLUX_BUCKET must be set}"
: "${INFLUX_V1_DB:?INFLUX_V1_DB must be set}"
: "${CIZO_RAW_RETENTION_DAYS:?CIZO_RAW_RETENTION_DAYS must be set}"
: "${CIZO_AGGREGATE_RETENTION_DAYS:?CIZO_AGGREGATE_RETENTION_DAYS must be set}"
: "${INFLUXDB_BRIDGE_PASSWORD:?INFLUXDB_BRIDGE_PASSWORD must be set}"
: "${INFLUXDB_ROLLUP_PASSWORD:?INFLUXDB_ROLLUP_PASSWORD must be set}"
: "${INFLUXDB_CONTROL_PASSWORD:?INFLUXDB_CONTROL_PASSWORD must be set}"
: "${INFLUXDB_GRAFANA_PASSWORD:?INFLUXDB_GRAFANA_PASSWORD must be set}"
RP="${INFLUX_V1_RP:-autogen}"

say() { echo "influxdb-init: $*" >&2; }

bucket_id() { # name -> id, or nothing. Every bucket is listed: a name filter that matches
    # nothing is an error for some CLI versions, and an error must stay one.
    local table
    table="$(influx bucket list --hide-headers)"
    awk -v name="$1" '$2 == name {print $1; exit}' <<<"$table"
}

ensure_bucket() { # name retention -> id
    local id
    id="$(bucket_id "$1")"
    if [[ -z "$id" ]]; then
        influx bucket create --name "$1" --retention "$2" >/dev/null
        id="$(bucket_id "$1")"
        [[ -n "$id" ]] || { say "bucket $1 could not be created"; exit 1; }
        say "created bucket $1 (retention $2)"
    else
        influx bucket update --id "$id" --retention "$2" >/dev/null
        say "bucket $1 exists; retention set to $2"
    fi
    echo "$id"
}

map_db() { # db bucket-id bucket-name
    local found
    found="$(influx v1 dbrp list --db "$1" --rp "$RP" --json)"
    if grep -q -- "\"$2\"" <<<"$found"; then
        say "DBRP $1/$RP -> bucket $3 ($2) exists"
        return 0
    fi
    if grep -q -- "\"$1\"" <<<"$found"; then
        say "DBRP $1/$RP exists but maps another bucket than $3 ($2):"
        echo "$found" >&2
        say "delete it (influx v1 dbrp delete --id ...) and run this job again"
        exit 1
    fi
    influx v1 dbrp create --db "$1" --rp "$RP" --bucket-id "$2" --default >/dev/null
    say "created DBRP $1/$RP -> bucket $3 ($2)"
}

ensure_v1_auth() { # username password description [--read-bucket ID|--write-bucket ID]...
    local user="$1" password="$2" description="$3" found
    shift 3
    found="$(influx v1 auth list --json)"
    if grep -q -- "\"$user\"" <<<"$found"; then
        influx v1 auth set-password --username "$user" --password "$password" >/dev/null
        say "v1 authorization $user exists; password set"
    else
        influx v1 auth create --username "$user" --password "$password" \
            --description "$description" "$@" >/dev/null
        say "created v1 authorization $user"
    fi
}

raw="$(ensure_bucket "$INFLUX_BUCKET" "${CIZO_RAW_RETENTION_DAYS}d")"
map_db "$INFLUX_V1_DB" "$raw" "$INFLUX_BUCKET"
declare -A tier_id
for tier in hourly daily; do
    tier_id[$tier]="$(ensure_bucket "${INFLUX_BUCKET}_${tier}" "${CIZO_AGGREGATE_RETENTION_DAYS}d")"
    map_db "${INFLUX_V1_DB}_${tier}" "${tier_id[$tier]}" "${INFLUX_BUCKET}_${tier}"
done
hourly="${tier_id[hourly]}"
daily="${tier_id[daily]}"

ensure_v1_auth cizo-bridge "$INFLUXDB_BRIDGE_PASSWORD" "telemetry bridge: write raw" \
    --write-bucket "$raw"
ensure_v1_auth cizo-rollup "$INFLUXDB_ROLLUP_PASSWORD" \
    "rollup job: read raw, read and write the tiers" \
    --read-bucket "$raw" --read-bucket "$hourly" --read-bucket "$daily" \
    --write-bucket "$hourly" --write-bucket "$daily"
ensure_v1_auth cizo-control "$INFLUXDB_CONTROL_PASSWORD" "control: read only" \
    --read-bucket "$raw" --read-bucket "$hourly" --read-bucket "$daily"
ensure_v1_auth cizo-grafana "$INFLUXDB_GRAFANA_PASSWORD" "Grafana: read only" \
    --read-bucket "$raw" --read-bucket "$hourly" --read-bucket "$daily"
