#!/bin/bash
# One-shot init (service influxdb-init in docker-compose.yml): give each retention tier
# its own bucket and map it to an InfluxDB 1.x database name, so the v1 wire API the
# bridge and the rollup job use (POST /write?db=..., GET/POST /query?db=...) reaches it:
#
#   raw readings      bucket ${INFLUX_BUCKET}          -> db ${INFLUX_V1_DB}         (30 days)
#   hourly aggregates bucket ${INFLUX_BUCKET}_hourly   -> db ${INFLUX_V1_DB}_hourly  (years)
#   daily aggregates  bucket ${INFLUX_BUCKET}_daily    -> db ${INFLUX_V1_DB}_daily   (years)
#
# InfluxDB 2.x has no continuous queries: `cizo control` runs the rollup job itself
# (telemetry/rollups.py), reading with InfluxQL and writing back with /write, which is
# why every tier must be reachable through a DBRP mapping. Idempotent: buckets and
# mappings made by an earlier run are kept.
#
# The influx CLI reads INFLUX_HOST, INFLUX_TOKEN and INFLUX_ORG from the environment.
set -euo pipefail

: "${INFLUX_HOST:?INFLUX_HOST must be set}"
: "${INFLUX_TOKEN:?INFLUX_TOKEN must be set}"
: "${INFLUX_ORG:?INFLUX_ORG must be set}"
: "${INFLUX_BUCKET:?INFLUX_BUCKET must be set}"
: "${INFLUX_V1_DB:?INFLUX_V1_DB must be set}"
RP="${INFLUX_V1_RP:-autogen}"
RAW_RETENTION="${INFLUX_RAW_RETENTION:-30d}"
AGG_RETENTION="${INFLUX_AGG_RETENTION:-0}" # 0: kept for ever (years of hourly/daily rows)

bucket_id() {
    influx bucket list --name "$1" --hide-headers 2>/dev/null | awk 'NR == 1 {print $1}'
}

ensure_bucket() { # name retention
    local id
    id="$(bucket_id "$1")"
    if [[ -z "$id" ]]; then
        influx bucket create --name "$1" --retention "$2" >/dev/null
        id="$(bucket_id "$1")"
        echo "influxdb-init: created bucket $1 (retention $2)" >&2
    else
        influx bucket update --id "$id" --retention "$2" >/dev/null
    fi
    [[ -n "$id" ]] || { echo "influxdb-init: bucket $1 could not be created" >&2; exit 1; }
    echo "$id"
}

map_db() { # db bucket-id bucket-name
    local out
    # InfluxDB refuses a second mapping of the same db/rp ("DBRP already exists", HTTP 409):
    # on a re-run, accept it if it names our bucket.
    if out="$(influx v1 dbrp create --db "$1" --rp "$RP" --bucket-id "$2" --default 2>&1)"; then
        echo "influxdb-init: created DBRP $1/$RP -> bucket $3 ($2)"
        return 0
    fi
    if grep -qi "already exist" <<<"$out" \
            && influx v1 dbrp list --db "$1" --rp "$RP" --hide-headers | grep -q -- "$2"; then
        echo "influxdb-init: DBRP $1/$RP -> bucket $3 ($2) already exists"
        return 0
    fi
    echo "influxdb-init: could not map $1/$RP to bucket $3 ($2):" >&2
    echo "$out" >&2
    exit 1
}

raw_id="$(ensure_bucket "$INFLUX_BUCKET" "$RAW_RETENTION")"
map_db "$INFLUX_V1_DB" "$raw_id" "$INFLUX_BUCKET"
for tier in hourly daily; do
    id="$(ensure_bucket "${INFLUX_BUCKET}_${tier}" "$AGG_RETENTION")"
    map_db "${INFLUX_V1_DB}_${tier}" "$id" "${INFLUX_BUCKET}_${tier}"
done
