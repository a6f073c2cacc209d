#!/usr/bin/env bash
# Create the IATI collections in SolrCloud, idempotently.
#
# For each NAME in activity, transaction and budget:
#   configset  NAME_configset_VERSION   uploaded from solr/configsets/NAME/conf
#   collection NAME_VERSION             1 shard, 1 replica
#   aliases    NAME_solrize -> NAME_VERSION   (the refresher writes here)
#              NAME         -> NAME_VERSION   (readers query here)
# Anything that already exists is left alone, so the script can run on every start.
#
# A full reindex without downtime: run with SOLR_COLLECTION_VERSION=2 REPOINT_WRITE_ALIAS=1,
# reindex every document (set solrize_reindex), then run again with REPOINT_READ_ALIAS=1.
# The old collections can be deleted afterwards.
#
# Configsets are uploaded with `solr zk upconfig` when the `solr` command and ZK_HOST are
# available (inside the Solr container: ZK_HOST=localhost:9983): such configsets are
# trusted.  Otherwise they go through the Configsets API as a zip (needs zip or python3).
# The activity configset's /iati handler needs Solr's scripting module (SOLR_MODULES=scripting).
#
# Environment:
#   SOLR_URL                 base URL (default http://localhost:8983/solr)
#   SOLR_AUTH                user:password for basic auth (optional; never printed)
#   SOLR_COLLECTION_VERSION  the VERSION above (default 1)
#   CONFIGSETS_DIR           default: the configsets folder next to this script
#   ZK_HOST                  ZooKeeper address for `solr zk upconfig` (optional)
#   UPDATE_CONFIGSETS=1      upload the configsets again and reload the collections
#   REPOINT_WRITE_ALIAS=1    point NAME_solrize at NAME_VERSION even if it exists
#   REPOINT_READ_ALIAS=1     point NAME at NAME_VERSION even if it exists
#   SOLR_WAIT_S              how long to wait for Solr to answer (default 120)
set -euo pipefail

SOLR_URL="${SOLR_URL:-http://localhost:8983/solr}"
SOLR_URL="${SOLR_URL%/}"
VERSION="${SOLR_COLLECTION_VERSION:-1}"
CONFIGSETS_DIR="${CONFIGSETS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/configsets}"
NAMES="${COLLECTIONS:-activity transaction budget}"
WAIT_S="${SOLR_WAIT_S:-120}"

log() { printf 'create-collections: %s\n' "$*" >&2; }

solr_get() {  # path-and-query → JSON on stdout
    local auth=()
    [[ -n "${SOLR_AUTH:-}" ]] && auth=(--user "$SOLR_AUTH")
    curl --silent --show-error --fail-with-body "${auth[@]}" "$SOLR_URL/$1"
}

solr_post_zip() {  # path-and-query, zip file
    local auth=()
    [[ -n "${SOLR_AUTH:-}" ]] && auth=(--user "$SOLR_AUTH")
    curl --silent --show-error --fail-with-body "${auth[@]}" -X POST \
        -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$SOLR_URL/$1"
}

wait_for_solr() {
    local deadline=$((SECONDS + WAIT_S))
    until solr_get "admin/collections?action=LIST&wt=json" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "Solr at $SOLR_URL did not answer the Collections API within ${WAIT_S}s (is it running in SolrCloud mode?)"
            exit 1
        fi
        sleep 2
    done
}

# "name" appears as a JSON string in a LIST answer (collections or configsets).
listed() { grep -q "\"$1\"" <<<"$2"; }

# "alias": appears as a key in a LISTALIASES answer.
aliased() { grep -q "\"$1\" *:" <<<"$2"; }

zip_conf() {  # conf dir, zip path
    if command -v zip >/dev/null 2>&1; then
        (cd "$1" && zip -q -r "$2" .)
    elif command -v python3 >/dev/null 2>&1; then
        (cd "$1" && python3 -m zipfile -c "$2" ./*)
    else
        log "need zip or python3 to upload a configset through the API"
        exit 1
    fi
}

upload_configset() {  # configset name, conf dir
    if command -v solr >/dev/null 2>&1 && [[ -n "${ZK_HOST:-}" ]]; then
        solr zk upconfig -n "$1" -d "$2" -z "$ZK_HOST" >/dev/null
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    zip_conf "$2" "$tmp/$1.zip"
    local overwrite=""
    [[ "${UPDATE_CONFIGSETS:-0}" == 1 ]] && overwrite="&overwrite=true&cleanup=true"
    solr_post_zip "admin/configs?action=UPLOAD&name=$1$overwrite&wt=json" "$tmp/$1.zip" >/dev/null
    rm -rf "$tmp"
}

main() {
    wait_for_solr
    local configsets collections aliases
    configsets="$(solr_get "admin/configs?action=LIST&wt=json")"
    collections="$(solr_get "admin/collections?action=LIST&wt=json")"
    aliases="$(solr_get "admin/collections?action=LISTALIASES&wt=json")"

    for name in $NAMES; do
        local configset="${name}_configset_${VERSION}" collection="${name}_${VERSION}"
        local conf="$CONFIGSETS_DIR/$name/conf"
        [[ -f "$conf/managed-schema.xml" ]] || { log "no configset at $conf"; exit 1; }

        if ! listed "$configset" "$configsets"; then
            log "uploading configset $configset"
            upload_configset "$configset" "$conf"
        elif [[ "${UPDATE_CONFIGSETS:-0}" == 1 ]]; then
            log "updating configset $configset"
            upload_configset "$configset" "$conf"
            if listed "$collection" "$collections"; then
                solr_get "admin/collections?action=RELOAD&name=$collection&wt=json" >/dev/null
            fi
        fi

        if ! listed "$collection" "$collections"; then
            log "creating collection $collection"
            solr_get "admin/collections?action=CREATE&name=$collection&collection.configName=$configset&numShards=1&replicationFactor=1&wt=json" >/dev/null
        fi

        for alias in "${name}_solrize" "$name"; do
            local repoint="${REPOINT_READ_ALIAS:-0}"
            [[ "$alias" == "${name}_solrize" ]] && repoint="${REPOINT_WRITE_ALIAS:-0}"
            if ! aliased "$alias" "$aliases" || [[ "$repoint" == 1 ]]; then
                log "alias $alias -> $collection"
                solr_get "admin/collections?action=CREATEALIAS&name=$alias&collections=$collection&wt=json" >/dev/null
            fi
        done
    done
    log "done"
}

main "$@"
