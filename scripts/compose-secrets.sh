#!/usr/bin/env bash
# Makes what docker-compose.secure.yml mounts: a CA, one server certificate for the three
# NATS nodes (and localhost, for an operator's CLI through the published port), and the
# nkey identities of the given hosts (gangway auth). Keep DIR out of version control.
# The CA's private key goes to DIR-ca/, outside what the containers mount.
#   usage: scripts/compose-secrets.sh DIR HOST...
set -euo pipefail
dir=${1:?usage: $0 DIR HOST...}
shift
[ "$#" -ge 1 ] || { echo "usage: $0 DIR HOST..." >&2; exit 64; }
cadir="${dir%/}-ca"
umask 077
mkdir -p "$dir" "$cadir"
if [ ! -f "$cadir/ca-key.pem" ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=gangway NATS CA" \
    -keyout "$cadir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
fi
openssl req -newkey rsa:3072 -nodes -subj "/CN=gangway-nats" \
  -keyout "$dir/server-key.pem" -out "$dir/server.csr" 2>/dev/null
# Server and client auth: the same certificate serves clients and the routes' mutual TLS.
printf 'subjectAltName=DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$cadir/ca-key.pem" -CAserial "$cadir/ca.srl" -CAcreateserial \
  -days 825 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext"
# The certificates are public; the server key and the seeds are not (0600, from the umask).
chmod 755 "$dir"
chmod 644 "$dir/ca.pem" "$dir/server.pem"
node "$(dirname "$0")/../bin/gangway.mjs" auth "$@" --out "$dir"
echo "secrets in $dir: docker compose -f docker-compose.yml -f docker-compose.secure.yml up" >&2
