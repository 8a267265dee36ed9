#!/bin/sh
# Entrypoint of the gpumesh image. `docker-entrypoint.sh run [FLAGS]` starts a node; anything else is passed
# to mesh-node (`docker-compose run --rm client peers --json`, `... id`, ...).
#
# MESH_ROLE chooses how `run` joins the mesh:
#   bootstrap  create this node's identity once (kept in its data volume), publish its peer id in
#              $MESH_SHARED_DIR/bootstrap.peer-id for the others, then run.
#   worker     read the bootstrap peer id from $MESH_SHARED_DIR (waiting up to MESH_BOOTSTRAP_WAIT seconds
#              for it to appear), resolve $MESH_BOOTSTRAP_HOST and run with
#              --bootstrap /ip4/ADDRESS/tcp/$MESH_BOOTSTRAP_PORT/p2p/ID.
#   standalone (default) run with the flags and GPUMESH_* variables given, nothing added.
# MESH_BOOTSTRAP (one or more full multiaddrs, space-separated) skips the shared file: use it on hosts that do
# not share a volume with the bootstrap node (a rack of machines, see docs/running-a-cluster.md).
set -eu

DATA_DIR=${GPUMESH_DATA_DIR:-/var/lib/gpumesh}
SHARED=${MESH_SHARED_DIR:-/run/gpumesh-shared}
ROLE=${MESH_ROLE:-standalone}
MESH_NODE=${MESH_NODE_BIN:-mesh-node}

log() { printf 'docker-entrypoint: %s\n' "$*" >&2; }

# First IPv4 address of a name (or the address itself), retried for a while: a container's DNS entry may lag.
resolve_ipv4() {
    case "$1" in
    *[!0-9.]*) ;;
    *) echo "$1"; return ;;
    esac
    tries=0
    while [ "$tries" -lt 30 ]; do
        ip=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }')
        if [ -n "$ip" ]; then
            echo "$ip"
            return
        fi
        sleep 1
        tries=$((tries + 1))
    done
}

if [ "$#" -eq 0 ]; then
    set -- run
fi
if [ "$1" != "run" ]; then
    exec $MESH_NODE "$@"
fi
shift

case "$ROLE" in
bootstrap)
    peer_id=$($MESH_NODE id --data-dir "$DATA_DIR")   # creates the key on first start, reuses it afterwards
    mkdir -p "$SHARED"
    # Written atomically: a worker never reads half an id.
    printf '%s\n' "$peer_id" > "$SHARED/.bootstrap.peer-id.$$"
    mv -f "$SHARED/.bootstrap.peer-id.$$" "$SHARED/bootstrap.peer-id"
    log "bootstrap peer id $peer_id published in $SHARED/bootstrap.peer-id"
    exec $MESH_NODE run --data-dir "$DATA_DIR" "$@"
    ;;
worker)
    if [ -n "${MESH_BOOTSTRAP:-}" ]; then
        addrs=$MESH_BOOTSTRAP
    else
        host=${MESH_BOOTSTRAP_HOST:-bootstrap}
        port=${MESH_BOOTSTRAP_PORT:-4001}
        wait_s=${MESH_BOOTSTRAP_WAIT:-120}
        waited=0
        while [ ! -s "$SHARED/bootstrap.peer-id" ]; do
            if [ "$waited" -ge "$wait_s" ]; then
                log "no bootstrap peer id in $SHARED/bootstrap.peer-id after ${wait_s}s (is the bootstrap service up and sharing that volume?)"
                exit 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
        peer_id=$(head -n 1 "$SHARED/bootstrap.peer-id")
        # Resolved here through the C library (/etc/hosts, Docker's DNS), not left to libp2p as /dns4/...:
        # py-libp2p's resolver asks DNS servers directly and ignores /etc/hosts.
        ip=$(resolve_ipv4 "$host")
        if [ -z "$ip" ]; then
            log "cannot resolve bootstrap host '$host'"
            exit 1
        fi
        addrs="/ip4/$ip/tcp/$port/p2p/$peer_id"
    fi
    for a in $addrs; do
        set -- --bootstrap "$a" "$@"
    done
    log "joining through $addrs"
    exec $MESH_NODE run --data-dir "$DATA_DIR" "$@"
    ;;
standalone)
    exec $MESH_NODE run --data-dir "$DATA_DIR" "$@"
    ;;
*)
    log "MESH_ROLE must be bootstrap, worker or standalone (got '$ROLE')"
    exit 2
    ;;
esac
