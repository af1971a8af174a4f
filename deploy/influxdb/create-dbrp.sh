#!/bin/bash
# One-shot init (service influxdb-init in docker-compose.yml): map the InfluxDB 1.x
# database/retention policy "${INFLUX_V1_DB}/autogen" to the bucket, so the v1 wire API
# the bridge uses (POST /write?db=..., GET/POST /query?db=...) reaches it.
#
# InfluxDB 2.7 also answers through a "virtual" mapping for a bucket whose name has no
# slash, but an explicit default mapping is what the docs promise and survives a bucket
# rename. Idempotent: a mapping made by an earlier run is kept.
#
# The influx CLI reads INFLUX_HOST, INFLUX_TOKEN and INFLUX_ORG from the environment.
set -euo pipefail

: "${INFLUX_HOST:?INFLUX_HOST must be set}"
: "${INFLUX_TOKEN:?INFLUX_TOKEN must be set}"
: "${INFLUX_ORG:?INFLUX_ORG must be set}"
: "${INFLUX_BUCKET:?INFLUX_BUCKET must be set}"
: "${INFLUX_V1_DB:?INFLUX_V1_DB must be set}"
RP="${INFLUX_V1_RP:-autogen}"

bucket_id="$(influx bucket list --name "$INFLUX_BUCKET" --hide-headers | awk 'NR == 1 {print $1}')"
if [[ -z "$bucket_id" ]]; then
    echo "influxdb-init: bucket '$INFLUX_BUCKET' not found in org '$INFLUX_ORG'" >&2
    exit 1
fi

# Create the explicit mapping. InfluxDB refuses a second mapping of the same db/rp
# ("DBRP already exists", HTTP 409): on a re-run, accept it if it names our bucket.
if out="$(influx v1 dbrp create --db "$INFLUX_V1_DB" --rp "$RP" --bucket-id "$bucket_id" \
        --default 2>&1)"; then
    echo "influxdb-init: created DBRP $INFLUX_V1_DB/$RP -> bucket $INFLUX_BUCKET ($bucket_id)"
    exit 0
fi
if grep -qi "already exist" <<<"$out" \
        && influx v1 dbrp list --db "$INFLUX_V1_DB" --rp "$RP" --hide-headers \
            | grep -q -- "$bucket_id"; then
    echo "influxdb-init: DBRP $INFLUX_V1_DB/$RP -> bucket $INFLUX_BUCKET ($bucket_id) already exists"
    exit 0
fi
echo "influxdb-init: could not map $INFLUX_V1_DB/$RP to bucket $INFLUX_BUCKET ($bucket_id):" >&2
echo "$out" >&2
exit 1
