#!/usr/bin/env bash
# Makes the compose cluster's certificates in deploy/compose/certs/ (git
# ignores it), with `strata certs` run in the strata image (no strata binary
# needed on the host), unless they are there already:
#
#   certs/ca/       ca.crt, ca.key       the cluster's CA (the key stays
#                                        here: no container mounts this)
#   certs/nodeN/    ca.crt, node-N.crt, node-N.key
#                                        node N's node-to-node mTLS files,
#                                        mounted in node N only
#   certs/server/   ca.crt, server.crt, server.key
#                                        the client listeners' certificate
#                                        (every node), for node1, node2,
#                                        node3, localhost and 127.0.0.1
#
# Clients on the host trust certs/ca/ca.crt (--tls-ca).
#
# Ownership: the files belong to whoever runs this script (so they can be
# read and removed without root), and to the group of the image's strata
# user (gid 7878, deploy/docker/Dockerfile), which reads them through the
# bind mounts: keys 0640, certificates 0644, folders 0750. The CA's folder
# is 0700: the nodes never see its key.
#
#   deploy/compose/certs.sh [--force]      # --force: new CA and certificates
#
# Environment: STRATA_CERTS_DIR (default deploy/compose/certs; compose reads
# the same variable), STRATA_IMAGE (default strata:local), STRATA_GID (7878),
# STRATA_CERT_HOSTS: extra names or addresses for the client certificate
# (comma-separated, e.g. the host's name when clients come from elsewhere).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
dir="$(realpath -m "${STRATA_CERTS_DIR:-$here/certs}")"
image="${STRATA_IMAGE:-strata:local}"
gid="${STRATA_GID:-7878}"
hosts="node1,node2,node3,localhost,127.0.0.1${STRATA_CERT_HOSTS:+,$STRATA_CERT_HOSTS}"

force=false
case "${1:-}" in
  --force) force=true ;;
  "") ;;
  *)
    echo "certs.sh: unknown argument '$1' (--force)" >&2
    exit 2
    ;;
esac

if ! $force && [ -e "$dir/.complete" ]; then
  echo "[certs] $dir has the certificates (--force makes new ones)" >&2
  exit 0
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "certs.sh: no image $image: build it first (deploy/docker/build.sh)" >&2
  exit 1
fi

# The keys are readable by gid $gid on the host too: say so when that is a
# group of the host's (its members could read the node and server keys).
if host_group="$(getent group "$gid" 2>/dev/null)"; then
  echo "[certs] warning: gid $gid is the host's group '${host_group%%:*}': its members can read" \
    "the node and server keys in $dir (the image's strata group has that gid)" >&2
fi

echo "[certs] making a CA, node certificates for nodes 1-3 and a server certificate for $hosts in $dir" >&2
mkdir -p "$dir"
# As root in the container (to hand the files to the host user and the
# strata group), on the bind-mounted folder.
docker run --rm --user 0:0 --network none --entrypoint bash \
  -e HOSTS="$hosts" -e OWNER="$(id -u)" -e OWNER_GROUP="$(id -g)" -e GROUP="$gid" \
  -v "$dir:/certs" "$image" -euo pipefail -c '
    cd /certs
    rm -rf ca node1 node2 node3 server .complete
    strata certs ca --dir ca
    for n in 1 2 3; do
      strata certs node --node-id "$n" --host "node$n" --ca-dir ca --dir "node$n"
    done
    strata certs server --host "$HOSTS" --ca-dir ca --dir server
    chown -R "$OWNER:$GROUP" node1 node2 node3 server
    chown -R "$OWNER:$OWNER_GROUP" ca
    chmod 0700 ca
    chmod 0600 ca/ca.key
    chmod 0750 node1 node2 node3 server
    chmod 0644 ./*/*.crt
    chmod 0640 node*/*.key server/*.key
    touch .complete
    chown "$OWNER:$OWNER_GROUP" .complete
  ' >&2
echo "[certs] done: clients trust $dir/ca/ca.crt" >&2
